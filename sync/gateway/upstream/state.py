"""What the last upstream pass found, for ``upstream status``: ``upstream/state.json``.

Invariants:
- Written atomically (``atomic_write``, 0600) at the end of every pass, successful or not, so
  ``status`` always shows the last attempt; a failed pass keeps the last success's time and
  capabilities beside its own reason.
- Holds codes, counts, times, TLS versions and the upstream's capability summary: never a
  token, a key or record content.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson

from policy.atomic import atomic_write
from sync.gateway.upstream.config import folder

STATE = "state.json"


def load_state(data: Path) -> dict[str, Any]:
    """The last recorded state (empty when no pass has run, or the file is unreadable)."""
    try:
        document = orjson.loads((folder(data) / STATE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return document if isinstance(document, dict) else {}


def record_pass(
    data: Path,
    *,
    at: dt.datetime,
    reason: str | None,
    detail: str = "",
    capabilities: dict[str, Any] | None = None,
    tls: dict[str, str] | None = None,
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Record one pass (``reason`` None: it succeeded); returns the new state."""
    state = load_state(data)
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
    atomic_write(folder(data) / STATE, orjson.dumps(state, option=orjson.OPT_INDENT_2))
    return state
