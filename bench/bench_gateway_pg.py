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

import datetime as dt
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from policy.atomic import atomic_write
from sync.gateway import datadir, pki
from sync.gateway.seed.generator import generate
from sync.gateway.server import BackgroundGateway, build_app, build_ssl_context
from sync.gateway.store.loader import load_resources
from sync.gateway.store.postgres import PgStore
from sync.gateway.store.sqlite import SqliteStore
from tests.support.postgres import PgUnavailable, shared_server

PAGE = 500
DEVICES = 50


@dataclass
class Figures:
    load_rate: float
    pull_rate: float
    pulled: int
    p50_ms: float
    p95_ms: float
    errors: int


def _session(ca: Path, cert: Path, key: Path) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca)
    session.cert = (str(cert), str(key))
    return session


def _link(page: dict[str, Any], relation: str) -> str | None:
    return next((ln["url"] for ln in page["link"] if ln["relation"] == relation), None)


def _measure(
    label: str, make_store: Callable[[Path], SqliteStore], items: list[dict[str, Any]]
) -> Figures:
    site = next(r["id"] for r in items if r["resourceType"] == "Organization")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "gw"
        datadir.init_data_dir(data, now=dt.datetime.now(dt.UTC))
        ca_key = pki.load_key((data / datadir.CA_KEY).read_bytes())
        ca_cert = pki.load_cert((data / datadir.CA_CERT).read_bytes())
        ca = data / datadir.CA_CERT
        store = make_store(data)
        started = time.perf_counter()
        load_resources(store, items)
        load_rate = len(items) / (time.perf_counter() - started)
        creds = []
        for n in range(DEVICES):
            key = pki.generate_key()
            cert = pki.sign_device_csr(
                ca_key,
                ca_cert,
                pki.make_csr(key),
                device_id=f"bench-{n}",
                site=site,
                now=dt.datetime.now(dt.UTC),
            )
            atomic_write(Path(tmp) / f"d{n}.pem", pki.cert_to_pem(cert))
            atomic_write(Path(tmp) / f"d{n}.key", pki.key_to_pem(key))
            store.set_device(f"bench-{n}", site, "active")
            creds.append((Path(tmp) / f"d{n}.pem", Path(tmp) / f"d{n}.key"))
        context = build_ssl_context(data / datadir.SERVER_CERT, data / datadir.SERVER_KEY, ca)
        server = BackgroundGateway(build_app(store, ca_cert=ca_cert), context)
        server.start()

        pulled, resume = 0, ""
        with _session(ca, *creds[0]) as session:
            started = time.perf_counter()
            url: str | None = f"{server.url}/fhir/_history?_count={PAGE}"
            while url is not None:
                page = session.get(url, timeout=120).json()
                pulled += len(page["entry"])
                resume = _link(page, "x-resume") or resume
                url = _link(page, "next")
            pull_rate = pulled / (time.perf_counter() - started)

        load_resources(store, items[1:2])  # one change for every device to pull
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(DEVICES)

        def device(n: int) -> None:
            with _session(ca, *creds[n]) as session:
                barrier.wait()
                t0 = time.perf_counter()
                try:
                    answer = session.get(resume, headers={"Connection": "close"}, timeout=120)
                    ok = answer.status_code == 200 and len(answer.json()["entry"]) == 1
                    problem = "" if ok else str(answer.status_code)
                except requests.RequestException as exc:
                    problem = type(exc).__name__
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if problem:
                        errors.append(problem)

        threads = [threading.Thread(target=device, args=(n,)) for n in range(DEVICES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        server.stop()
        store.close()
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
