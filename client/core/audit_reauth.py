"""The auditor's re-authentication, remembered for a few minutes (one password per session).

Guarantees:
- An auditor types their password once; for ``REAUTH_WINDOW`` after that, searches and exports
  of the audit trail are not asked for it again. After the window, or once ``forget`` runs
  (lock, sign-out, a refused token), the password is asked again.
- What is remembered lives in this object's memory only, never on disk and never logged: the
  moment of the last successful re-authentication (on a monotonic clock: setting the wall
  clock forward or back changes nothing) and, for the gateway, the short-lived bearer token
  that re-authentication gave. The token is bound to this device's certificate by the gateway
  and expires there on its own (``sync.gateway.users.TOKEN_TTL``, longer than the window).
- The password itself is never remembered.
- The clock is injectable (tests move it past the window).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

REAUTH_WINDOW_SECONDS: Final = 10 * 60  # one auditor "session" of a few minutes


class ReauthMemory:
    """When the signed-in user last proved their password, and the gateway token it gave."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._confirmed_at: float | None = None
        self._token: str | None = None
        self._token_at: float | None = None

    def _within(self, since: float | None) -> bool:
        return since is not None and 0 <= self.clock() - since < REAUTH_WINDOW_SECONDS

    def _fresh(self) -> bool:
        if self._within(self._confirmed_at):
            return True
        self.forget()
        return False

    @property
    def confirmed(self) -> bool:
        """True within ``REAUTH_WINDOW_SECONDS`` of the last successful re-authentication."""
        return self._fresh()

    def token(self) -> str | None:
        """The gateway's bearer token, within the window from when it was given; else None."""
        if not self._fresh() or not self._within(self._token_at):
            self._token = self._token_at = None
        return self._token

    def remember(self, token: str | None = None) -> None:
        """The password was just proved (on this laptop, or at the gateway with ``token``).

        A device-only proof keeps a token already held, which still ends a window after it was
        given (the gateway's own expiry is later)."""
        self._confirmed_at = self.clock()
        if token is not None:
            self._token, self._token_at = token, self._confirmed_at

    def forget(self) -> None:
        """Lock, sign-out, a refused token: ask for the password next time."""
        self._confirmed_at = None
        self._token = self._token_at = None
