"""The audit report rules both ends apply: what counts as out of hours, and in which zone.

Invariants:
- One definition: the gateway's ``audit report`` and the laptop's auditor workspace both call
  :func:`out_of_hours`, so a report and a screen never disagree about the same entry.
- Out of hours is judged in UK local time (``REPORT_ZONE``, Europe/London, so the summer hour
  counts): a Saturday or Sunday, or before ``WORKDAY_START`` / from ``WORKDAY_END`` o'clock.
- ``moment`` must be timezone-aware (audit times are stored in UTC); a naive time is refused
  with ``ValueError`` rather than guessed.
"""

from __future__ import annotations

import datetime as dt
from typing import Final
from zoneinfo import ZoneInfo

REPORT_ZONE: Final = "Europe/London"
WORKDAY_START: Final = 8  # local hour the working day starts (08:00)
WORKDAY_END: Final = 18  # local hour it ends (18:00 is already out of hours)
_SATURDAY: Final = 5


def out_of_hours(moment: dt.datetime, zone: str = REPORT_ZONE) -> bool:
    """True when ``moment`` falls outside the working week in ``zone``."""
    if moment.tzinfo is None:
        raise ValueError("audit times must carry a zone")
    local = moment.astimezone(ZoneInfo(zone))
    return local.weekday() >= _SATURDAY or not WORKDAY_START <= local.hour < WORKDAY_END
