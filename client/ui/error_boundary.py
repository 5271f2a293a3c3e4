"""The one place where errors become words for a clinician (CONVENTIONS.md §4).

Guarantees:
- A user never sees a traceback or raw exception text: user-facing errors show their own
  message (written for people, free of patient data); environment faults say what the machine
  did and what to do; anything else is a bug, shown as a calm generic message.
- Every message says whether anything was lost. Saves are transactional, so the answer is
  "nothing was lost" unless an error says otherwise.
- Network and gateway refusals (``TransportError``, and every other ``sync.device.errors.
  DeviceError``) are explained by their reason code; a gateway's own refusal text is shown
  plain and truncated. A ``sync.protocol.errors.ProtocolError`` (an answer or statement that
  cannot be accepted) says so and never quotes it.
- A full disk is one sentence with the figures and what to do (``DiskFull``, CR-3); a disk-full
  error that reaches here unclassified (``OSError`` ENOSPC/EDQUOT, SQLite "database or disk is
  full") still says the disk is full, never the raw text.
- Bugs are logged by exception type only (never the message, which might hold data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from client.core.disk_space import DiskFull, is_disk_full
from client.core.errors import EnvironmentFault, GatehouseError, UserFacingError
from client.core.sync_failures import CONNECTION_REASONS, SYNC_FAILURES, sync_failure_sentence
from sync.device.errors import DeviceError
from sync.device.outcome import SyncError
from sync.device.transport import TransportError
from sync.protocol.errors import ProtocolError

log = logging.getLogger(__name__)

NOTHING_LOST = "Nothing you saved has been lost."
DISK_FULL_TITLE = "The laptop's disk is full"
# What to say when the gateway was not safely reached (one mapping: client/core/sync_failures).
NETWORK_HELP = {reason: SYNC_FAILURES[reason] for reason in sorted(CONNECTION_REASONS)}
MAX_SERVER_TEXT = 300  # a gateway's refusal text is shown (plain), but never at length
GATEWAY_REFUSALS = {
    "token_used": "This provisioning bundle has already been used. Ask IT for a new one.",
    "token_expired": "This provisioning bundle has expired. Ask IT for a new one.",
    "token_unknown": "The gateway does not know this provisioning bundle. Ask IT for a new one.",
    "bad_bundle": "This file is not a valid Gatehouse provisioning bundle. Ask IT for a new one.",
}


@dataclass(frozen=True)
class Explanation:
    title: str
    message: str
    reason: str


def explain(error: BaseException) -> Explanation:
    """What to tell the user about ``error``."""
    if isinstance(error, UserFacingError):
        return Explanation("Gatehouse", error.message, error.reason)
    if isinstance(error, DiskFull):
        return Explanation(DISK_FULL_TITLE, f"{error.message}\n\n{NOTHING_LOST}", error.reason)
    if isinstance(error, EnvironmentFault):
        return Explanation(
            "This computer needs attention", f"{error.message}\n\n{NOTHING_LOST}", error.reason
        )
    if is_disk_full(error):
        return Explanation(
            DISK_FULL_TITLE,
            "The laptop's disk is full, so Gatehouse could not finish — call IT."
            f"\n\n{NOTHING_LOST}",
            "disk_full",
        )
    if isinstance(error, GatehouseError):
        return Explanation("Gatehouse", error.message, error.reason)
    if isinstance(error, TransportError):
        help_text = NETWORK_HELP.get(error.reason, NETWORK_HELP["connection"])
        return Explanation(
            "The gateway cannot be used", f"{help_text}\n\n{NOTHING_LOST}", error.reason
        )
    if isinstance(error, ProtocolError):
        return Explanation(
            "The gateway's answer cannot be used",
            "The gateway sent something Gatehouse cannot accept, so it was not used. "
            f"Try again later; if it keeps happening, call IT.\n\n{NOTHING_LOST}",
            error.reason,
        )
    if isinstance(error, SyncError):
        return Explanation(
            "The sync did not finish",
            f"{sync_failure_sentence(error.reason)}\n\n{NOTHING_LOST}",
            error.reason,
        )
    if isinstance(error, DeviceError):
        message = GATEWAY_REFUSALS.get(error.reason) or error.message[:MAX_SERVER_TEXT]
        message = message[:1].upper() + message[1:]
        if not message.endswith("."):
            message += "."
        return Explanation("The gateway said no", f"{message}\n\n{NOTHING_LOST}", error.reason)
    log.error("unexpected error: %s", type(error).__name__)
    return Explanation(
        "Something went wrong",
        "Gatehouse hit an unexpected problem and stopped what it was doing. "
        f"{NOTHING_LOST} Try again; if it happens again, call IT.",
        "bug",
    )
