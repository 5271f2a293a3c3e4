"""Policy decisions: pure functions of (policy, state, now).

Invariants:

* No I/O, no clock reads, no globals: the same arguments always give the same answer, so
  the client can call these anywhere and tests can pin every boundary.
* Thresholds are inclusive at the stage they start: ``failed_attempts ==
  auth.lockout_after_failures`` is already locked; elapsed ``== offline.block_after_hours``
  is already blocked.
* Every ambiguous input fails closed: a naive ``now``, a negative count or elapsed time is a
  caller bug (``ValueError``); a non-ASCII host is never allowed; an unparseable OS version
  never satisfies a minimum.

Restricted mode: a policy outside its validity window (expired, or "not yet valid" because the
clock went back) puts the device in restricted mode — the last good policy's restrictions stay
enforced, record access is blocked, and only unlock, sync (to fetch a new policy) and upload of
unsent work and audit entries are allowed.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from policy.model import Policy

_VERSION_PREFIX_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")


class PolicyMode(StrEnum):
    NORMAL = "normal"
    RESTRICTED = "restricted"


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


def policy_mode(policy: Policy, now: datetime) -> PolicyMode:
    """``restricted`` when ``now`` is outside [not_before, expires_at), else ``normal``."""
    _require_aware(now)
    if policy.not_before <= now < policy.expires_at:
        return PolicyMode.NORMAL
    return PolicyMode.RESTRICTED


def idle_lock_seconds(policy: Policy) -> int:
    return policy.get_int("session.idle_lock_seconds")


def min_password_length(policy: Policy) -> int:
    return policy.get_int("auth.min_password_length")


class ThrottleKind(StrEnum):
    ALLOWED = "allowed"
    RETRY_AFTER = "retry_after"
    LOCKED_UNTIL = "locked_until"
    WIPE = "wipe"


@dataclass(frozen=True)
class LoginThrottle:
    """What the unlock screen does after ``failed_attempts`` consecutive failures."""

    kind: ThrottleKind
    retry_after_seconds: int
    locked_until: datetime | None
    attempts_left_before_lockout: int
    attempts_left_before_wipe: int


def failed_login_outcome(policy: Policy, failed_attempts: int, now: datetime) -> LoginThrottle:
    """Outcome after ``failed_attempts`` consecutive failures, the latest one at ``now``.

    0 → allowed; 1..lockout-1 → retry after ``base * 2**(n-1)`` seconds (capped at
    ``auth.lockout_seconds``); lockout..wipe-1 → locked until ``now + lockout_seconds``;
    ``>= auth.wipe_after_failures`` → wipe.
    """
    _require_aware(now)
    if failed_attempts < 0:
        raise ValueError("failed_attempts must not be negative")
    lockout_at = policy.get_int("auth.lockout_after_failures")
    wipe_at = policy.get_int("auth.wipe_after_failures")
    lockout_seconds = policy.get_int("auth.lockout_seconds")
    left_lockout = max(0, lockout_at - failed_attempts)
    left_wipe = max(0, wipe_at - failed_attempts)
    if failed_attempts >= wipe_at:
        return LoginThrottle(ThrottleKind.WIPE, 0, None, 0, 0)
    if failed_attempts >= lockout_at:
        return LoginThrottle(
            ThrottleKind.LOCKED_UNTIL,
            lockout_seconds,
            now + timedelta(seconds=lockout_seconds),
            0,
            left_wipe,
        )
    if failed_attempts == 0:
        return LoginThrottle(ThrottleKind.ALLOWED, 0, None, left_lockout, left_wipe)
    base = policy.get_int("auth.throttle_base_seconds")
    delay = min(base * 2 ** (failed_attempts - 1), lockout_seconds)
    return LoginThrottle(ThrottleKind.RETRY_AFTER, delay, None, left_lockout, left_wipe)


class OfflineKind(StrEnum):
    OK = "ok"
    WARN = "warn"
    BLOCKED_UNTIL_SYNC = "blocked_until_sync"
    WIPE = "wipe"


@dataclass(frozen=True)
class OfflineState:
    """Where the device stands in its offline grace period (from trusted elapsed time and the
    restarts since the last sync)."""

    kind: OfflineKind
    until_warn: timedelta
    until_block: timedelta
    until_wipe: timedelta
    restarts_left: int | None = None  # before records are blocked; None: not counted
    too_many_restarts: bool = False  # blocked by ``offline.max_boots``, not by time


def offline_state(
    policy: Policy, trusted_offline_elapsed: timedelta, offline_boots: int = 0
) -> OfflineState:
    """Stage of the offline grace period after ``trusted_offline_elapsed`` since the last sync
    and ``offline_boots`` restarts since then.

    The ``until_*`` fields are the time left before each stage (zero once reached). More
    restarts than ``offline.max_boots`` block records until the next sync (TM-3): each restart
    hides a powered-off gap the laptop cannot measure. Restarts never wipe; time does.
    """
    if trusted_offline_elapsed < timedelta(0):
        raise ValueError("trusted elapsed time must not be negative")
    if offline_boots < 0:
        raise ValueError("restarts must not be negative")
    max_boots = policy.get_int("offline.max_boots")
    warn = timedelta(hours=policy.get_int("offline.warn_after_hours"))
    block = timedelta(hours=policy.get_int("offline.block_after_hours"))
    wipe = timedelta(days=policy.get_int("offline.wipe_after_days"))
    elapsed = trusted_offline_elapsed
    if elapsed >= wipe:
        kind = OfflineKind.WIPE
    elif elapsed >= block:
        kind = OfflineKind.BLOCKED_UNTIL_SYNC
    elif elapsed >= warn:
        kind = OfflineKind.WARN
    else:
        kind = OfflineKind.OK
    too_many = offline_boots > max_boots and kind is not OfflineKind.WIPE
    if too_many:
        kind = OfflineKind.BLOCKED_UNTIL_SYNC
    zero = timedelta(0)
    return OfflineState(
        kind,
        max(zero, warn - elapsed),
        max(zero, block - elapsed),
        max(zero, wipe - elapsed),
        restarts_left=max(0, max_boots - offline_boots),
        too_many_restarts=too_many,
    )


def host_allowed(policy: Policy, host: str) -> bool:
    """Exact, ASCII case-insensitive match against ``network.allowed_hosts``; no wildcards.

    A bracketed or non-canonical IPv6 literal is compared in its canonical form; a trailing dot,
    a port, user information or any non-ASCII character never matches.
    """
    if not isinstance(host, str) or not host or not host.isascii():
        return False
    candidate = host.lower()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    if ":" in candidate:
        try:
            candidate = str(ipaddress.IPv6Address(candidate))
        except ValueError:
            return False
    return candidate in policy.allowed_hosts


def spki_pins(policy: Policy) -> tuple[bytes, ...]:
    """The gateway SPKI SHA-256 pins as 32-byte digests (primary first)."""
    return tuple(base64.b64decode(pin) for pin in policy.get_list("network.spki_pins"))


def fhir_base_url(policy: Policy) -> str:
    """The data plane's FHIR base URL: ``network.fhir_base_url``, or ``<gateway_url>/fhir``
    when that is empty (the gateway serves both planes). Never ends with a slash."""
    named = policy.get_str("network.fhir_base_url")
    return (named or policy.gateway_url.rstrip("/") + "/fhir").rstrip("/")


@dataclass(frozen=True)
class UiPermissions:
    clipboard_copy_out: bool
    printing: bool
    screen_capture_exclusion: bool
    kiosk_fullscreen: bool
    watermark: bool
    blur_on_lock: bool


def ui_permissions(policy: Policy) -> UiPermissions:
    return UiPermissions(
        clipboard_copy_out=policy.get_bool("ui.clipboard_copy_out"),
        printing=policy.get_bool("ui.printing"),
        screen_capture_exclusion=policy.get_bool("ui.screen_capture_exclusion"),
        kiosk_fullscreen=policy.get_bool("ui.kiosk_fullscreen"),
        watermark=policy.get_bool("ui.watermark"),
        blur_on_lock=policy.get_bool("ui.blur_on_lock"),
    )


def os_version_ok(policy: Policy, os_version: str) -> bool:
    """True when ``os_version`` (leading dotted numbers) is at least ``device.min_os_version``."""
    minimum = policy.get_str("device.min_os_version")
    if not minimum:
        return True
    match = _VERSION_PREFIX_RE.match(os_version)
    if match is None:
        return False
    have = tuple(int(part) for part in match.group(0).split("."))
    need = tuple(int(part) for part in minimum.split("."))
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def clock_skew_ok(policy: Policy, device_now: datetime, trusted_now: datetime) -> bool:
    """True when the device clock is within ``time.max_clock_skew_seconds`` of trusted time."""
    _require_aware(device_now)
    _require_aware(trusted_now)
    limit = timedelta(seconds=policy.get_int("time.max_clock_skew_seconds"))
    return abs(device_now - trusted_now) <= limit


def audit_backlog_blocks_access(policy: Policy, unsent_events: int) -> bool:
    """True when unsent audit entries reached ``audit.max_unsent_events``."""
    return unsent_events >= policy.get_int("audit.max_unsent_events")


def break_glass_expires_at(policy: Policy, granted_at: datetime) -> datetime:
    """When a break-glass grant made at ``granted_at`` ends."""
    _require_aware(granted_at)
    return granted_at + timedelta(minutes=policy.get_int("session.break_glass_minutes"))
