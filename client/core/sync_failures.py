"""What a failed sync means to the person at the laptop (UI-4): one sentence per reason code.

Invariants:
- Every reason a sync can end with (``SyncResult.error``: the transport's, the engine's, the
  control steps', the replica's, and the gateway's refusal codes it passes on) has exactly one
  entry in ``SYNC_FAILURES``: a plain sentence saying what happened, then what to do.
- A code not listed (a new gateway refusal, ``http_<status>``) gets a generic sentence of the
  same shape; no sentence ever contains a reason code. The code itself stays in the ``sync``
  audit entry and in ``--json`` output, never in user text.
- No Qt: the desktop UI and the ``gatehouse`` CLI both read this one mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

_CALL_IT: Final = "if it keeps happening, call IT."
NOTHING_LOST: Final = (
    "Nothing you saved is lost: unsent work stays on this laptop for the next sync."
)

# Reasons that mean the gateway was not safely reached at all (the laptop is, in effect, offline).
CONNECTION_REASONS: Final = frozenset(
    {
        "pin_mismatch",
        "tls",
        "host_not_allowed",
        "redirect_refused",
        "timeout",
        "connection",
        "too_large",
        "config",
    }
)

SYNC_FAILURES: Final[Mapping[str, str]] = MappingProxyType(
    {
        # the connection (sync/device/transport.py)
        "pin_mismatch": "The gateway did not prove it is the health board's gateway (its key "
        "does not match this laptop's policy), which can mean an unsafe network. Do not retry "
        "on this network; call IT.",
        "tls": "A secure connection to the gateway could not be made; something on this network "
        "may be getting in the way. Try again on the health board's network; " + _CALL_IT,
        "host_not_allowed": "The gateway address is not allowed by this laptop's policy. Call IT.",
        "redirect_refused": "The network tried to send Gatehouse to another address, which it "
        "never follows. Try another network or call IT.",
        "timeout": "The gateway did not answer in time. Try again when the network is better.",
        "connection": "The gateway cannot be reached from here. Connect to the health board's "
        "network (or wait until you are back in range) and try again.",
        "too_large": "The gateway sent more than Gatehouse accepts at once, so it was not used. "
        "Call IT.",
        "config": "This laptop's connection settings are not complete. Call IT.",
        # the gateway's answers (sync/device/push.py, pull.py, control.py)
        "bad_response": "The gateway sent an answer Gatehouse cannot accept, so it was not used. "
        "Try again later; " + _CALL_IT,
        "bad_link": "The gateway's list of changes did not add up, so the rest was not fetched. "
        "Try again later; " + _CALL_IT,
        "pull_refused": "The gateway would not send the latest records. Try again later; "
        + _CALL_IT,
        "incomplete_pull": "The records server sent only part of the records, so some may be "
        "missing on this laptop; what arrived is kept. Sync again; " + _CALL_IT,
        "unsorted_search": "The records server sent records in an order Gatehouse cannot page "
        "through safely, so that part was not fetched. Sync again; " + _CALL_IT,
        "server_error": "The gateway could not take your notes right now. They are kept and "
        "sent with the next sync; try again later.",
        "bad_time": "The gateway's time could not be trusted, so it was not used. Try again "
        "later; " + _CALL_IT,
        "bad_receipt": "The gateway's receipt for this laptop's audit log did not check out. "
        "Try again later; " + _CALL_IT,
        "bad_command": "An instruction from the gateway was not properly signed, so it was "
        "ignored. Call IT.",
        "wiped": "IT wiped this laptop; its records and keys are gone. Return it to IT.",
        "cancelled": "The sync was cancelled; what was received is kept. Sync again when ready.",
        # the gateway's refusals passed on by the control steps
        "device_revoked": "IT has withdrawn this laptop's access to the gateway. Call IT.",
        "device_wiped": "The gateway records this laptop as wiped. Return it to IT.",
        "unknown_device": "The gateway does not know this laptop. Call IT.",
        "device_site_mismatch": "The gateway does not recognise this laptop for its site. Call IT.",
        "certificate_required": "The gateway did not accept this laptop's identity. Call IT.",
        "chain_broken": "The gateway could not match this laptop's audit log with the copy it "
        "holds. Call IT; keep using the laptop as usual.",
        "audit_chain_unknown": "The gateway holds no audit log for this laptop. Call IT.",
        "audit_bundle_invalid": "The gateway could not read this laptop's audit log upload. "
        "Try again later; " + _CALL_IT,
        "audit_busy": "The gateway was busy. Try again in a few minutes.",
        "database_busy": "The gateway was busy. Try again in a few minutes.",
        "body_too_large": "The gateway would not take this much at once. Try again; " + _CALL_IT,
        "internal_error": "The gateway had a problem of its own. Try again later; " + _CALL_IT,
        # this laptop's side (client/core/replica.py)
        "vault_locked": "The laptop was locked during the sync. Sign in and sync again.",
        "in_transaction": "Gatehouse was busy saving when the sync began. Sync again.",
        "unknown_entry": "The gateway answered about a note this laptop does not hold. Sync "
        "again; " + _CALL_IT,
        "not_pending": "The gateway answered about a note that was already settled. Sync again; "
        + _CALL_IT,
        "already_sent": "The gateway answered about a note that was already sent. Sync again; "
        + _CALL_IT,
        "bad_server_reply": "The gateway's reply about a note did not add up, so it was not "
        "used. Sync again; " + _CALL_IT,
    }
)

GATEWAY_TROUBLE: Final = "The gateway had a problem of its own. Try again later; " + _CALL_IT
GATEWAY_REFUSED: Final = (
    "The gateway refused part of the sync. Try again later; if it keeps happening, call IT."
)


def sync_failure_sentence(reason: str | None) -> str:
    """One plain sentence and what to do, for a sync that ended with ``reason``."""
    if reason is None:
        return GATEWAY_REFUSED
    known = SYNC_FAILURES.get(reason)
    if known is not None:
        return known
    if reason.startswith("http_5"):
        return GATEWAY_TROUBLE
    return GATEWAY_REFUSED


def is_connection_failure(reason: str | None) -> bool:
    """True when the gateway was not (safely) reached: the laptop is offline in effect."""
    return reason in CONNECTION_REASONS
