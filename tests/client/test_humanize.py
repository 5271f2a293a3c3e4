"""Times, durations and sizes as people read them (used by the readiness verdicts and screens)."""

from __future__ import annotations

import datetime as dt

from client.core.humanize import format_moment, format_span, human_size


def test_moments_read_in_utc_with_the_zone_named() -> None:
    summer = dt.datetime(2026, 7, 1, 15, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert format_moment(summer) == "01-Jul-2026 14:05 UTC"
    assert format_moment(None) == ""


def test_spans_read_in_days_hours_and_minutes_and_never_negative() -> None:
    assert format_span(dt.timedelta(days=3, hours=4, minutes=9)) == "3 days 4 h"
    assert format_span(dt.timedelta(days=1, minutes=5)) == "1 day 0 h"
    assert format_span(dt.timedelta(hours=5, minutes=10)) == "5 h 10 min"
    assert format_span(dt.timedelta(minutes=12, seconds=59)) == "12 min"
    assert format_span(dt.timedelta(hours=-3)) == "0 min"


def test_sizes_use_binary_units() -> None:
    assert human_size(532) == "532 bytes"
    assert human_size(3 * 1024 * 1024 + 200 * 1024) == "3.2 MiB"
    assert human_size(1024**5 * 2) == "2048.0 TiB"
