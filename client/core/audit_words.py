"""Audit codes in plain words: the one mapping every audit screen and export uses.

Guarantees:
- Pure functions, no Qt, no I/O: the same code always reads the same way.
- Every action the laptop writes has its words here (``ACTION_WORDS``); an action this build
  does not know (a newer laptop's entry seen at the gateway) still reads as words, never as
  the raw code with underscores: ``some_new_thing`` → ``Some new thing``.
- Purposes (``TREAT``, ``BTG``) and outcomes (``success``, ``denied``, ``failure``) too.
- The stored entries keep their codes (the audit chain, the FHIR export and its verifier are
  unchanged); only what people read is translated.
"""

from __future__ import annotations

from typing import Final

ACTION_WORDS: Final[dict[str, str]] = {
    "login_ok": "Signed in",
    "login_failed": "Sign-in failed",
    "unlock": "Unlocked",
    "lock": "Locked or signed out",
    "lockout": "Locked out after failed sign-ins",
    "password_changed": "Password changed",
    "search": "Searched patients",
    "caseload": "Listed the caseload",
    "scope_check": "Checked a patient's site",
    "record_view": "Opened record",
    "note_written": "Wrote a consultation",
    "draft_discarded": "Discarded a draft",
    "break_glass": "Break-glass access",
    "conflicts_view": "Looked at sync conflicts",
    "conflict_resolved": "Resolved a sync conflict",
    "export": "Exported",
    "copy_allowed": "Copied",
    "copy_blocked": "Copy blocked",
    "print_allowed": "Printed",
    "print_blocked": "Print blocked",
    "export_allowed": "Exported a record",
    "export_blocked": "Export blocked",
    "screen_capture_blocked": "Screen capture blocked",
    "sync": "Sync",
    "sync_sent": "Sent to the gateway",
    "sync_conflict": "Sync conflict",
    "purge_held": "Removal held for unsent work",
    "policy_installed": "Policy installed",
    "policy_refused": "Policy refused",
    "clock_tamper": "Clock set back",
    "purge": "Record removed from this laptop",
    "wipe": "Laptop wiped",
    "remote_lock": "Locked by IT",
    "provision": "Laptop set up",
    "user_added": "User added",
    "user_revoked": "User removed",
    "users_read": "Listed the laptop's users",
    "audit_read": "Read the audit log",
    "audit_query": "Searched the audit trail",
    "conditional_launch_refused": "Start refused by a device check",
    "pending_audit_dropped": "Audit events lost while locked",
}

PURPOSE_WORDS: Final[dict[str, str]] = {
    "TREAT": "Care",
    "BTG": "Break-glass",
    "HOPERAT": "Operations",
    "HMARKT": "Marketing",
}

OUTCOME_WORDS: Final[dict[str, str]] = {
    "success": "Done",
    "denied": "Refused",
    "failure": "Failed",
}


def _as_words(code: str) -> str:
    words = code.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:] if words else ""


def action_words(code: str) -> str:
    """``record_view`` → ``Opened record``; an unknown code as capitalised words."""
    return ACTION_WORDS.get(code) or _as_words(code)


def purpose_words(code: str | None) -> str:
    """``BTG`` → ``Break-glass``; ``TREAT`` → ``Care``; absent → ``""``."""
    if not code:
        return ""
    return PURPOSE_WORDS.get(code) or _as_words(code.lower())


def outcome_words(code: str) -> str:
    """``denied`` → ``Refused``."""
    return OUTCOME_WORDS.get(code) or _as_words(code)


def action_choices(codes: set[str] | frozenset[str]) -> list[tuple[str, str]]:
    """(words, code) pairs for a filter list, sorted by the words people read."""
    return sorted(((action_words(c), c) for c in codes), key=lambda pair: pair[0].casefold())
