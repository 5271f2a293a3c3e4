"""Who may do what in a session, and how a refused act is told: the roles, the reasons
break-glass accepts, the break-glass grant, and the errors a refused or closed act raises.

Guarantees:
- One word per role (``clinician``, ``auditor``, ``admin``) across the core, the UI and the
  audit log; every role refusal is the one ``NotAllowed`` error (AU-5), whose message names
  what the role may not do and nothing about any record.
- A break-glass reason is one of ``BREAK_GLASS_REASONS`` plus at least
  ``MIN_BREAK_GLASS_TEXT`` characters of free text; the same minimum holds for the reason of a
  print or export.
- Pure definitions: no I/O, no vault; ``client.core.session`` enforces them and re-exports them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

from client.core import accounts
from client.core.errors import UserFacingError

CLINICIAN: Final = "clinician"
AUDITOR: Final = "auditor"
ADMIN: Final = "admin"
BREAK_GLASS_REASONS: Final = {
    "emergency": "Medical emergency",
    "transfer": "Patient arriving from another prison",
    "court": "Court or hospital escort",
    "continuity": "Continuity of care (covering another site)",
    "other": "Other (explain)",
}
MIN_BREAK_GLASS_TEXT: Final = 10  # characters of free-text reason, so "x" is not a reason


class NotAllowed(UserFacingError):
    """This role may not do this (AU-5)."""

    def __init__(self, what: str) -> None:
        super().__init__("not_allowed", f"Your role does not allow you to {what}.")


class RecordsClosed(UserFacingError):
    """Records stay closed until a sync (trusted time) or a new policy (expired policy)."""

    _MESSAGES: Final = {
        "policy_expired": (
            "The device policy has expired, so records are closed. Connect to the network "
            "and sync to receive the current policy."
        ),
    }

    def __init__(self, reason: str) -> None:
        message = self._MESSAGES.get(reason) or accounts.BLOCK_MESSAGES.get(
            reason, "Records are closed until this laptop has synced."
        )
        super().__init__(reason, message)


class BreakGlassRequired(UserFacingError):
    """The patient is outside this device's site scope: break-glass is needed to open it."""

    def __init__(self, patient_id: str) -> None:
        super().__init__(
            "break_glass_required",
            "This patient is not on your site's caseload. To open the record you must give a "
            "reason and your password again; the access is recorded and reviewed.",
        )
        self.patient_id = patient_id


class BreakGlassRefused(UserFacingError):
    """The break-glass request itself was not acceptable (reason missing or too short)."""


def require_reason(text: str, reason: str, verb: str) -> None:
    """``BreakGlassRefused(reason)`` when ``text`` is too short to be a reason ("x" is not)."""
    if len(text.strip()) < MIN_BREAK_GLASS_TEXT:
        raise BreakGlassRefused(
            reason, f"{verb} the reason in at least {MIN_BREAK_GLASS_TEXT} characters."
        )


@dataclass(frozen=True)
class BreakGlassGrant:
    patient_id: str
    reason_code: str
    granted_at: dt.datetime
    expires_at: dt.datetime
