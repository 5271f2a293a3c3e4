"""Signing in from the login screen: the offline preview, the offline login and the first,
online sign-in of a person on this laptop. Runs on the UI's executor, never on the GUI thread.

Guarantees:
- ``offline_preview`` only reads: the trusted clocks are observed (``trusted_time.observe`` is
  pure), nothing is persisted and no attempt is counted, so looking at the login screen never
  advances, resets or tampers with the offline grace period.
- ``sign_in`` never tries a password against a laptop that cannot hold it: a user with no key
  slot on an enrolled laptop gets ``FirstSignInNeeded`` (their first sign-in here is online)
  before any attempt is counted; the screen asks ``has_key_slot`` as the name is typed, so for
  a new name the online first sign-in is the default. On an enrolled laptop a refused password
  says "the password is not right" (the name is known here) and a name without a slot says it
  may be misspelt: two different messages, revealing nothing the laptop did not already show.
  Without enrolment both keep one answer.
- ``first_sign_in`` writes the user's key slot only through ``add_user_online`` (the gateway
  checks the password and unseals the escrow over the pinned channel), then signs in offline.
- ``prepared`` never leaves a vault open that nobody holds: if the follow-up step fails, the
  session is locked before the error goes on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from client.core.accounts import LoginRefused, offline_state_of
from client.core.device import Device
from client.core.errors import UserFacingError
from client.core.provisioning import add_user_online
from client.core.session import Session
from client.core.trusted_time import observe
from policy import decisions


@dataclass(frozen=True)
class OfflinePreview:
    site: str
    state: decisions.OfflineState


def offline_preview(device: Device) -> OfflinePreview:
    """Where the grace period stands, without persisting anything."""
    policy = device.policy()
    seen = observe(
        device.time_state(),
        device.clocks(),
        max_skew=dt.timedelta(seconds=policy.get_int("time.max_clock_skew_seconds")),
    )
    return OfflinePreview(device.profile.site, offline_state_of(policy, seen.state))


REFUSED_WORDING = "The user name or password is not right."


class FirstSignInNeeded(UserFacingError):
    """This person has no key slot on this laptop yet: their first sign-in here is online."""

    def __init__(self) -> None:
        super().__init__(
            "first_sign_in_needed",
            "Nobody with this user name has signed in on this laptop yet. If it is yours, this "
            "is your first sign-in here and it needs the network once: connect to the health "
            "board's network and choose “First sign-in on this laptop”. If it is not, check "
            "the spelling of your user name.",
        )


def has_key_slot(device: Device, user: str) -> bool | None:
    """Whether ``user`` has a key slot on this laptop, as the sign-in screen may tell: on an
    enrolled laptop the answer is already visible (a name without a slot is offered the online
    first sign-in instead of a password check), so the screen says so as the name is typed.
    ``None`` on a laptop without enrolment, where there is no first sign-in and a wrong name
    and a wrong password keep one answer (no new user-enumeration oracle)."""
    if not device.profile.enrolment:
        return None
    return device.header.role_of(user) is not None


def sign_in(device: Device, user: str, password: str) -> Session:
    """The offline login, or ``FirstSignInNeeded`` for a user with no slot on an enrolled
    laptop. There, a refused password is worded as the password (the name has a slot)."""
    if device.profile.enrolment and device.header.role_of(user) is None:
        raise FirstSignInNeeded()
    try:
        return Session.login(device, user, password)
    except LoginRefused as refused:
        if not device.profile.enrolment or not refused.message.startswith(REFUSED_WORDING):
            raise
        raise LoginRefused(
            refused.reason,
            "The password is not right for this user name."
            + refused.message.removeprefix(REFUSED_WORDING),
            attempts_left=refused.attempts_left,
            locked_until=refused.locked_until,
        ) from None


def first_sign_in(device: Device, user: str, password: str) -> Session:
    """Online: create this user's key slot via the gateway, then the normal login."""
    add_user_online(device, user, password)
    return Session.login(device, user, password)


def prepared(
    session: Session, prepare: Callable[[Session], object] | None
) -> tuple[Session, object]:
    """The session and what ``prepare`` made of it (the session is locked if that fails)."""
    if prepare is None:
        return session, None
    try:
        return session, prepare(session)
    except BaseException:
        session.lock()  # never leave a vault open that no screen holds
        raise
