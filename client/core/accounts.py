"""Offline login with throttling, lockout and wipe thresholds from the policy (AU-1, AU-2, TM-1).

Guarantees:
- Every attempt is counted in the MACed header *before* the password work (vault_header), so
  killing the app mid-attempt never erases a guess; restoring an old header is detected (keyring
  generation) and locks the device until an online sign-in.
- After a failure the policy decides: retry after N seconds (exponential), locked until a time,
  or wipe. The decision is stored as ``locked_until`` in the header, so a restart changes nothing.
- Before any password is tried, trusted time is advanced (boot clock + wall high-water): a clock
  set back is recorded as tampering and offline login is refused until the device has synced;
  past the offline block threshold, or after more restarts than the policy allows since the
  last sync (TM-3), login is refused; past the wipe threshold the device wipes.
- Events that happen while the vault is locked (failed logins, lockouts, clock tamper) wait in
  the header and enter the audit chain, with their own time, at the next successful unlock.
- A full disk never turns into unlimited guessing: before anything is written, a nearly full
  disk releases the disk reserve (``disk_space.prepare_sign_in``) so the attempt can be counted
  and the clinician can sign in and read; if it still cannot be counted, login raises
  ``DiskFull`` before the password is tried (CR-3).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from client.core import disk_space
from client.core.device import Device
from client.core.errors import UserFacingError
from client.core.header_counters import HeaderCounters, JsonScalar
from client.core.humanize import format_clock
from client.core.keyslots import UnlockFailed
from client.core.trusted_time import Observation, TimeState, observe
from client.core.vault_header import LockedOut
from policy import decisions
from policy.decisions import OfflineKind, ThrottleKind
from policy.model import Policy


class LoginRefused(UserFacingError):
    """Login is not possible now; ``message`` says why and what to do."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        attempts_left: int | None = None,
        locked_until: dt.datetime | None = None,
    ) -> None:
        super().__init__(reason, message)
        self.attempts_left = attempts_left
        self.locked_until = locked_until


@dataclass(frozen=True)
class Unlocked:
    """The result of a successful offline login: the DEK and who it is."""

    user_id: str
    role: str
    dek: bytes
    policy: Policy
    offline: decisions.OfflineState
    blocked: str | None = None  # records closed until a sync: the reason (sync-only session)


def _pending_event(event: str, at: dt.datetime, **fields: JsonScalar) -> dict[str, JsonScalar]:
    return {"event": event, "at": at.isoformat(), "eid": secrets.token_hex(8), **fields}


BLOCK_MESSAGES = {
    "clock_tamper": (
        "This laptop's clock was set back, so Gatehouse cannot trust how long it has been "
        "offline. Connect to the network and sync; records open again after the sync."
    ),
    "offline_too_long": (
        "This laptop has been offline too long. Connect to the network and sync; records open "
        "again after the sync. Your unsent notes are safe."
    ),
    "offline_restarts": (
        "This laptop has been restarted too many times since it last synced, so Gatehouse "
        "cannot tell how long it has been offline. Connect to the network and sync; records "
        "open again after the sync. Your unsent notes are safe."
    ),
}


def offline_state_of(policy: Policy, state: TimeState) -> decisions.OfflineState:
    """The policy's verdict on a trusted-time state (elapsed time and restarts, TM-3)."""
    return decisions.offline_state(
        policy, dt.timedelta(seconds=state.offline_elapsed_seconds), state.offline_boots
    )


def note_time(device: Device, policy: Policy) -> Observation:
    """Observe the clocks and persist trusted time (a clock set back waits in the header as a
    ``clock_tamper`` event). Called at sign-in and at lock, so the time a session ran is
    counted even if the laptop is then switched off and its clock set back (TM-3)."""
    seen = observe(
        device.time_state(),
        device.clocks(),
        max_skew=dt.timedelta(seconds=policy.get_int("time.max_clock_skew_seconds")),
    )
    now = device.clock()

    def save(counters: HeaderCounters) -> None:
        counters.time_state = seen.state.to_json()
        if seen.tampered:
            counters.add_pending_audit_event(
                _pending_event(
                    "clock_tamper", now, set_back_seconds=int(seen.set_back_by.total_seconds())
                )
            )

    device.header.update_counters(save)
    return seen


def check_time(device: Device, policy: Policy) -> tuple[decisions.OfflineState, str | None]:
    """Advance trusted time. Returns the offline state and, when records must stay closed
    until a sync, the reason (``clock_tamper`` / ``offline_restarts`` / ``offline_too_long``).
    Past the policy's wipe limit the device is wiped and ``LoginRefused`` raised."""
    seen = note_time(device, policy)
    offline = offline_state_of(policy, seen.state)
    if offline.kind is OfflineKind.WIPE:
        device.wipe("offline_too_long")
        raise LoginRefused(
            "wiped_offline_too_long",
            "This laptop was offline longer than the policy allows and has been wiped. "
            "Contact IT to set it up again.",
        )
    if seen.state.requires_online:
        return offline, "clock_tamper"
    if offline.too_many_restarts:
        return offline, "offline_restarts"
    if offline.kind is OfflineKind.BLOCKED_UNTIL_SYNC:
        return offline, "offline_too_long"
    return offline, None


def login(device: Device, user_id: str, password: str, *, for_sync: bool = False) -> Unlocked:
    """Offline login. Raises ``LoginRefused`` (with attempts left / locked-until) on failure.

    When trusted time says records must stay closed until a sync (clock set back, offline too
    long), a normal login is refused with the reason; ``for_sync=True`` (the "sign in to sync"
    path) still checks the password and returns a *sync-only* unlock, so the laptop can reach
    the gateway that lifts the block — it is never left with no way back.
    """
    disk_space.prepare_sign_in(device.data_dir, device.free_space)
    policy = device.policy()
    offline, blocked = check_time(device, policy)
    if blocked and not for_sync:
        raise LoginRefused(blocked, BLOCK_MESSAGES[blocked])
    dek = _unlock(device, policy, user_id, password)
    role = device.header.role_of(user_id)
    if role is None:  # cannot happen after a successful unlock; fail closed
        raise LoginRefused("unlock_failed", "The user name or password is not right.")
    return Unlocked(user_id, role, dek, policy, offline, blocked)


def reauthenticate(device: Device, user_id: str, password: str) -> None:
    """Check the signed-in user's password again (break-glass, print, export: AU-4).

    Counted and throttled exactly like a login, so re-authentication cannot be brute-forced.
    """
    _unlock(device, device.policy(), user_id, password)


def _unlock(device: Device, policy: Policy, user_id: str, password: str) -> bytes:
    """The key slot's DEK, or ``LoginRefused`` after the policy's failure bookkeeping."""
    now = device.clock()
    try:
        return device.header.unlock(user_id, password, now=now)
    except LockedOut as locked:
        raise LoginRefused(
            "locked_out",
            f"Too many wrong passwords. Try again after {format_clock(locked.until)}.",
            locked_until=locked.until,
        ) from None
    except UnlockFailed:
        raise _after_failure(device, policy, user_id, now) from None


def _after_failure(device: Device, policy: Policy, user_id: str, now: dt.datetime) -> LoginRefused:
    counters = device.header.counters
    attempts = max(counters.failed_attempts.get(user_id, 0), counters.device_failed_attempts)
    outcome = decisions.failed_login_outcome(policy, attempts, now)
    if outcome.kind is ThrottleKind.WIPE:
        device.wipe("too_many_failed_logins")
        return LoginRefused(
            "wiped_failed_logins",
            "Too many wrong passwords: this laptop has been wiped to protect patients' records. "
            "Contact IT.",
        )
    until = outcome.locked_until
    if outcome.kind is ThrottleKind.RETRY_AFTER:
        until = now + dt.timedelta(seconds=outcome.retry_after_seconds)
    if until is not None:
        locked = until

        def lock(c: HeaderCounters) -> None:
            # The whole device waits, whether or not the user id exists: the same answer for
            # both, so the lock itself never tells a guesser which user ids are real.
            c.device_locked_until = locked
            if outcome.kind is ThrottleKind.LOCKED_UNTIL:
                c.add_pending_audit_event(
                    _pending_event("lockout", now, user_id=user_id, until=locked.isoformat())
                )

        device.header.update_counters(lock)
    if outcome.kind is ThrottleKind.LOCKED_UNTIL and until is not None:
        return LoginRefused(
            "locked_out",
            f"Too many wrong passwords. Signing in is locked until {format_clock(until)}.",
            locked_until=until,
        )
    left = outcome.attempts_left_before_lockout
    wait = f" Wait {outcome.retry_after_seconds} s before trying again." if until else ""
    return LoginRefused(
        "unlock_failed",
        f"The user name or password is not right. {left} attempt(s) left before lockout.{wait}",
        attempts_left=left,
        locked_until=until,
    )
