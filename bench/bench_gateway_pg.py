"""SQLite vs PostgreSQL behind the same gateway, measured in the same run.

For each backend, on the same synthetic site (``seed``): 1. load (resources/s through
``load_resources``), 2. a full pull of the site through ``_history`` next links over loopback
mutual TLS 1.3 (resources/s), 3. ``DEVICES`` devices resuming from their cursor at once after one
change (p50/p95 latency, errors). SQLite is the baseline: every PostgreSQL figure is printed with
its ratio to SQLite's. PostgreSQL is a throwaway local server (``tests.support.postgres``,
durability off, as in the tests) on the same machine, reached over TCP on 127.0.0.1.

Size: GATEHOUSE_BENCH_PG_PATIENTS (default 1,000 patients ≈ 20k resources).
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.mtls_gateway import full_pull, loaded_gateway, resume_all
from sync.gateway import datadir
from sync.gateway.seed.generator import generate
from sync.gateway.store.loader import load_resources
from sync.gateway.store.postgres import PgStore
from sync.gateway.store.sql import SqlStore
from sync.gateway.store.sqlite import SqliteStore
from tests.support.postgres import PgUnavailable, shared_server

DEVICES = 50


@dataclass
class Figures:
    load_rate: float
    pull_rate: float
    pulled: int
    p50_ms: float
    p95_ms: float
    errors: int


def _measure(
    label: str, make_store: Callable[[Path], SqlStore], items: list[dict[str, Any]]
) -> Figures:
    with (
        tempfile.TemporaryDirectory() as tmp,
        loaded_gateway(Path(tmp), make_store, items, devices=DEVICES) as gateway,
    ):
        load_rate = len(items) / gateway.load_s
        pull = full_pull(gateway, timeout=120)
        pulled, pull_rate = pull.count, pull.count / pull.seconds
        load_resources(gateway.store, items[1:2])  # one change for every device to pull
        latencies, errors = resume_all(gateway, pull.resume, timeout=120)
    cuts = statistics.quantiles(latencies, n=20)
    figures = Figures(
        load_rate,
        pull_rate,
        pulled,
        statistics.median(latencies) * 1000,
        cuts[18] * 1000,
        len(errors),
    )
    print(
        f"{label:>10}: load {figures.load_rate:,.0f} resources/s; full pull {pulled} resources "
        f"at {figures.pull_rate:,.0f}/s; {DEVICES} concurrent incremental syncs p50 "
        f"{figures.p50_ms:.0f} ms, p95 {figures.p95_ms:.0f} ms, errors {figures.errors}",
        flush=True,
    )
    return figures


def main() -> None:
    patients = int(os.environ.get("GATEHOUSE_BENCH_PG_PATIENTS", "1000"))
    try:
        server = shared_server()
    except PgUnavailable as err:
        print(f"skipped: {err.reason}")
        return
    items = list(generate(sites=1, patients=patients, seed=1))
    print(f"{len(items)} resources, {patients} patients, one site")
    base = _measure("SQLite", lambda data: SqliteStore(data / datadir.DATABASE), items)
    pg = _measure("PostgreSQL", lambda _data: PgStore(server.new_database("bench")), items)
    print(
        "PostgreSQL / SQLite (same run): "
        f"load {pg.load_rate / base.load_rate:.2f}x, "
        f"full pull {pg.pull_rate / base.pull_rate:.2f}x, "
        f"incremental p50 {pg.p50_ms / base.p50_ms:.2f}x, p95 {pg.p95_ms / base.p95_ms:.2f}x"
    )


if __name__ == "__main__":
    main()
