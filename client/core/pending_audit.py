"""Events that happened while the vault was locked enter the audit chain at the next unlock.

Failed logins, lockouts and clock tampering happen when no vault is open, so ``accounts`` keeps
them in the MACed header; the next successful sign-in moves them into the chain. An act whose
effect is in the header itself (a password change re-wraps a key slot) queues its event in the
same atomic header write, so a kill between the act and the chain cannot lose it (AD-1).

Guarantees:
- Each event enters the chain exactly once, with its own time: its id (``eid``, or a hash of
  the canonical event for older headers) is recorded in ``imported_pending`` in the SAME
  transaction as its entry, so a crash before the header is acknowledged never duplicates it.
- Only scalar fields are carried into the entry's detail; an unreadable user id is left out.
- ``login_failed`` and ``lockout`` are failures; every other event is recorded as a success.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from client.core.audit_log import AuditLog

FAILURES: Final = frozenset({"login_failed", "lockout"})
NOT_DETAIL: Final = frozenset({"event", "at", "eid", "user_id", "role"})


def pending_eid(event: Mapping[str, Any]) -> str:
    """The event's id: its own ``eid``, or a stable hash of the event itself."""
    explicit = event.get("eid")
    if isinstance(explicit, str) and explicit:
        return explicit
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:32]


def import_events(
    conn: Any,
    audit: AuditLog,
    events: Iterable[Mapping[str, Any]],
    clock: Callable[[], dt.datetime],
) -> None:
    """Append every event not imported before, inside the caller's transaction."""
    for event in events:
        eid = pending_eid(event)
        seen = conn.execute("SELECT 1 FROM imported_pending WHERE eid = ?", (eid,))
        if seen.fetchone():
            continue
        conn.execute("INSERT INTO imported_pending (eid) VALUES (?)", (eid,))
        at = event.get("at")
        ts = dt.datetime.fromisoformat(at) if isinstance(at, str) else clock()
        detail = {
            k: v for k, v in event.items() if k not in NOT_DETAIL and isinstance(v, str | int)
        }
        name = str(event.get("event", "unknown"))
        user = event.get("user_id")
        role = event.get("role")
        audit.append(
            conn,
            ts=ts,
            action=name,
            outcome="failure" if name in FAILURES else "success",
            user_id=user if isinstance(user, str) and user != "<invalid>" else None,
            role=role if isinstance(role, str) else None,
            detail=detail,
        )
