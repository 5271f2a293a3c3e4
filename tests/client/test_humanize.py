"""Times, durations and sizes as people read them (used by the readiness verdicts and screens)."""

from __future__ import annotations

import datetime as dt

import pytest

from client.core.humanize import (
    format_clock,
    format_moment,
    format_span,
    format_timestamp,
    human_size,
)


def test_moments_read_in_uk_local_time_in_one_format() -> None:
    summer = dt.datetime(2026, 7, 1, 13, 5, tzinfo=dt.UTC)  # 14:05 BST
    winter = dt.datetime(2026, 12, 5, 14, 5, tzinfo=dt.UTC)  # 14:05 GMT
    assert format_moment(summer) == "01-Jul-2026 14:05"
    assert format_moment(winter) == "05-Dec-2026 14:05"
    assert format_clock(summer) == "14:05"
    assert format_timestamp("2026-07-01T13:05:00.000000+00:00") == "01-Jul-2026 14:05"
    assert format_moment(None) == ""


def test_the_hour_the_clocks_go_back_names_its_zone() -> None:
    # 25 Oct 2026: 01:30 local happens at 00:30 UTC (BST) and again at 01:30 UTC (GMT).
    first = dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC)
    second = dt.datetime(2026, 10, 25, 1, 30, tzinfo=dt.UTC)
    assert format_moment(first) == "25-Oct-2026 01:30 BST"
    assert format_moment(second) == "25-Oct-2026 01:30 GMT"
    assert format_moment(dt.datetime(2026, 10, 25, 3, 0, tzinfo=dt.UTC)) == "25-Oct-2026 03:00"


def test_a_moment_without_a_zone_is_refused_and_bad_text_is_shown_as_it_is() -> None:
    with pytest.raises(ValueError):
        format_moment(dt.datetime(2026, 7, 1, 13, 5))
    assert format_timestamp("not a time") == "not a time"


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
