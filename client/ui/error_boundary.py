"""The one place where errors become words for a clinician (CONVENTIONS.md §4).

Guarantees:
- A user never sees a traceback or raw exception text: user-facing errors show their own
  message (written for people, free of patient data); environment faults say what the machine
  did and what to do; anything else is a bug, shown as a calm generic message.
- Every message says whether anything was lost. Saves are transactional, so the answer is
  "nothing was lost" unless an error says otherwise.
- Bugs are logged by exception type only (never the message, which might hold data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from client.core.errors import EnvironmentFault, GatehouseError, UserFacingError

log = logging.getLogger(__name__)

NOTHING_LOST = "Nothing you saved has been lost."


@dataclass(frozen=True)
class Explanation:
    title: str
    message: str
    reason: str


def explain(error: BaseException) -> Explanation:
    """What to tell the user about ``error``."""
    if isinstance(error, UserFacingError):
        return Explanation("Gatehouse", error.message, error.reason)
    if isinstance(error, EnvironmentFault):
        return Explanation(
            "This computer needs attention", f"{error.message}\n\n{NOTHING_LOST}", error.reason
        )
    if isinstance(error, OSError) and error.errno == 28:
        return Explanation(
            "The disk is full",
            "Gatehouse could not save because the disk is full. Free some space or call IT, "
            f"then try again.\n\n{NOTHING_LOST}",
            "disk_full",
        )
    if isinstance(error, GatehouseError):
        return Explanation("Gatehouse", error.message, error.reason)
    log.error("unexpected error: %s", type(error).__name__)
    return Explanation(
        "Something went wrong",
        "Gatehouse hit an unexpected problem and stopped what it was doing. "
        f"{NOTHING_LOST} Try again; if it happens again, call IT.",
        "bug",
    )
