"""Times, durations and sizes as people read them, for every screen and core verdict alike.

Guarantees:
- Pure functions of their arguments: no clock, no locale, no I/O; the same value always reads
  the same way on every laptop.
- Moments are shown in UTC with the zone named (``07-Mar-2026 14:05 UTC``), so a clinician and
  an auditor in different places read the same time; an absent moment reads as "".
- A negative duration reads as ``0 min`` (never "-3 h"); sizes use binary units.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

SIZE_UNITS: Final = ("bytes", "KiB", "MiB", "GiB", "TiB")


def format_moment(moment: dt.datetime | None) -> str:
    """Timestamps as ``07-Mar-2026 14:05 UTC``; empty when absent."""
    if moment is None:
        return ""
    return moment.astimezone(dt.UTC).strftime("%d-%b-%Y %H:%M UTC")


def format_span(span: dt.timedelta) -> str:
    """A duration for people: ``3 days 4 h`` / ``5 h 10 min`` / ``12 min``."""
    seconds = max(0, int(span.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} day{'s' if days != 1 else ''} {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


def human_size(size: int) -> str:
    """``532 bytes`` / ``4.2 MiB``: binary units, one decimal above bytes."""
    value = float(size)
    for unit in SIZE_UNITS:
        if value < 1024 or unit == SIZE_UNITS[-1]:
            return f"{size:,} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
