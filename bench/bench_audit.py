"""Audit chain benchmarks: verify rate and durable append rate, each against a same-run baseline.

- verify: ``sync.protocol.audit.chain.verify`` with the MAC key (entries/s; target >= 50k/s on one
  core)
  against plain SHA-256 of the same canonical bytes (the floor any hash chain pays); also
  hash-only verification and the full export path (parse a FHIR Bundle, rebuild, verify).
- append: ``AuditLog.append`` on a SQLCipher file (raw key, WAL, synchronous=FULL, one
  transaction per entry, secure_delete on) against plain ``sqlite3`` with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlcipher3

from client.core.audit_log import AuditLog
from sync.protocol.audit.audit_event import bundle_bytes, entries_from_bundle, export_bundle
from sync.protocol.audit.chain import ChainState, append, verify
from sync.protocol.audit.entry import AuditEntry

DEVICE = "laptop-bench"
K0 = os.urandom(32)
T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
VERIFY_N = 100_000
EXPORT_N = 20_000
APPEND_N = 300


def _fields(i: int) -> dict[str, Any]:
    return {
        "device_id": DEVICE,
        "action": "record_view" if i % 3 else "search",
        "outcome": "success",
        "user_id": f"clinician.{i % 7}",
        "role": "clinician",
        "patient_id": f"pat-{i % 5000}" if i % 3 else None,
        "purpose": "TREAT",
        "detail": {"results": i % 20} if i % 3 == 0 else {},
    }


def _chain(n: int) -> list[AuditEntry]:
    state = ChainState.genesis(DEVICE, K0)
    out = []
    for i in range(n):
        entry, state = append(state, _fields(i), T0 + timedelta(seconds=i))
        out.append(entry)
    return out


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_verify() -> None:
    entries = _chain(VERIFY_N)
    blobs = [e.canonical_bytes() for e in entries]
    start = time.perf_counter()
    for blob in blobs:
        hashlib.sha256(blob).digest()
    baseline = _rate(len(blobs), time.perf_counter() - start)

    start = time.perf_counter()
    report = verify(entries, device_id=DEVICE, initial_key=K0)
    full = _rate(len(entries), time.perf_counter() - start)
    assert report.ok, report.sentence

    start = time.perf_counter()
    verify(entries, device_id=DEVICE, initial_key=None)
    hash_only = _rate(len(entries), time.perf_counter() - start)

    data = bundle_bytes(export_bundle(entries[:EXPORT_N]))
    start = time.perf_counter()
    loaded = entries_from_bundle(json.loads(data))
    verify(loaded, device_id=DEVICE, initial_key=K0)
    export_path = _rate(EXPORT_N, time.perf_counter() - start)

    print(
        f"verify (hash chain + MAC): {full:,.0f} entries/s over {VERIFY_N:,} entries "
        f"(target >= 50,000/s: {'met' if full >= 50_000 else 'MISSED'})"
    )
    print(f"verify (hash chain only):  {hash_only:,.0f} entries/s")
    print(f"baseline plain SHA-256 of the same bytes: {baseline:,.0f} entries/s")
    print(f"ratio verify/baseline: {full / baseline:.3f}")
    print(
        f"export path (parse Bundle + rebuild + verify): {export_path:,.0f} entries/s "
        f"({len(data) / EXPORT_N:,.0f} bytes/entry)"
    )


def _tune(conn: Any) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA secure_delete = ON")


def _append_rate(conn: Any) -> float:
    log = AuditLog()
    conn.execute("BEGIN")
    log.initialise(conn, DEVICE, K0)
    conn.commit()
    start = time.perf_counter()
    for i in range(APPEND_N):
        conn.execute("BEGIN")
        fields = _fields(i)
        del fields["device_id"]
        log.append(conn, ts=T0 + timedelta(seconds=i), **fields)
        conn.commit()
    rate = _rate(APPEND_N, time.perf_counter() - start)
    conn.close()
    return rate


def bench_append() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        keyed = sqlcipher3.connect(str(Path(tmp) / "keyed.db"))
        keyed.execute(f"PRAGMA key = \"x'{os.urandom(32).hex()}'\"")
        _tune(keyed)
        keyed_rate = _append_rate(keyed)
        plain = sqlite3.connect(str(Path(tmp) / "plain.db"))
        _tune(plain)
        plain_rate = _append_rate(plain)
    print(f"append, SQLCipher, synchronous=FULL, 1 txn/entry: {keyed_rate:,.0f} entries/s")
    print(f"baseline plain sqlite3, same settings:           {plain_rate:,.0f} entries/s")
    print(f"ratio keyed/plain: {keyed_rate / plain_rate:.3f}")


def main() -> None:
    bench_verify()
    bench_append()


if __name__ == "__main__":
    main()
