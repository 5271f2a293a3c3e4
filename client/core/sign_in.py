"""Signing in from the login screen: the offline preview, the offline login and the first,
online sign-in of a person on this laptop. Runs on the UI's executor, never on the GUI thread.

Guarantees:
- ``offline_preview`` only reads: the trusted clocks are observed (``trusted_time.observe`` is
  pure), nothing is persisted and no attempt is counted, so looking at the login screen never
  advances, resets or tampers with the offline grace period.
- ``sign_in`` never tries a password against a laptop that cannot hold it: a user with no key
  slot on an enrolled laptop gets ``FirstSignInNeeded`` (their first sign-in here is online)
  before any attempt is counted.
- ``first_sign_in`` writes the user's key slot only through ``add_user_online`` (the gateway
  checks the password and unseals the escrow over the pinned channel), then signs in offline.
- ``prepared`` never leaves a vault open that nobody holds: if the follow-up step fails, the
  session is locked before the error goes on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from client.core.accounts import offline_state_of
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


class FirstSignInNeeded(UserFacingError):
    """This person has no key slot on this laptop yet: their first sign-in here is online."""

    def __init__(self) -> None:
        super().__init__(
            "first_sign_in_needed",
            "This is your first sign-in on this laptop, so it needs the network once: the "
            "gateway checks your password and gives this laptop your key. After that you can "
            "sign in here offline. Connect to the health board's network, then choose "
            "“First sign-in on this laptop”.",
        )


def sign_in(device: Device, user: str, password: str) -> Session:
    """The offline login, or ``FirstSignInNeeded`` for a user with no slot on an enrolled
    laptop."""
    if device.profile.enrolment and device.header.role_of(user) is None:
        raise FirstSignInNeeded()
    return Session.login(device, user, password)


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
