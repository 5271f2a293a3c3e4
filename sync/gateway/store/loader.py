"""Loading resources into the store (seed data, tests, imports from other systems).

Invariants: resources are written in batches, each batch one atomic store transaction that
is written by ``WriteTx.put_many`` (which reads what it needs in one round trip on PostgreSQL); a
resource keeps its ``id`` when it has one (a fresh UUID otherwise); Patients must come before
their clinical resources in the iterable (the store refuses an unknown patient). A Patient
re-loaded with another ``managingOrganization`` is a transfer (see ``store``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable
from typing import Any

from sync.gateway.store import resources as res
from sync.gateway.store.base import Store
from sync.gateway.store.serialised import Serialised
from sync.protocol.fhir import vocabulary as vocab

LOAD_BATCH = 500  # resources per write transaction


def prefetch_keys(
    batch: Iterable[tuple[str, str | None, dict[str, Any] | Serialised]],
) -> list[tuple[str, str]]:
    """(type, id) of every resource of ``batch`` (but one whose id is not known yet: None) and
    of the patients its clinical resources name (a resource whose patient cannot be read is
    left to ``put`` to refuse)."""
    keys: list[tuple[str, str]] = []
    for rtype, rid, resource in batch:
        if rid is not None:
            keys.append((rtype, rid))
        if isinstance(resource, Serialised):
            keys.append((vocab.PATIENT, resource.patient))
        elif rtype in vocab.CLINICAL_TYPES:
            with contextlib.suppress(res.ResourceError):
                keys.append((vocab.PATIENT, res.patient_id_of(resource)))
    return keys


def load_resources(
    store: Store, resources: Iterable[dict[str, Any]], *, batch: int = LOAD_BATCH
) -> int:
    """Write every resource (create or new version); return how many were written."""
    written = 0
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        batch = [
            (str(resource.get("resourceType")), str(resource.get("id") or uuid.uuid4()), resource)
            for resource in pending
        ]
        with store.write() as tx:
            tx.put_many(batch)  # reads what it needs in one go (``prefetch``)
        pending.clear()

    for resource in resources:
        pending.append(resource)
        written += 1
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return written
