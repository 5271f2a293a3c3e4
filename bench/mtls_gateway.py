"""What the gateway benchmarks share: an in-process gateway on loopback mutual TLS 1.3 with
enrolled devices, a full pull of a site through ``_history`` next links, and every device
resuming from its cursor at once (separate TLS connections).

Not a benchmark itself (``python -m bench`` runs only the ``bench_*`` modules).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from policy.atomic import atomic_write
from sync.gateway import datadir, pki
from sync.gateway.server import BackgroundGateway, build_app, build_ssl_context
from sync.gateway.store.loader import load_resources
from sync.gateway.store.sql import SqlStore

PAGE = 500


@dataclass
class LoadedGateway:
    url: str
    ca: Path
    creds: list[tuple[Path, Path]]  # (certificate, key) of each enrolled device
    context: ssl.SSLContext
    store: SqlStore
    load_s: float  # how long ``load_resources`` took for the items
    load_round_trips: int | None = None  # to the database during the load, where counted


@dataclass
class Pull:
    count: int
    resume: str  # the last ``x-resume`` link
    pages: list[bytes]
    seconds: float


def session(ca: Path, cert: Path, key: Path) -> requests.Session:
    answer = requests.Session()
    answer.trust_env = False
    answer.verify = str(ca)
    answer.cert = (str(cert), str(key))
    return answer


def link(page: dict[str, Any], relation: str) -> str | None:
    return next((ln["url"] for ln in page["link"] if ln["relation"] == relation), None)


@contextlib.contextmanager
def loaded_gateway(
    tmp: Path,
    make_store: Callable[[Path], SqlStore],
    items: list[dict[str, Any]],
    *,
    devices: int,
) -> Iterator[LoadedGateway]:
    """A gateway whose store (``make_store(data folder)``) holds ``items``, with ``devices``
    devices of the items' site enrolled and their certificates written to ``tmp``."""
    site = next(r["id"] for r in items if r["resourceType"] == "Organization")
    data = tmp / "gw"
    datadir.init_data_dir(data, now=dt.datetime.now(dt.UTC))
    ca_key = pki.load_key((data / datadir.CA_KEY).read_bytes())
    ca_cert = pki.load_cert((data / datadir.CA_CERT).read_bytes())
    ca = data / datadir.CA_CERT
    store = make_store(data)
    trips_before = getattr(store, "round_trips", None)
    started = time.perf_counter()
    load_resources(store, items)
    load_s = time.perf_counter() - started
    trips = None if trips_before is None else getattr(store, "round_trips", 0) - trips_before
    creds = []
    for n in range(devices):
        key = pki.generate_key()
        cert = pki.sign_device_csr(
            ca_key,
            ca_cert,
            pki.make_csr(key),
            device_id=f"bench-{n}",
            site=site,
            now=dt.datetime.now(dt.UTC),
        )
        atomic_write(tmp / f"d{n}.pem", pki.cert_to_pem(cert))
        atomic_write(tmp / f"d{n}.key", pki.key_to_pem(key))
        store.set_device(f"bench-{n}", site, "active")
        creds.append((tmp / f"d{n}.pem", tmp / f"d{n}.key"))
    context = build_ssl_context(data / datadir.SERVER_CERT, data / datadir.SERVER_KEY, ca)
    # As many capacity slots as devices: these figures compare the stores, not the gate
    # (bench_scale measures the gate).
    server = BackgroundGateway(build_app(store, ca_cert=ca_cert, slots=len(creds)), context)
    server.start()
    try:
        yield LoadedGateway(server.url, ca, creds, context, store, load_s, trips)
    finally:
        server.stop()
        store.close()


def full_pull(gateway: LoadedGateway, *, timeout: float) -> Pull:
    """Every resource through ``_history`` next links, as the first device."""
    pages: list[bytes] = []
    count, resume = 0, ""
    with session(gateway.ca, *gateway.creds[0]) as client:
        started = time.perf_counter()
        url: str | None = f"{gateway.url}/fhir/_history?_count={PAGE}"
        while url is not None:
            answer = client.get(url, timeout=timeout)
            pages.append(answer.content)
            page = answer.json()
            count += len(page["entry"])
            resume = link(page, "x-resume") or resume
            url = link(page, "next")
        seconds = time.perf_counter() - started
        del answer  # a live response keeps its keep-alive socket open
    return Pull(count, resume, pages, seconds)


def resume_all(
    gateway: LoadedGateway, resume: str, *, timeout: float
) -> tuple[list[float], list[str]]:
    """Every device GETs ``resume`` at once, each on a new TLS connection, expecting exactly one
    entry: the latency of each, and an error (status code or exception name) per failure."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(gateway.creds))

    def device(n: int) -> None:
        with session(gateway.ca, *gateway.creds[n]) as client:
            barrier.wait()
            t0 = time.perf_counter()
            try:
                answer = client.get(resume, headers={"Connection": "close"}, timeout=timeout)
                ok = answer.status_code == 200 and len(answer.json()["entry"]) == 1
                problem = "" if ok else str(answer.status_code)
            except requests.RequestException as exc:
                problem = type(exc).__name__
            with lock:
                latencies.append(time.perf_counter() - t0)
                if problem:
                    errors.append(problem)

    threads = [threading.Thread(target=device, args=(n,)) for n in range(len(gateway.creds))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors
