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
        "incomplete_pull": "The server said it holds more records than it sent, so this laptop "
        "may be missing some. What arrived is kept and the rest is asked for again at the next "
        "sync; " + _CALL_IT,
        "unsorted_search": "The server did not list records in date order, so they could not be "
        "fetched safely. Call IT: the server's settings need checking.",
        "pull_refused": "The gateway would not send the latest records. Try again later; "
        + _CALL_IT,
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
        "gateway_busy": "The gateway was busy. Try again in a few minutes.",
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
        # anything unexpected (a bug): never shown as "(bug)"
        "bug": "Gatehouse hit an unexpected problem during the sync and stopped it. Sync again; "
        + _CALL_IT,
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


# A policy update the laptop refused during a sync (PO-3): ``SyncResult.control["policy"]`` is
# "refused:<reason>" (``policy.errors.PolicyReason``). The last good policy stays in force.
POLICY_KEPT: Final = "This laptop keeps its current policy."
POLICY_REFUSALS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "too_large": "The gateway offered a policy update that is too large to be genuine, so "
        "it was refused.",
        "malformed": "The gateway offered a policy update that is damaged, so it was refused.",
        "bad_signature": "The gateway offered a policy update whose signature does not check "
        "out, so it was refused.",
        "unknown_key": "The gateway offered a policy update not signed by the health board's "
        "policy keys, so it was refused.",
        "below_threshold": "The gateway offered a policy update without enough of the required "
        "signatures, so it was refused.",
        "schema": "The gateway offered a policy update with settings this version of Gatehouse "
        "does not accept, so it was refused.",
        "not_yet_valid": "The gateway offered a policy update that is not valid yet, so it was "
        "refused.",
        "expired": "The gateway offered a policy update that has already expired, so it was "
        "refused.",
        "rollback": "The gateway offered an older policy than the one this laptop has, so it "
        "was refused.",
        "wrong_site": "The gateway offered a policy for another site, so it was refused.",
        "wrong_device": "The gateway offered a policy that does not name this laptop, so it was "
        "refused.",
        "store_rollback": "This laptop's stored policy looks older than it should, so the "
        "update was refused.",
        "store_tampered": "This laptop's stored policy could not be checked, so the update was "
        "refused.",
    }
)
POLICY_REFUSED_OTHER: Final = "The gateway offered a policy update that was refused."


def policy_refusal_sentence(reason: str) -> str:
    """One plain sentence for a refused policy update, what stays in force, and what to do
    (never the reason code: that stays in the ``policy_refused`` audit entry)."""
    what = POLICY_REFUSALS.get(reason, POLICY_REFUSED_OTHER)
    return f"{what} {POLICY_KEPT} Tell IT so they can issue a correct policy."


def is_connection_failure(reason: str | None) -> bool:
    """True when the gateway was not (safely) reached: the laptop is offline in effect."""
    return reason in CONNECTION_REASONS
