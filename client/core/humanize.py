"""Times, durations and sizes as people read them, for every screen and core verdict alike.

Guarantees:
- Pure functions of their arguments: no clock, no locale, no I/O; the same value always reads
  the same way on every laptop.
- Moments are stored in UTC and shown in UK local time (``DISPLAY_ZONE``, Europe/London, so
  summer time counts) in one format, ``05-Dec-2026 14:05``. The zone is named only where the
  local time alone is ambiguous: the hour the clocks go back happens twice, so
  ``25-Oct-2026 01:30 BST`` and ``25-Oct-2026 01:30 GMT`` are told apart. An absent moment
  reads as "".
- A moment without a zone is refused (``ValueError``), never guessed.
- A negative duration reads as ``0 min`` (never "-3 h"); sizes use binary units.
"""

from __future__ import annotations

import datetime as dt
from typing import Final
from zoneinfo import ZoneInfo

SIZE_UNITS: Final = ("bytes", "KiB", "MiB", "GiB", "TiB")
DISPLAY_ZONE: Final = ZoneInfo("Europe/London")


def _local(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a moment to show must carry its zone")
    return moment.astimezone(DISPLAY_ZONE)


def _zone_if_ambiguous(local: dt.datetime) -> str:
    """`` BST``/`` GMT`` when this wall-clock time happens twice (clocks going back)."""
    other = local.replace(fold=1 - local.fold)
    return f" {local.tzname()}" if other.utcoffset() != local.utcoffset() else ""


def format_moment(moment: dt.datetime | None) -> str:
    """``05-Dec-2026 14:05`` in UK local time; empty when absent."""
    if moment is None:
        return ""
    local = _local(moment)
    return local.strftime("%d-%b-%Y %H:%M") + _zone_if_ambiguous(local)


def format_clock(moment: dt.datetime) -> str:
    """``14:05`` in UK local time (the same day is implied), zone named when ambiguous."""
    local = _local(moment)
    return local.strftime("%H:%M") + _zone_if_ambiguous(local)


def format_timestamp(text: str) -> str:
    """A stored ISO 8601 timestamp (audit entries, records) as :func:`format_moment` shows it;
    text that is not one is shown as it is (it is data, never hidden)."""
    try:
        return format_moment(dt.datetime.fromisoformat(text))
    except ValueError:
        return text


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
