"""TM-1: trusted offline time cannot be stretched by moving the wall clock."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from client.core.trusted_time import ClockReading, TimeState, anchor, observe, read_clocks

T0 = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)
SKEW = dt.timedelta(minutes=5)
HOUR = dt.timedelta(hours=1)


def reading(wall: dt.datetime, boot: float, boot_id: str = "boot-a") -> ClockReading:
    return ClockReading(wall, boot, boot_id)


def test_elapsed_follows_real_time_within_one_boot() -> None:
    state = anchor(TimeState(), T0, reading(T0, 100.0))
    seen = observe(state, reading(T0 + 3 * HOUR, 100.0 + 3 * 3600), max_skew=SKEW)
    assert seen.offline_elapsed == 3 * HOUR
    assert not seen.tampered


def test_TM1_clock_set_back_does_not_extend_grace_and_is_tamper() -> None:
    state = anchor(TimeState(), T0, reading(T0, 0.0))
    state = observe(state, reading(T0 + 10 * HOUR, 10 * 3600.0), max_skew=SKEW).state
    # The user sets the clock back two days; two real hours pass.
    seen = observe(
        state, reading(T0 + 10 * HOUR - dt.timedelta(days=2), 12 * 3600.0), max_skew=SKEW
    )
    assert seen.tampered
    assert seen.set_back_by > dt.timedelta(days=1)
    assert seen.offline_elapsed == 12 * HOUR  # the boot clock kept counting
    assert seen.state.requires_online


def test_TM1_clock_set_back_across_a_reboot_gains_nothing() -> None:
    state = anchor(TimeState(), T0, reading(T0, 0.0))
    state = observe(state, reading(T0 + 10 * HOUR, 10 * 3600.0), max_skew=SKEW).state
    after_reboot = reading(T0 + 5 * HOUR, 30.0, boot_id="boot-b")
    seen = observe(state, after_reboot, max_skew=SKEW)
    assert seen.tampered
    # Nothing from the clock set back; the new boot's 30 s of uptime count (TM-3).
    assert seen.offline_elapsed == 10 * HOUR + dt.timedelta(seconds=30)
    assert seen.state.requires_online
    # Still tampered-with after it "catches up": the flag persists until an anchor.
    later = observe(seen.state, reading(T0 + 6 * HOUR, 3630.0, "boot-b"), max_skew=SKEW)
    assert later.state.requires_online
    assert later.offline_elapsed == 11 * HOUR + dt.timedelta(seconds=30)


def test_suspend_counts_even_when_the_wall_clock_is_frozen() -> None:
    """CLOCK_BOOTTIME counts suspend; a wall clock stuck in the past does not hide it."""
    state = anchor(TimeState(), T0, reading(T0, 0.0))
    seen = observe(state, reading(T0, 48 * 3600.0), max_skew=SKEW)
    assert seen.offline_elapsed == dt.timedelta(hours=48)


def test_small_ntp_corrections_are_not_tamper() -> None:
    state = anchor(TimeState(), T0, reading(T0, 0.0))
    state = observe(state, reading(T0 + HOUR, 3600.0), max_skew=SKEW).state
    seen = observe(state, reading(T0 + HOUR - dt.timedelta(seconds=30), 3601.0), max_skew=SKEW)
    assert not seen.tampered
    assert not seen.state.requires_online


def test_a_server_anchor_resets_elapsed_and_clears_tamper() -> None:
    state = TimeState(offline_elapsed_seconds=99_999.0, requires_online=True)
    state = anchor(state, T0, reading(T0, 5.0))
    assert state.offline_elapsed_seconds == 0.0
    assert not state.requires_online
    assert state.last_server_anchor == T0


def test_state_round_trips_through_json() -> None:
    state = observe(
        anchor(TimeState(), T0, reading(T0, 1.0)), reading(T0 + HOUR, 3601.0), max_skew=SKEW
    ).state
    assert TimeState.from_json(state.to_json()) == state


def test_real_clocks_are_readable() -> None:
    clocks = read_clocks()
    assert clocks.wall.tzinfo is not None
    assert clocks.boot_seconds > 0


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(min_value=-3 * 86400, max_value=3 * 86400),  # wall jump (s)
            st.integers(min_value=0, max_value=86400),  # real seconds passed
            st.booleans(),  # reboot
        ),
        max_size=30,
    )
)
def test_TM1_elapsed_never_shrinks_and_never_lags_real_time(
    steps: list[tuple[int, int, bool]],
) -> None:
    state = anchor(TimeState(), T0, reading(T0, 0.0, "b0"))
    wall, boot, boot_id, real = T0, 0.0, "b0", 0.0
    for jump, passed, reboot in steps:
        real += passed
        wall += dt.timedelta(seconds=jump + passed)
        if reboot:
            boot_id, boot = f"b{real}", 0.0
        else:
            boot += passed
        before = state.offline_elapsed_seconds
        seen = observe(state, ClockReading(wall, boot, boot_id), max_skew=SKEW)
        state = seen.state
        assert state.offline_elapsed_seconds >= before
        if not state.requires_online and not reboot:
            # Without detected tampering, real time within a boot is always counted.
            assert state.offline_elapsed_seconds - before >= passed


def test_a_clock_that_ran_fast_and_was_corrected_is_not_tamper_after_an_anchor() -> None:
    """M6: a year-ahead clock, a sync, the clock put right: no false tamper afterwards."""
    ahead = T0 + dt.timedelta(days=365)
    state = anchor(TimeState(), T0, reading(T0, 0.0))
    state = observe(state, reading(ahead, 60.0), max_skew=SKEW).state  # clock jumped ahead
    state = anchor(state, T0 + HOUR, reading(T0 + HOUR, 3600.0))  # corrected, then synced
    seen = observe(state, reading(T0 + 2 * HOUR, 7200.0), max_skew=SKEW)
    assert not seen.tampered and not seen.state.requires_online


# -- TM-3: reboots ------------------------------------------------------------------------------


def _after_boots(state: TimeState, boots: list[tuple[dt.datetime, float, str]]) -> TimeState:
    for wall, uptime, boot_id in boots:
        state = observe(state, reading(wall, uptime, boot_id), max_skew=SKEW).state
    return state


def test_TM3_a_boot_whose_clock_is_just_past_the_high_water_mark_is_tamper() -> None:
    """At boot the clock is set just past the highest time seen; the laptop has been up ten
    minutes when the app looks, so the clock says it booted before it was last seen running.
    (Within the policy's skew it is not tamper, but the uptime and the restart still count.)"""
    state = anchor(TimeState(), T0, reading(T0, 600.0))
    state = observe(state, reading(T0 + HOUR, 4200.0), max_skew=SKEW).state
    high = state.wall_high_water
    assert high is not None
    seen = observe(state, reading(high + dt.timedelta(seconds=2), 600.0, "boot-b"), max_skew=SKEW)
    assert seen.tampered and seen.state.requires_online
    assert seen.set_back_by == dt.timedelta(seconds=598)
    assert seen.state.offline_boots == 1
    assert seen.offline_elapsed == HOUR + dt.timedelta(seconds=600)
    within_skew = observe(
        state, reading(high + dt.timedelta(seconds=2), 60.0, "boot-b"), max_skew=SKEW
    )
    assert not within_skew.tampered and within_skew.state.offline_boots == 1
    assert within_skew.offline_elapsed == HOUR + dt.timedelta(seconds=60)


def test_TM3_each_boot_counts_its_uptime_and_the_forward_jump() -> None:
    state = anchor(TimeState(), T0, reading(T0, 600.0))
    # Honest clock: switched off for 48 h, then up 10 minutes when the app looks.
    off = 48 * HOUR
    state = _after_boots(state, [(T0 + off + dt.timedelta(minutes=10), 600.0, "boot-b")])
    assert state.offline_elapsed_seconds == (off + dt.timedelta(minutes=10)).total_seconds()
    assert state.offline_boots == 1 and not state.requires_online


def test_TM3_a_careful_attacker_gains_only_the_uptime_and_the_boot_count_caps_it() -> None:
    """Clock set at each boot to the high-water mark plus the uptime (not tamper): only the
    uptime counts, and every reboot is counted for the policy's cap."""
    state = anchor(TimeState(), T0, reading(T0, 600.0))
    for n in range(3):
        high = state.wall_high_water
        assert high is not None
        uptime = 1800.0  # half an hour on each boot, 48 h really switched off before it
        wall = high + dt.timedelta(seconds=uptime + 1)
        seen = observe(state, reading(wall, uptime, f"boot-{n}"), max_skew=SKEW)
        assert not seen.tampered
        state = seen.state
    assert state.offline_boots == 3
    assert state.offline_elapsed_seconds >= 3 * 1800
    assert anchor(state, T0, reading(T0, 1.0)).offline_boots == 0


def test_TM3_without_a_boot_id_a_boot_clock_that_went_back_is_a_reboot() -> None:
    state = anchor(TimeState(), T0, reading(T0, 5000.0, ""))
    seen = observe(state, reading(T0 + HOUR, 8600.0, ""), max_skew=SKEW)
    assert seen.state.offline_boots == 0 and seen.offline_elapsed == HOUR
    seen = observe(
        seen.state, reading(T0 + HOUR + dt.timedelta(seconds=130), 120.0, ""), max_skew=SKEW
    )
    assert seen.state.offline_boots == 1 and not seen.tampered
    assert seen.offline_elapsed == HOUR + dt.timedelta(seconds=130)
