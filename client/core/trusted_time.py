"""Trusted time on a device that is offline for days (SECURITY.md TM-1, TM-2).

What it guarantees:
- ``offline_elapsed`` never decreases and grows by at least the real time that passed while
  the app observed it: within one boot it follows the boot clock (``CLOCK_BOOTTIME``, which
  keeps counting across suspend and cannot be set by the user); across a reboot it follows
  the wall clock, never backwards.
- A wall clock earlier than the highest wall time ever observed (beyond the policy's allowed
  skew) is *tampering*: the observation says so, the session audits it, and the next unlock
  requires going online (``requires_online`` stays set until a trusted server anchor clears it).
- Setting the clock forward only shortens the grace period (fail closed).
- A server time anchor is accepted only from the pinned channel (the sync engine passes it in);
  it resets ``offline_elapsed`` to zero, clears ``requires_online`` and restarts the wall
  high-water mark from the device's clock as read at that moment.

The state is a small value object; the vault header persists it (MACed), so a restart or a
restored header cannot rewind it (the header's own anti-restore check covers that).
Pure functions of (state, readings): the clock is injected, so tests fix it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class ClockReading:
    """One look at the clocks: wall time, the boot clock in seconds, and which boot it is."""

    wall: dt.datetime
    boot_seconds: float
    boot_id: str


@dataclass(frozen=True)
class TimeState:
    """Persisted in the vault header. All fields are plain values (JSON-friendly)."""

    wall_high_water: dt.datetime | None = None
    offline_elapsed_seconds: float = 0.0
    last_boot_id: str = ""
    last_boot_seconds: float = 0.0
    last_wall: dt.datetime | None = None
    last_server_anchor: dt.datetime | None = None
    requires_online: bool = False

    def to_json(self) -> dict[str, str | int | float | bool | None]:
        def iso(value: dt.datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "wall_high_water": iso(self.wall_high_water),
            "offline_elapsed_seconds": self.offline_elapsed_seconds,
            "last_boot_id": self.last_boot_id,
            "last_boot_seconds": self.last_boot_seconds,
            "last_wall": iso(self.last_wall),
            "last_server_anchor": iso(self.last_server_anchor),
            "requires_online": self.requires_online,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> TimeState:
        def when(key: str) -> dt.datetime | None:
            value = data.get(key)
            return dt.datetime.fromisoformat(value) if isinstance(value, str) else None

        elapsed = data.get("offline_elapsed_seconds", 0.0)
        boot_seconds = data.get("last_boot_seconds", 0.0)
        return cls(
            wall_high_water=when("wall_high_water"),
            offline_elapsed_seconds=float(elapsed) if isinstance(elapsed, int | float) else 0.0,
            last_boot_id=str(data.get("last_boot_id", "")),
            last_boot_seconds=float(boot_seconds) if isinstance(boot_seconds, int | float) else 0.0,
            last_wall=when("last_wall"),
            last_server_anchor=when("last_server_anchor"),
            requires_online=bool(data.get("requires_online", False)),
        )


@dataclass(frozen=True)
class Observation:
    """What one observation found."""

    state: TimeState
    tampered: bool
    set_back_by: dt.timedelta

    @property
    def offline_elapsed(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.state.offline_elapsed_seconds)


def observe(state: TimeState, reading: ClockReading, *, max_skew: dt.timedelta) -> Observation:
    """Advance the trusted offline time by what really passed since the last observation."""
    wall = reading.wall
    if wall.tzinfo is None:
        raise ValueError("wall time must be timezone-aware")
    high = state.wall_high_water
    set_back = high - wall if high is not None and wall < high else dt.timedelta(0)
    tampered = set_back > max_skew

    if state.last_wall is None:
        passed = 0.0
    elif reading.boot_id and reading.boot_id == state.last_boot_id:
        # Same boot: the boot clock is monotonic and counts suspend; the wall clock may have
        # been moved. Take the larger of the two (moving the clock forward only costs grace).
        boot_delta = max(0.0, reading.boot_seconds - state.last_boot_seconds)
        wall_delta = max(0.0, (wall - state.last_wall).total_seconds())
        passed = max(boot_delta, wall_delta)
    else:
        # A reboot (or no boot clock): only the wall clock is left; never count backwards,
        # and measure from the high-water mark so that setting the clock back gains nothing.
        reference = max(state.last_wall, high) if high is not None else state.last_wall
        passed = max(0.0, (wall - reference).total_seconds())

    new_state = replace(
        state,
        wall_high_water=max(high, wall) if high is not None else wall,
        offline_elapsed_seconds=state.offline_elapsed_seconds + passed,
        last_boot_id=reading.boot_id,
        last_boot_seconds=reading.boot_seconds,
        last_wall=wall,
        requires_online=state.requires_online or tampered,
    )
    return Observation(new_state, tampered, set_back)


def anchor(state: TimeState, server_time: dt.datetime, reading: ClockReading) -> TimeState:
    """A trusted server time arrived over the pinned channel: offline time starts again."""
    if server_time.tzinfo is None:
        raise ValueError("server time must be timezone-aware")
    return replace(
        state,
        # The high-water mark restarts from this device's clock as read now, beside a trusted
        # server time: a clock that once ran fast and was corrected is not taken for
        # tampering afterwards, and a clock behind the server is a skew, not a tamper.
        wall_high_water=reading.wall,
        offline_elapsed_seconds=0.0,
        last_boot_id=reading.boot_id,
        last_boot_seconds=reading.boot_seconds,
        last_wall=reading.wall,
        last_server_anchor=server_time,
        requires_online=False,
    )


def read_clocks() -> ClockReading:
    """The real clocks of this machine."""
    try:
        boot_id = _BOOT_ID_FILE.read_text(encoding="ascii").strip()
    except OSError:
        boot_id = ""
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return ClockReading(dt.datetime.now(dt.UTC), time.clock_gettime(clock), boot_id)
