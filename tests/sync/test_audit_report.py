"""The out-of-hours rule both the gateway's report and the auditor workspace apply."""

from __future__ import annotations

import datetime as dt

import pytest

from sync.protocol.audit.report import out_of_hours


def test_out_of_hours_is_judged_in_uk_local_time_across_the_summer_hour() -> None:
    # 07:30 UTC in July is 08:30 BST: within the working day; in January it is 07:30 GMT: not.
    assert not out_of_hours(dt.datetime(2026, 7, 6, 7, 30, tzinfo=dt.UTC))
    assert out_of_hours(dt.datetime(2026, 1, 5, 7, 30, tzinfo=dt.UTC))
    # 17:30 UTC in July is 18:30 BST: out of hours; in January 17:30 GMT: still working.
    assert out_of_hours(dt.datetime(2026, 7, 6, 17, 30, tzinfo=dt.UTC))
    assert not out_of_hours(dt.datetime(2026, 1, 5, 17, 30, tzinfo=dt.UTC))


def test_weekends_are_out_of_hours_all_day() -> None:
    assert out_of_hours(dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC))  # Saturday noon
    assert out_of_hours(dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC))  # Sunday
    assert not out_of_hours(dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC))  # Monday


def test_a_time_without_a_zone_is_refused_not_guessed() -> None:
    with pytest.raises(ValueError):
        out_of_hours(dt.datetime(2026, 11, 23, 10, 0))
