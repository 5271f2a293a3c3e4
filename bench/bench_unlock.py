"""Unlock time at the calibrated Argon2id parameters (target 0.3-1.0 s, ST-4).

Baseline, measured in the same run: one raw Argon2id derivation at the OWASP floor
(m=64 MiB, t=3, p=4). The unlock figure is the whole ``VaultHeader.unlock`` (counted attempt and
uncount, two atomic header writes with fsync, Argon2id, HKDF, AES-GCM) plus opening the SQLCipher
vault with the unwrapped key.
"""

from __future__ import annotations

import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from client.core.device_keyring import DeviceKeyring, InMemoryKeyring
from client.core.kdf import FLOOR, calibrate, measure
from client.core.vault import Vault, database_path
from client.core.vault_header import VaultHeader

ROUNDS = 3
PASSWORD = "correct horse battery staple"


def main() -> None:
    baseline = statistics.median(measure(FLOOR) for _ in range(ROUNDS))
    started = time.perf_counter()
    params = calibrate(target_seconds=0.5, cap_seconds=1.0)
    calibration_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        keyring = DeviceKeyring("bench-device", backend=InMemoryKeyring())
        keyring.provision()
        dek = secrets.token_bytes(32)
        header = VaultHeader.create(data_dir, keyring, dek)
        header.add_slot("alice", "clinician", PASSWORD, dek, params)
        Vault.open(database_path(data_dir), dek, ("CREATE TABLE t (x)",)).close()
        timings = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            loaded = VaultHeader.load(data_dir, keyring)
            key = loaded.unlock("alice", PASSWORD, now=datetime.now(UTC))
            Vault.open(database_path(data_dir), key, ("CREATE TABLE t (x)",)).close()
            timings.append(time.perf_counter() - start)
    unlock = statistics.median(timings)
    print(
        f"calibrated params: m={params.memory_kib} KiB t={params.iterations} "
        f"p={params.parallelism} (calibration took {calibration_seconds:.2f} s)"
    )
    print(f"baseline raw Argon2id at floor (m=65536 t=3 p=4): {baseline * 1000:.0f} ms")
    print(f"unlock at calibrated params (median of {ROUNDS}): {unlock * 1000:.0f} ms")
    print(f"ratio unlock / floor baseline: {unlock / baseline:.2f}x")
    verdict = "within" if 0.3 <= unlock <= 1.0 else "OUTSIDE"
    print(f"target 0.3-1.0 s: {verdict}")


if __name__ == "__main__":
    main()
