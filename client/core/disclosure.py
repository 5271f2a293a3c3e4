"""Print, export and copy of clinical content, behind ``Session`` (UI-2, AU-4).

Guarantees:
- Every attempt is audited, allowed or blocked (``<kind>_allowed`` / ``<kind>_blocked``).
- Printing or exporting needs a clinician, a patient in scope (or under a live break-glass
  grant), a policy that allows it, a reason of at least ``MIN_BREAK_GLASS_TEXT`` characters
  and the password again; a wrong password is audited as a failure (unless it wiped the
  device), a policy refusal as ``denied`` — each before the caller gets anything.
- The session's plumbing is used as the session uses it: the role check (``_require_role``),
  the password again (``_reauthenticate``), one vault transaction per act (``_act``) and the
  audit append inside it (``_append``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from client.core.access import CLINICIAN, NotAllowed, require_reason
from policy import decisions

if TYPE_CHECKING:
    from client.core.session import Session

KINDS = frozenset({"print", "export"})


def record(session: Session, kind: str, patient_id: str | None, *, allowed: bool) -> None:
    """Audit a copy / print / export attempt, allowed or blocked."""
    action = f"{kind}_{'allowed' if allowed else 'blocked'}"
    with session._act() as conn:
        session._append(
            conn,
            action,
            "success" if allowed else "denied",
            patient_id=patient_id,
            purpose="TREAT" if allowed else None,
        )


def allowed_by_policy(session: Session, kind: str) -> bool:
    permissions = decisions.ui_permissions(session.policy)
    return permissions.printing if kind == "print" else permissions.clipboard_copy_out


def authorise(
    session: Session, kind: str, patient_id: str | None, reason_text: str, password: str
) -> None:
    """Print or export: the password again and a reason, audited either way."""
    if kind not in KINDS:
        raise ValueError("disclosure kind must be print or export")
    session._require_role((CLINICIAN,), f"{kind} patient records", f"{kind}_allowed")
    if patient_id is not None:
        session._purpose(patient_id)  # in scope, or under a live break-glass grant
    if not allowed_by_policy(session, kind):
        record(session, kind, patient_id, allowed=False)
        raise NotAllowed(f"{kind} from Gatehouse on this device")
    require_reason(reason_text, "disclosure_reason", "Give")
    session._reauthenticate(
        password,
        f"{kind}_allowed",
        patient_id=patient_id,
        detail={"why": "reauthentication_failed"},
    )
    with session._act() as conn:
        session._append(
            conn,
            f"{kind}_allowed",
            patient_id=patient_id,
            purpose="TREAT",
            reason_text=reason_text.strip()[:500],
        )
