"""What the last upstream pass found, for ``upstream status``.

Invariants:
- Recorded at the end of every pass, successful or not, so ``status`` always shows the last
  attempt; a failed pass keeps the last success's time and capabilities beside its own reason.
- With a store (every pass that files or imports) it is kept in the database
  (``upstream_pass_state``), so every gateway process sharing it shows the same; without one
  (a connection check before the database exists) in ``upstream/state.json``, written
  atomically (``atomic_write``, 0600). ``load_state`` prefers the database's.
- Holds codes, counts, times, TLS versions and the upstream's capability summary: never a
  token, a key or record content.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import orjson

from policy.atomic import atomic_write
from sync.gateway.store.base import StoreError
from sync.gateway.store.sql import SqlStore
from sync.gateway.upstream.config import folder

log = logging.getLogger(__name__)

STATE = "state.json"


def load_state(data: Path, store: SqlStore | None = None) -> dict[str, Any]:
    """The last recorded state (empty when no pass has run, or it is unreadable)."""
    try:
        kept = store.upstream_pass_state() if store is not None else None
        raw = kept.encode() if kept is not None else (folder(data) / STATE).read_bytes()
        document = orjson.loads(raw)
    except (OSError, orjson.JSONDecodeError):
        return {}
    return document if isinstance(document, dict) else {}


def record_pass(
    data: Path,
    store: SqlStore | None = None,
    *,
    at: dt.datetime,
    reason: str | None,
    detail: str = "",
    capabilities: dict[str, Any] | None = None,
    tls: dict[str, str] | None = None,
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Record one pass (``reason`` None: it succeeded); returns the new state."""
    state = load_state(data, store)
    state["last_attempt"] = at.isoformat()
    state["last_outcome"] = "ok" if reason is None else "failed"
    state["last_reason"] = reason
    state["last_detail"] = detail or None
    if tls:
        state["tls"] = tls
    if capabilities is not None:
        state["capabilities"] = capabilities
    if reason is None:
        state["last_success"] = at.isoformat()
        state["counts"] = counts or {}
    document = orjson.dumps(state, option=orjson.OPT_INDENT_2)
    if store is not None:
        try:
            store.set_upstream_pass_state(document.decode(), at)
            return state
        except StoreError as err:  # the database is the failure: keep it on this host
            log.warning("upstream pass state kept in the data folder: %s", err.reason)
    atomic_write(folder(data) / STATE, document)
    return state
