"""One upstream pass (``upstream sync``, and ``serve`` on the poll interval).

Order (each step only after the one before succeeded): connect (TLS, client certificate), get a
token when SMART Backend Services is configured, read ``metadata`` and decide per capability,
close the conflicts a clinician settled whose settle failed at upload
(``settled.settle_open_conflicts``), file the outbox's notes (``filing.file_outbox``), then
import the linked sites' records (``load.import_records``).

Invariants:
- Every pass records its outcome (``state.record_pass``), a failure included, and a failure is
  an ``UpstreamError`` with a stable reason: a pass never raises anything else for an upstream
  that misbehaves.
- With a store, the pass runs only under the store's upstream lease (``lease.HeldLease``:
  ``LEASE_TTL``, renewed every third of it while the pass runs, checked before every upstream
  request): of several gateway processes sharing a database, one files and imports at a time;
  another gets ``upstream_busy`` and tries at its next interval. A crashed holder's lease
  expires and the next pass takes over; its unfinished rows are simply still pending. A holder
  that stalled past the TTL and was taken over stops with ``upstream_lease_lost``.
- Nothing here logs a token, a key, or record content.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync.gateway.store.sql import SqlStore
from sync.gateway.upstream.capabilities import UpstreamCapabilities, fetch_capabilities
from sync.gateway.upstream.config import load_config
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.filing import file_outbox
from sync.gateway.upstream.lease import HeldLease
from sync.gateway.upstream.load import import_records
from sync.gateway.upstream.opening import open_connection
from sync.gateway.upstream.settled import settle_open_conflicts
from sync.gateway.upstream.state import record_pass

log = logging.getLogger(__name__)

LEASE_TTL = dt.timedelta(minutes=30)
HOLDER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class PassResult:
    capabilities: UpstreamCapabilities | None = None
    tls: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


def run_pass(
    data: Path,
    store: SqlStore | None = None,
    *,
    now: dt.datetime | None = None,
    reconcile: bool | None = None,
) -> PassResult:
    """One pass now (without a store: the connection and capabilities only); raises
    ``UpstreamError`` (after recording it) when it fails. ``reconcile``: None lets the import
    decide (first pass, then every ``load.RECONCILE_INTERVAL``)."""
    moment = now or dt.datetime.now(dt.UTC)
    config = load_config(data)
    result = PassResult()
    try:
        with open_connection(config) as connection:
            try:
                result.capabilities = fetch_capabilities(connection)
                if store is not None:
                    with HeldLease(store, HOLDER, LEASE_TTL, moment) as lease:
                        connection.fence = lease.check
                        settled = settle_open_conflicts(store, moment)
                        filed = file_outbox(connection, store, result.capabilities, now=moment)
                        result.counts = {f"outbox_{k}": v for k, v in filed.items()}
                        if settled:
                            result.counts["outbox_settled"] = settled
                        result.counts.update(
                            import_records(
                                connection,
                                store,
                                now=moment,
                                reconcile=reconcile,
                                capabilities=result.capabilities,
                            )
                        )
                        lease.confirm()  # the pass's writes were made as the holder
            finally:
                result.tls = dict(connection.counters.tls_versions)
    except UpstreamError as err:
        log.warning("upstream pass failed: %s", err.reason)
        record_pass(
            data,
            store,
            at=moment,
            reason=err.reason,
            detail=err.detail,
            tls=result.tls,
            capabilities=None,
        )
        raise
    result.state = record_pass(
        data,
        store,
        at=moment,
        reason=None,
        capabilities=result.capabilities.to_json(),
        tls=result.tls,
        counts=result.counts,
    )
    return result
