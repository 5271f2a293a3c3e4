"""SQLite vs PostgreSQL behind the same gateway, measured in the same run.

For each backend, on the same synthetic site (``seed``): 1. load (resources/s through
``load_resources``), 2. a full pull of the site through ``_history`` next links over loopback
mutual TLS 1.3 (resources/s, the best of ``PULLS``), 3. ``DEVICES`` devices resuming from
their cursor at once after one change (p50/p95 latency, errors), 4. ``WRITERS`` threads each
pushing transaction Bundles (``BUNDLE`` creates with ifNoneExist, the laptop's push) for a site
of its own, at once (Bundles/s; on PostgreSQL writers of different sites do not wait for each
other). SQLite is the baseline: every PostgreSQL figure is printed with its ratio to SQLite's;
PostgreSQL's load and push also print their database round trips. PostgreSQL is a throwaway
local server (``tests.support.postgres``, durability off, as in the tests) on the same
machine, reached over TCP on 127.0.0.1.

Size: GATEHOUSE_BENCH_PG_PATIENTS (default 1,000 patients ≈ 20k resources).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.mtls_gateway import full_pull, loaded_gateway, resume_all
from sync.gateway import datadir
from sync.gateway.api.bundle_entries import Entry, parse_bundle
from sync.gateway.api.transaction import Scope, run_transaction
from sync.gateway.seed.generator import generate
from sync.gateway.store.loader import load_resources
from sync.gateway.store.postgres import PgStore
from sync.gateway.store.sql import SqlStore
from sync.gateway.store.sqlite import SqliteStore
from tests.support.gateway import create_entry, observation, patient
from tests.support.postgres import PgUnavailable, shared_server

DEVICES = 50
PULLS = 3  # full pulls per backend; the fastest counts
WRITERS = 8  # concurrent pushers, one site each
BUNDLE = 3  # creates per pushed Bundle
PUSHES = 40  # Bundles per writer


@dataclass
class Figures:
    load_rate: float
    pull_rate: float
    pulled: int
    p50_ms: float
    p95_ms: float
    errors: int
    trips_per_resource: float | None  # database round trips per loaded resource (PostgreSQL)


def _measure(
    label: str, make_store: Callable[[Path], SqlStore], items: list[dict[str, Any]]
) -> Figures:
    with (
        tempfile.TemporaryDirectory() as tmp,
        loaded_gateway(Path(tmp), make_store, items, devices=DEVICES) as gateway,
    ):
        load_rate = len(items) / gateway.load_s
        trips = gateway.load_round_trips
        # the best of PULLS full pulls: this machine is shared, one pull is noise-prone
        pull = min((full_pull(gateway, timeout=120) for _ in range(PULLS)), key=lambda p: p.seconds)
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
        None if trips is None else trips / len(items),
    )
    per = figures.trips_per_resource
    print(
        f"{label:>10}: load {figures.load_rate:,.0f} resources/s"
        + ("" if per is None else f" ({per:.3f} round trips per resource)")
        + f"; full pull {pulled} resources "
        f"at {figures.pull_rate:,.0f}/s; {DEVICES} concurrent incremental syncs p50 "
        f"{figures.p50_ms:.0f} ms, p95 {figures.p95_ms:.0f} ms, errors {figures.errors}",
        flush=True,
    )
    return figures


def _push_rate(store: SqlStore, label: str) -> tuple[float, float | None]:
    """Bundles/s of ``WRITERS`` threads pushing to a site each; round trips per Bundle."""
    sites = [f"bench-push-{n}" for n in range(WRITERS)]
    load_resources(store, [patient(f"push-p{n}", site) for n, site in enumerate(sites)])

    def bundle(n: int, step: int) -> list[Entry]:
        entries = []
        for k in range(BUNDLE):
            entry = create_entry(observation(f"x{k}", f"push-p{n}", float(step)))
            entry["resource"].pop("id")
            entries.append(entry)
        body = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        return parse_bundle(body)[1]

    def push(n: int) -> None:
        for step in range(PUSHES):
            run_transaction(store, bundle(n, step), Scope(sites[n], f"bench-push-{n}"))

    trips_before = getattr(store, "round_trips", None)
    threads = [threading.Thread(target=push, args=(n,)) for n in range(WRITERS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rate = WRITERS * PUSHES / (time.perf_counter() - started)
    trips = None
    if trips_before is not None:
        trips = (getattr(store, "round_trips", 0) - trips_before) / (WRITERS * PUSHES)
    print(
        f"{label:>10}: {WRITERS} writers at {WRITERS} sites pushing Bundles of {BUNDLE}: "
        f"{rate:,.0f} Bundles/s" + ("" if trips is None else f" ({trips:.1f} round trips each)"),
        flush=True,
    )
    return rate, trips


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
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_store = SqliteStore(Path(tmp) / datadir.DATABASE)
        base_push, _ = _push_rate(sqlite_store, "SQLite")
        sqlite_store.close()
    pg_store = PgStore(server.new_database("bench"), pool_size=WRITERS + 2)
    pg_push, _ = _push_rate(pg_store, "PostgreSQL")
    pg_store.close()
    print(
        "PostgreSQL / SQLite (same run): "
        f"load {pg.load_rate / base.load_rate:.2f}x, "
        f"full pull {pg.pull_rate / base.pull_rate:.2f}x, "
        f"incremental p50 {pg.p50_ms / base.p50_ms:.2f}x, p95 {pg.p95_ms / base.p95_ms:.2f}x, "
        f"concurrent pushes {pg_push / base_push:.2f}x"
    )


if __name__ == "__main__":
    main()
