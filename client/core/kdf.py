"""Password stretching for key slots: Argon2id at or above the OWASP floor (ST-4).

Invariants:
- Every derivation uses Argon2id with memory >= 65536 KiB, iterations >= 3 and parallelism >= 4
  (``FLOOR``). Parameters below the floor are refused with ``KdfParamsRejected`` before any work
  is done, whether they come from a caller, from calibration or from a header file on disk.
- Parameters are also bounded above (``MAX_*``) so a crafted header cannot make an unlock
  allocate gigabytes or run for minutes.
- ``calibrate`` never returns parameters below the floor, and never parameters whose measured
  time exceeds ``cap_seconds`` unless the floor itself already does (the floor wins: we never go
  weaker to be faster).
- Salts are at least 16 bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw

from client.core.errors import UserFacingError

FLOOR_MEMORY_KIB = 65536  # OWASP Password Storage Cheat Sheet: m=64 MiB ...
FLOOR_ITERATIONS = 3  # ... t=3 ...
FLOOR_PARALLELISM = 4  # ... p=4 (and above all of the weaker OWASP variants)
MAX_MEMORY_KIB = 2 * 1024 * 1024  # 2 GiB: a laptop must still be able to unlock
MAX_ITERATIONS = 200  # far above any calibration on real hardware
MAX_PARALLELISM = 16
MIN_SALT_BYTES = 16
KEY_BYTES = 32


class KdfParamsRejected(UserFacingError):
    """Argon2id parameters outside the allowed range (below the floor, or absurdly large)."""

    def __init__(self, reason: str = "kdf_below_floor") -> None:
        super().__init__(
            reason,
            "This device's password protection settings are not allowed. "
            "Ask IT to re-provision the device.",
        )


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters: memory in KiB, iterations (t) and lanes (p)."""

    memory_kib: int
    iterations: int
    parallelism: int

    def validate(self) -> KdfParams:
        """Return ``self`` if within [floor, max]; raise ``KdfParamsRejected`` otherwise."""
        for value in (self.memory_kib, self.iterations, self.parallelism):
            if type(value) is not int:
                raise KdfParamsRejected("kdf_params_invalid")
        if (
            self.memory_kib < FLOOR_MEMORY_KIB
            or self.iterations < FLOOR_ITERATIONS
            or self.parallelism < FLOOR_PARALLELISM
        ):
            raise KdfParamsRejected("kdf_below_floor")
        if (
            self.memory_kib > MAX_MEMORY_KIB
            or self.iterations > MAX_ITERATIONS
            or self.parallelism > MAX_PARALLELISM
        ):
            raise KdfParamsRejected("kdf_params_invalid")
        return self

    def to_json(self) -> dict[str, int]:
        return {"m": self.memory_kib, "t": self.iterations, "p": self.parallelism}

    @classmethod
    def from_json(cls, data: object) -> KdfParams:
        """Parse ``{"m", "t", "p"}`` and enforce the floor (a header is untrusted input)."""
        if not isinstance(data, dict) or set(data) != {"m", "t", "p"}:
            raise KdfParamsRejected("kdf_params_invalid")
        return cls(data["m"], data["t"], data["p"]).validate()


FLOOR = KdfParams(FLOOR_MEMORY_KIB, FLOOR_ITERATIONS, FLOOR_PARALLELISM)


def derive(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    """Argon2id(password, salt, params) -> 32 bytes. Refuses weak params and short salts."""
    params.validate()
    if len(salt) < MIN_SALT_BYTES:
        raise KdfParamsRejected("kdf_params_invalid")
    return hash_secret_raw(
        secret=password,
        salt=salt,
        time_cost=params.iterations,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=KEY_BYTES,
        type=Type.ID,
    )


def measure(params: KdfParams) -> float:
    """Seconds one derivation with ``params`` takes on this machine (wall clock)."""
    start = time.perf_counter()
    derive(b"gatehouse-calibration", b"\x00" * MIN_SALT_BYTES, params)
    return time.perf_counter() - start


def calibrate(
    target_seconds: float = 0.5,
    cap_seconds: float = 1.0,
    *,
    timer: Callable[[KdfParams], float] = measure,
) -> KdfParams:
    """Strongest params near ``target_seconds`` on this machine, never over ``cap_seconds``.

    Starts at the floor and raises the iteration count (time is linear in t at fixed memory).
    Each candidate is measured; one that exceeds the cap is stepped back. The floor is returned
    as it is when it alone reaches the target (it is never weakened). ``timer`` is injectable so
    tests can model a machine; production uses the real measurement.
    """
    if not 0 < target_seconds <= cap_seconds:
        raise ValueError("need 0 < target_seconds <= cap_seconds")
    best = FLOOR
    elapsed = timer(FLOOR)
    if elapsed >= target_seconds:
        return FLOOR
    per_iteration = elapsed / FLOOR.iterations
    for _ in range(8):  # bounded: a few measurements at most
        wanted = int(target_seconds / max(per_iteration, 1e-6))
        wanted = max(best.iterations + 1, min(wanted, MAX_ITERATIONS))
        candidate = KdfParams(FLOOR.memory_kib, wanted, FLOOR.parallelism)
        took = timer(candidate)
        if took > cap_seconds:
            per_iteration = took / candidate.iterations
            if int(cap_seconds / per_iteration) <= best.iterations:
                break
            continue
        best = candidate
        per_iteration = took / candidate.iterations
        if took >= target_seconds or wanted >= MAX_ITERATIONS:
            break
    return best
