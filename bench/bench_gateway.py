"""Gateway benchmarks over loopback mutual TLS 1.3.

1. Full pull: every resource of a site through ``_history`` next links, in resources/s, against
   a baseline measured in the same run: the same uvicorn + TLS stack serving the very same page
   bytes from memory (so the ratio is the cost of the store and the JSON assembly).
2. Incremental sync: ``DEVICES`` devices (separate TLS connections) each resume from their
   cursor after a small change, concurrently: p50/p95 latency, error count.

Size: GATEHOUSE_BENCH_PATIENTS (default 5,000 patients ≈ 100k resources).
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from policy.atomic import atomic_write
from sync.gateway import datadir, pki
from sync.gateway.seed.generator import generate
from sync.gateway.server import BackgroundGateway, build_app, build_ssl_context
from sync.gateway.store.loader import load_resources
from sync.gateway.store.sqlite import SqliteStore

PAGE = 500
DEVICES = 50


def _session(ca: Path, cert: Path, key: Path) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca)
    session.cert = (str(cert), str(key))
    return session


def _links(page: dict, relation: str) -> str | None:  # type: ignore[type-arg]
    return next((ln["url"] for ln in page["link"] if ln["relation"] == relation), None)


def main() -> None:
    patients = int(os.environ.get("GATEHOUSE_BENCH_PATIENTS", "5000"))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "gw"
        datadir.init_data_dir(data, now=dt.datetime.now(dt.UTC))
        ca_key = pki.load_key((data / datadir.CA_KEY).read_bytes())
        ca_cert = pki.load_cert((data / datadir.CA_CERT).read_bytes())
        items = list(generate(sites=1, patients=patients, seed=1))
        site = next(r["id"] for r in items if r["resourceType"] == "Organization")
        store = SqliteStore(data / datadir.DATABASE)
        started = time.perf_counter()
        load_resources(store, items)
        load_s = time.perf_counter() - started
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
        ca = data / datadir.CA_CERT
        context = build_ssl_context(data / datadir.SERVER_CERT, data / datadir.SERVER_KEY, ca)
        server = BackgroundGateway(build_app(store, ca_cert=ca_cert), context)
        server.start()
        print(f"loaded {len(items)} resources in {load_s:.1f}s ({len(items) / load_s:,.0f}/s)")

        # 1. full pull through the gateway
        pages: list[bytes] = []
        count = 0
        with _session(ca, *creds[0]) as session:
            started = time.perf_counter()
            url: str | None = f"{server.url}/fhir/_history?_count={PAGE}"
            resume = ""
            while url is not None:
                answer = session.get(url, timeout=60)
                pages.append(answer.content)
                page = answer.json()
                count += len(page["entry"])
                resume = _links(page, "x-resume") or resume
                url = _links(page, "next")
            gateway_s = time.perf_counter() - started
            del answer  # a live response keeps its keep-alive socket open
        total_bytes = sum(len(p) for p in pages)

        # baseline: same stack, same bytes, no store
        async def static(request: Request) -> Response:
            return Response(pages[int(request.path_params["i"])], media_type="application/json")

        baseline_app = Starlette(routes=[Route("/static/{i}", static)])
        baseline = BackgroundGateway(baseline_app, context)
        baseline.start()
        with _session(ca, *creds[0]) as session:
            started = time.perf_counter()
            for i in range(len(pages)):
                session.get(
                    f"{baseline.url}/static/{i}",
                    headers={"Connection": "close"} if i == len(pages) - 1 else None,
                    timeout=60,
                ).json()
            baseline_s = time.perf_counter() - started
        baseline.stop()
        rate, base_rate = count / gateway_s, count / baseline_s
        print(
            f"full pull: {count} resources, {total_bytes / 1e6:.1f} MB in {gateway_s:.2f}s = "
            f"{rate:,.0f} resources/s; baseline (same bytes from memory) {base_rate:,.0f}/s; "
            f"ratio {rate / base_rate:.2f}"
        )

        # 2. concurrent incremental syncs
        load_resources(store, items[1:2])  # one change for everyone to pull
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(DEVICES)

        def device(n: int) -> None:
            with _session(ca, *creds[n]) as session:
                barrier.wait()
                t0 = time.perf_counter()
                try:
                    answer = session.get(resume, headers={"Connection": "close"}, timeout=60)
                    ok = answer.status_code == 200 and len(answer.json()["entry"]) == 1
                except requests.RequestException as exc:
                    ok, answer = False, None
                    errors.append(type(exc).__name__)
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if not ok and answer is not None:
                        errors.append(str(answer.status_code))

        threads = [threading.Thread(target=device, args=(n,)) for n in range(DEVICES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        cuts = statistics.quantiles(latencies, n=20)
        print(
            f"{DEVICES} concurrent incremental syncs (new TLS connection each): "
            f"p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {cuts[18] * 1000:.0f} ms, "
            f"errors {len(errors)}"
        )
        server.stop()
        store.close()


if __name__ == "__main__":
    main()
