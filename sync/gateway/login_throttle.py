"""Throttling online sign-in so that it cannot be turned against the users it protects (issue 15).

Failed sign-ins are counted per (user, device) and per device, never per user alone: an
attacker who knows a user id and holds SOME enrolled laptop slows only that laptop, and the user
still signs in from their own. The schedule (``LoginPolicy``, defaults in brackets):

- **(user, device)**: the first ``max_failures`` [5] failures within ``remember`` [24 h] cost
  nothing; the next attempt must wait ``window`` [15 min] after the last failure, and each
  further failure doubles that wait, up to ``max_delay`` [4 h]: 15 min, 30 min, 1 h, 2 h, 4 h,
  4 h, … A successful sign-in of that user on that device forgets them.
- **device** (all users together): the first ``device_max_failures`` [20] failures cost
  nothing; then ``device_delay`` [1 min] after the last failure, doubling per further failure
  up to ``max_delay``. A success on the device does not forget the other users' failures.

Invariants:
- An attempt is counted BEFORE its password is checked, in the same transaction that decides
  whether it may run (``Store.login_gate``): parallel guesses are counted one after another and
  at most the allowed number of passwords is ever checked.
- A throttled attempt checks no password and is not counted, so hammering a throttled laptop
  neither helps nor lengthens anyone's wait; the answer is 429 ``login_throttled`` with the
  seconds to wait (``Retry-After``).
- A spread guessing pattern raises an alert for the security team (``audit_alerts``, shown by
  ``/audit/chains``): failures for one user from ``spread_devices`` [3] or more devices
  (``login_spread_user``), or failures on one device for ``spread_users`` [5] or more users
  (``login_spread_device``), within ``remember``. At most one alert per user (or device) per
  UTC day. The alert names a user id only when it is a known user (an unknown "user id" may be
  a password typed in the wrong field); logs never name either.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from argon2 import PasswordHasher

from sync.gateway.pki import DeviceIdentity
from sync.gateway.store.base import AuditAlert, Store

log = logging.getLogger(__name__)

SPREAD_USER = "login_spread_user"
SPREAD_DEVICE = "login_spread_device"


@dataclass(frozen=True)
class LoginPolicy:
    """Throttle and hashing for online login (``hasher`` may be cheaper only in tests)."""

    hasher: PasswordHasher
    max_failures: int = 5
    window: dt.timedelta = dt.timedelta(minutes=15)
    max_delay: dt.timedelta = dt.timedelta(hours=4)
    remember: dt.timedelta = dt.timedelta(hours=24)
    device_max_failures: int = 20
    device_delay: dt.timedelta = dt.timedelta(minutes=1)
    spread_devices: int = 3
    spread_users: int = 5


def delay_after(failures: int, free: int, first: dt.timedelta, cap: dt.timedelta) -> dt.timedelta:
    """The wait after the last of ``failures``: none for the first ``free``, then ``first``,
    doubling per further failure, never more than ``cap``."""
    if failures < free:
        return dt.timedelta(0)
    doublings = min(failures - free, 32)  # 2**32 x any first delay is past any cap
    longest: dt.timedelta = first * (2**doublings)
    return min(cap, longest)


def allowed_at(
    policy: LoginPolicy, for_pair: Sequence[dt.datetime], on_device: Sequence[dt.datetime]
) -> dt.datetime | None:
    """The moment the next attempt may run, given the failures of (user, device) and of the
    device (oldest first); None when it may run now (the caller compares with now)."""
    waits: list[dt.datetime] = []
    if for_pair:
        pair_wait = delay_after(len(for_pair), policy.max_failures, policy.window, policy.max_delay)
        waits.append(for_pair[-1] + pair_wait)
    if on_device:
        device_wait = delay_after(
            len(on_device), policy.device_max_failures, policy.device_delay, policy.max_delay
        )
        waits.append(on_device[-1] + device_wait)
    return max(waits) if waits else None


def gate(
    store: Store, policy: LoginPolicy, user_id: str, device_id: str, now: dt.datetime
) -> dt.datetime | None:
    """Count this attempt, or return the moment it will be allowed (it is then not counted)."""

    def decide(
        for_pair: Sequence[dt.datetime], on_device: Sequence[dt.datetime]
    ) -> dt.datetime | None:
        moment = allowed_at(policy, for_pair, on_device)
        return moment if moment is not None and moment > now else None

    return store.login_gate(user_id, device_id, now, since=now - policy.remember, decide=decide)


def _alert_id(kind: str, subject: str, now: dt.datetime) -> str:
    digest = hashlib.sha256(subject.encode("utf-8")).hexdigest()[:16]
    return f"{kind}:{digest}:{now.date().isoformat()}"


def watch_spread(
    store: Store,
    policy: LoginPolicy,
    user_id: str,
    identity: DeviceIdentity,
    now: dt.datetime,
    *,
    known_user: bool,
) -> list[str]:
    """After a failed sign-in: raise the spread alerts whose pattern is now met; their reasons."""
    spread = store.login_spread(user_id, identity.device_id, now - policy.remember)
    hours = int(policy.remember.total_seconds() // 3600)
    raised: list[str] = []
    if spread.devices_for_user >= policy.spread_devices:
        who = f"user {user_id}" if known_user else "a user name that does not exist"
        sentence = (
            f"Failed sign-ins for {who} came from {spread.devices_for_user} different laptops"
            f" within {hours} hours: someone may be guessing that user's password."
        )
        alert = AuditAlert(
            _alert_id(SPREAD_USER, user_id, now),
            identity.device_id,
            identity.site,
            now,
            None,
            SPREAD_USER,
            sentence,
        )
        if store.add_audit_alert_once(alert):
            raised.append(SPREAD_USER)
    if spread.users_on_device >= policy.spread_users:
        sentence = (
            f"Laptop {identity.device_id} failed to sign in {spread.users_on_device} different"
            f" users within {hours} hours: someone may be guessing passwords on it."
        )
        alert = AuditAlert(
            _alert_id(SPREAD_DEVICE, identity.device_id, now),
            identity.device_id,
            identity.site,
            now,
            None,
            SPREAD_DEVICE,
            sentence,
        )
        if store.add_audit_alert_once(alert):
            raised.append(SPREAD_DEVICE)
    for reason in raised:
        log.warning("security alert raised: %s", reason)
    return raised
