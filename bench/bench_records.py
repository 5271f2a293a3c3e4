"""Records store: bulk insert, patient search and chart open on SQLCipher vs an unkeyed baseline.

Figures, all measured in the same run on the same data (``sync.gateway.seed.generator.generate``):
- bulk insert of 100k resources through ``apply_resources`` in batches of 5,000 per
  transaction (WAL, synchronous=FULL, temp_store=MEMORY, secure_delete on everywhere) into:
  stdlib ``sqlite3`` unkeyed (its SQLite 3.40 lacks FTS5 ``secure-delete``, so that one line of
  the schema is left out); the sqlcipher3 engine unkeyed; keyed without and with
  ``cipher_memory_security`` (the vault's configuration); and unkeyed once memory security is
  on (it is sticky and process-wide, hence that order). Ratios = keyed throughput / baseline
  throughput (target >= 0.55);
- patient search p50/p95 at 500k resources: name prefix, two-word name, NHS number (full and
  6-digit prefix), prison number, date of birth (target p95 < 5 ms), keyed (the vault's
  configuration) and unkeyed (memory security is on by then for it too);
- chart open p95 (``open_chart``), keyed and unkeyed.

``--quick`` or ``GATEHOUSE_BENCH_SCALE=0.1`` shrink every size.
"""

from __future__ import annotations

import gc
import os
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import sqlcipher3

from client.core.chart import open_chart
from client.core.records import apply_resources
from client.core.schema import MIGRATIONS
from client.core.search import search_patients
from client.core.vault import transaction
from sync.gateway.seed.generator import generate

BATCH = 5_000
RESOURCES_PER_PATIENT = 20  # the seed's average
QUERIES = 300
SCOPE = ["hmp-brixton", "hmp-styal"]
TODAY = date(2026, 1, 1)


def _scale() -> float:
    if "--quick" in sys.argv:
        return 0.05
    return float(os.environ.get("GATEHOUSE_BENCH_SCALE", "1"))


def _pragmas(conn: Any) -> None:
    for pragma in (
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = FULL",
        "PRAGMA temp_store = MEMORY",
        "PRAGMA secure_delete = ON",
        "PRAGMA foreign_keys = ON",
    ):
        conn.execute(pragma)


def open_keyed(path: Path, memory_security: bool = True) -> Any:
    """The vault's configuration. Memory security, once on, stays on for the whole process."""
    conn = sqlcipher3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA key = \"x'" + secrets.token_hex(32) + "'\"")
    if memory_security:
        conn.execute("PRAGMA cipher_memory_security = ON")
    _pragmas(conn)
    for script in MIGRATIONS:
        conn.executescript(script)
    return conn


def open_unkeyed_same_engine(path: Path) -> Any:
    conn = sqlcipher3.connect(str(path), isolation_level=None)
    _pragmas(conn)
    for script in MIGRATIONS:
        conn.executescript(script)
    return conn


SECURE_DELETE = "INSERT INTO patient_fts (patient_fts, rank) VALUES ('secure-delete', 1);"


def open_stdlib(path: Path) -> sqlite3.Connection:
    """Stdlib sqlite3; before SQLite 3.42 without FTS5 secure-delete (otherwise the same schema)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    _pragmas(conn)
    old = sqlite3.sqlite_version_info < (3, 42, 0)
    for script in MIGRATIONS:
        conn.executescript(script.replace(SECURE_DELETE, "") if old else script)
    return conn


def open_keyed_without_memory_security(path: Path) -> Any:
    return open_keyed(path, memory_security=False)


# Order matters: cipher_memory_security is sticky and process-wide, so every configuration
# without it runs before the first one that turns it on.
CONFIGS: tuple[tuple[str, str, Callable[[Path], Any]], ...] = (
    ("stdlib", f"stdlib sqlite3 {sqlite3.sqlite_version}, unkeyed", open_stdlib),
    ("plain", "sqlcipher3 unkeyed (same engine)", open_unkeyed_same_engine),
    ("keyed_nomem", "sqlcipher3 keyed, memory security off", open_keyed_without_memory_security),
    ("keyed", "sqlcipher3 keyed, memory security on (vault)", open_keyed),
    ("plain_mem", "sqlcipher3 unkeyed, memory security on", open_unkeyed_same_engine),
)
ROUNDS = 2


def bulk_insert(conn: Any, resources: Sequence[dict[str, Any]]) -> float:
    started = time.perf_counter()
    for i in range(0, len(resources), BATCH):
        with transaction(conn):
            apply_resources(conn, resources[i : i + BATCH])
    return time.perf_counter() - started


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return statistics.median(ordered), p95


def timed(fn: Callable[[Any], Any], conn: Any, args: Sequence[Any]) -> list[float]:
    out = []
    for arg in args:
        started = time.perf_counter()
        fn(conn, arg)
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    scale = _scale()
    insert_n = max(BATCH, int(100_000 * scale))
    total_n = max(insert_n, int(500_000 * scale))
    patients_n = total_n // RESOURCES_PER_PATIENT + 1
    started = time.perf_counter()
    data = [
        r
        for r in generate(sites=12, patients=patients_n, seed=7)
        if r["resourceType"] != "Organization"
    ]
    data = data[:total_n]
    took = time.perf_counter() - started
    print(f"generated {len(data)} resources ({patients_n} patients) in {took:.1f} s")
    patients = [r for r in data if r["resourceType"] == "Patient"]
    rng = random.Random(11)
    gc.freeze()  # half a million generated dicts would otherwise dominate every GC pass
    identified = [p for p in patients if len(p.get("identifier", [])) >= 2 and p.get("name")]
    sample = rng.sample(identified, min(QUERIES, len(identified)))

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        head = data[:insert_n]
        best: dict[str, float] = {}
        opened: dict[str, Any] = {}
        for kind, _label, opener in CONFIGS:
            for round_ in range(ROUNDS):  # best of ROUNDS: the machine is shared
                if kind in opened:
                    opened[kind].close()
                opened[kind] = opener(root / f"{kind}{round_}.db")
                took = bulk_insert(opened[kind], head)
                best[kind] = min(best.get(kind, took), took)
        print(f"bulk insert {insert_n} resources, batches of {BATCH}, best of {ROUNDS}:")
        for kind, label, _opener in CONFIGS:
            rate = insert_n / best[kind]
            print(f"  {label:46} {rate:8.0f} resources/s ({best[kind]:.2f} s)")
        for what, num, den in (
            ("encryption alone: keyed / unkeyed, same engine", "keyed_nomem", "plain"),
            ("vault config: keyed + memory security / unkeyed", "keyed", "plain"),
            ("both with memory security: keyed / unkeyed", "keyed", "plain_mem"),
            ("vault config / stdlib sqlite3", "keyed", "stdlib"),
        ):
            ratio = best[den] / best[num]
            verdict = "meets" if ratio >= 0.55 else "below"
            print(f"  ratio {what:50} {ratio:.2f} ({verdict} 0.55)")
        for kind in ("stdlib", "keyed_nomem", "plain_mem"):
            opened.pop(kind).close()
        keyed, plain = opened["keyed"], opened["plain"]

        rest = data[insert_n:]
        for conn in (keyed, plain):
            bulk_insert(conn, rest)
        print(f"search at {len(data)} resources ({len(patients)} patients), {len(sample)} queries:")

        def name_of(p: dict[str, Any]) -> dict[str, Any]:
            return next(n for n in p["name"] if n.get("use") == "official") if p.get("name") else {}

        def ident(p: dict[str, Any], suffix: str) -> str:
            return next(i["value"] for i in p["identifier"] if i["system"].endswith(suffix))

        queries = {
            "name prefix (3 letters)": [name_of(p)["family"][:3] for p in sample],
            "given + family prefix": [
                f"{name_of(p)['given'][0]} {name_of(p)['family'][:2]}" for p in sample
            ],
            "NHS number (full)": [ident(p, "nhs-number") for p in sample],
            "NHS prefix (6 digits)": [ident(p, "nhs-number")[:6] for p in sample],
            "prison number": [ident(p, "prison-number").lower() for p in sample],
            "date of birth": [p["birthDate"] for p in sample],
        }

        def search(conn: Any, q: str) -> Any:
            return search_patients(conn, q, site_scope=SCOPE)

        worst = 0.0
        for label, qs in queries.items():
            k50, k95 = percentiles(timed(search, keyed, qs))
            u50, u95 = percentiles(timed(search, plain, qs))
            worst = max(worst, k95)
            print(f"  {label:24} keyed p50 {k50:5.2f} ms p95 {k95:5.2f} ms", end="")
            print(f" | unkeyed p50 {u50:5.2f} p95 {u95:5.2f} | ratio p95 {u95 / k95:.2f}")
        print(
            f"  worst keyed p95 {worst:.2f} ms ({'meets' if worst < 5 else 'MISSES'} target < 5 ms)"
        )

        def chart(conn: Any, pid: str) -> Any:
            return open_chart(conn, pid, today=TODAY)

        ids = [p["id"] for p in sample]
        k50, k95 = percentiles(timed(chart, keyed, ids))
        u50, u95 = percentiles(timed(chart, plain, ids))
        print(f"chart open: keyed p50 {k50:.2f} ms p95 {k95:.2f} ms", end="")
        print(f" | unkeyed p50 {u50:.2f} p95 {u95:.2f} | ratio p95 {u95 / k95:.2f}")
        keyed.close()
        plain.close()


if __name__ == "__main__":
    main()
