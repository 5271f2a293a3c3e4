"""The header's counters: security state that must survive restarts and resist editing.

``HeaderCounters`` is the schema of the ``counters`` object inside ``vault.header``: failed
attempts, lockouts, the policy's anti-rollback high-water, the trusted-time state, the wipe flag
and the audit events waiting for the next unlock. ``client.core.vault_header`` MACs, stores and
changes it (under its file lock); ``client.core.accounts`` decides what to put in it.

Invariants:
- ``from_json`` accepts exactly the keys ``to_json`` writes, with non-negative integer counts and
  UTC times; anything else is ``ValueError`` (the header reports it as tampering).
- Pending audit events hold only JSON scalars (never key material) and are bounded: at most
  ``MAX_PENDING_EVENTS`` are kept, the rest are counted in ``pending_audit_dropped``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from client.core.keyslots import KeyslotError

MAX_PENDING_EVENTS: Final = 200  # beyond this, events are counted in pending_audit_dropped

JsonScalar = str | int | float | bool | None


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("not a time")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None or parsed.utcoffset() != timedelta(0):
        raise ValueError("time not in UTC")
    return parsed


@dataclass
class HeaderCounters:
    """Security state that must survive restarts and resist editing (all MACed)."""

    failed_attempts: dict[str, int] = field(default_factory=dict)
    device_failed_attempts: int = 0
    locked_until: dict[str, datetime] = field(default_factory=dict)
    device_locked_until: datetime | None = None
    policy_high_water: int | None = None
    # client.core.trusted_time.TimeState.to_json(): wall high-water, offline elapsed, boot clock
    time_state: dict[str, JsonScalar] = field(default_factory=dict)
    wipe_pending: bool = False
    pending_audit_events: list[dict[str, JsonScalar]] = field(default_factory=list)
    pending_audit_dropped: int = 0

    def add_pending_audit_event(self, event: dict[str, JsonScalar]) -> None:
        """Queue a non-secret event (e.g. login_failed) for the audit chain's next unlock."""
        if not all(
            isinstance(k, str) and (v is None or isinstance(v, str | int | float | bool))
            for k, v in event.items()
        ):
            raise KeyslotError("invalid_event")
        if len(self.pending_audit_events) >= MAX_PENDING_EVENTS:
            self.pending_audit_dropped += 1
        else:
            self.pending_audit_events.append(dict(event))

    def to_json(self) -> dict[str, Any]:
        def opt_time(value: datetime | None) -> str | None:
            return None if value is None else _iso(value)

        return {
            "failed_attempts": dict(self.failed_attempts),
            "device_failed_attempts": self.device_failed_attempts,
            "locked_until": {k: _iso(v) for k, v in self.locked_until.items()},
            "device_locked_until": opt_time(self.device_locked_until),
            "policy_high_water": self.policy_high_water,
            "time_state": dict(self.time_state),
            "wipe_pending": self.wipe_pending,
            "pending_audit_events": [dict(e) for e in self.pending_audit_events],
            "pending_audit_dropped": self.pending_audit_dropped,
        }

    @classmethod
    def from_json(cls, data: object) -> HeaderCounters:
        if not isinstance(data, dict) or set(data) != set(cls().to_json()):
            raise ValueError("bad counters")

        def count(value: object) -> int:
            if type(value) is not int or value < 0:
                raise ValueError("bad count")
            return value

        def opt_time(value: object) -> datetime | None:
            return None if value is None else _parse_time(value)

        failed, locked, events = (
            data["failed_attempts"],
            data["locked_until"],
            data["pending_audit_events"],
        )
        if not isinstance(failed, dict) or not isinstance(locked, dict):
            raise ValueError("bad maps")
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise ValueError("bad events")
        high_water = data["policy_high_water"]
        time_state = data["time_state"]
        if not isinstance(time_state, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str | int | float | bool))
            for k, v in time_state.items()
        ):
            raise ValueError("bad time state")
        if not isinstance(data["wipe_pending"], bool):
            raise ValueError("bad flag")
        counters = cls(
            failed_attempts={str(k): count(v) for k, v in failed.items()},
            device_failed_attempts=count(data["device_failed_attempts"]),
            locked_until={str(k): _parse_time(v) for k, v in locked.items()},
            device_locked_until=opt_time(data["device_locked_until"]),
            policy_high_water=None if high_water is None else count(high_water),
            time_state=dict(time_state),
            wipe_pending=data["wipe_pending"],
            pending_audit_dropped=count(data["pending_audit_dropped"]),
        )
        for event in events:
            counters.add_pending_audit_event(event)
        return counters
