"""Trusted time on a device that is offline for days (SECURITY.md TM-1, TM-2, TM-3).

What it guarantees:
- ``offline_elapsed`` never decreases and grows by at least the real time that passed while
  the app observed it: within one boot it follows the boot clock (``CLOCK_BOOTTIME``, which
  keeps counting across suspend and cannot be set by the user).
- Across a reboot (TM-3) it counts at least the new boot's uptime (the boot clock again), plus
  the wall clock's forward jump between the last time seen and the moment this boot started
  (``wall - uptime``): powered-off time counts whenever the wall clock shows it.
- A wall clock earlier than the highest wall time ever observed (beyond the policy's allowed
  skew) is *tampering*; after a reboot so is a wall clock that puts the start of this boot
  before that high-water mark (``wall - uptime < high-water``): the laptop cannot have booted
  before it was last seen running. The observation says so, the session audits it, and the
  next unlock requires going online (``requires_online`` stays set until a trusted server
  anchor clears it).
- ``offline_boots`` counts the reboots observed since the last server anchor, so the policy can
  cap them (``offline.max_boots``): a laptop that was powered off cannot know for how long
  when its clock was set to just after what it last saw, so each restart is a gap the device
  cannot measure, and the number of such gaps is what it can bound (docs/security.md).
- A reboot is a new boot id (``/proc/sys/kernel/random/boot_id``) or a boot clock that went
  backwards; where the platform has no boot id only the latter is seen (weaker: see the docs).
- Setting the clock forward only shortens the grace period (fail closed).
- A server time anchor is accepted only from the pinned channel (the sync engine passes it in);
  it resets ``offline_elapsed`` and ``offline_boots`` to zero, clears ``requires_online`` and
  restarts the wall high-water mark from the device's clock as read at that moment.

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
    offline_boots: int = 0  # reboots observed since the last server anchor (TM-3)

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
            "offline_boots": self.offline_boots,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> TimeState:
        def when(key: str) -> dt.datetime | None:
            value = data.get(key)
            return dt.datetime.fromisoformat(value) if isinstance(value, str) else None

        elapsed = data.get("offline_elapsed_seconds", 0.0)
        boot_seconds = data.get("last_boot_seconds", 0.0)
        boots = data.get("offline_boots", 0)
        return cls(
            wall_high_water=when("wall_high_water"),
            offline_elapsed_seconds=float(elapsed) if isinstance(elapsed, int | float) else 0.0,
            last_boot_id=str(data.get("last_boot_id", "")),
            last_boot_seconds=float(boot_seconds) if isinstance(boot_seconds, int | float) else 0.0,
            last_wall=when("last_wall"),
            last_server_anchor=when("last_server_anchor"),
            requires_online=bool(data.get("requires_online", False)),
            offline_boots=boots if isinstance(boots, int) and not isinstance(boots, bool) else 0,
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


def is_reboot(state: TimeState, reading: ClockReading) -> bool:
    """A new boot since the last observation: another boot id, or a boot clock that went back
    (the boot clock only runs forward within one boot)."""
    return reading.boot_id != state.last_boot_id or reading.boot_seconds < state.last_boot_seconds


def observe(state: TimeState, reading: ClockReading, *, max_skew: dt.timedelta) -> Observation:
    """Advance the trusted offline time by what really passed since the last observation."""
    wall = reading.wall
    if wall.tzinfo is None:
        raise ValueError("wall time must be timezone-aware")
    high = state.wall_high_water
    set_back = high - wall if high is not None and wall < high else dt.timedelta(0)
    boots = state.offline_boots

    if state.last_wall is None:
        passed = 0.0
    elif not is_reboot(state, reading):
        # Same boot: the boot clock is monotonic and counts suspend; the wall clock may have
        # been moved. Take the larger of the two (moving the clock forward only costs grace).
        boot_delta = max(0.0, reading.boot_seconds - state.last_boot_seconds)
        wall_delta = max(0.0, (wall - state.last_wall).total_seconds())
        passed = max(boot_delta, wall_delta)
    else:
        # A reboot (TM-3): this boot's uptime surely passed; so did the wall clock's forward
        # jump from the last time seen to the moment this boot started. A boot that, by the
        # wall clock, started before the high-water mark is a clock set back.
        uptime = max(0.0, reading.boot_seconds)
        booted_at = wall - dt.timedelta(seconds=uptime)
        reference = max(state.last_wall, high) if high is not None else state.last_wall
        passed = uptime + max(0.0, (booted_at - reference).total_seconds())
        if booted_at < reference:
            set_back = max(set_back, reference - booted_at)
        boots += 1
    tampered = set_back > max_skew

    new_state = replace(
        state,
        wall_high_water=max(high, wall) if high is not None else wall,
        offline_elapsed_seconds=state.offline_elapsed_seconds + passed,
        last_boot_id=reading.boot_id,
        last_boot_seconds=reading.boot_seconds,
        last_wall=wall,
        requires_online=state.requires_online or tampered,
        offline_boots=boots,
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
        offline_boots=0,
    )


def read_clocks() -> ClockReading:
    """The real clocks of this machine."""
    try:
        boot_id = _BOOT_ID_FILE.read_text(encoding="ascii").strip()
    except OSError:
        boot_id = ""
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return ClockReading(dt.datetime.now(dt.UTC), time.clock_gettime(clock), boot_id)
