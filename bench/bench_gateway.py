"""Gateway benchmarks over loopback mutual TLS 1.3.

1. Full pull: every resource of a site through ``_history`` next links, in resources/s, against
   a baseline measured in the same run: the same uvicorn + TLS stack serving the very same page
   bytes from memory (so the ratio is the cost of the store and the JSON assembly).
2. Incremental sync: ``DEVICES`` devices (separate TLS connections) each resume from their
   cursor after a small change, concurrently: p50/p95 latency, error count.

Size: GATEHOUSE_BENCH_PATIENTS (default 5,000 patients ≈ 100k resources).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.mtls_gateway import full_pull, loaded_gateway, resume_all, session
from sync.gateway import datadir
from sync.gateway.seed.generator import generate
from sync.gateway.server import BackgroundGateway
from sync.gateway.store.loader import load_resources
from sync.gateway.store.sqlite import SqliteStore

DEVICES = 50


def main() -> None:
    patients = int(os.environ.get("GATEHOUSE_BENCH_PATIENTS", "5000"))
    items = list(generate(sites=1, patients=patients, seed=1))
    with (
        tempfile.TemporaryDirectory() as tmp,
        loaded_gateway(
            Path(tmp), lambda data: SqliteStore(data / datadir.DATABASE), items, devices=DEVICES
        ) as gateway,
    ):
        load_s = gateway.load_s
        print(f"loaded {len(items)} resources in {load_s:.1f}s ({len(items) / load_s:,.0f}/s)")

        # 1. full pull through the gateway
        pull = full_pull(gateway, timeout=60)
        pages, count = pull.pages, pull.count
        total_bytes = sum(len(p) for p in pages)

        # baseline: same stack, same bytes, no store
        async def static(request: Request) -> Response:
            return Response(pages[int(request.path_params["i"])], media_type="application/json")

        baseline_app = Starlette(routes=[Route("/static/{i}", static)])
        baseline = BackgroundGateway(baseline_app, gateway.context)
        baseline.start()
        with session(gateway.ca, *gateway.creds[0]) as client:
            started = time.perf_counter()
            for i in range(len(pages)):
                client.get(
                    f"{baseline.url}/static/{i}",
                    headers={"Connection": "close"} if i == len(pages) - 1 else None,
                    timeout=60,
                ).json()
            baseline_s = time.perf_counter() - started
        baseline.stop()
        rate, base_rate = count / pull.seconds, count / baseline_s
        print(
            f"full pull: {count} resources, {total_bytes / 1e6:.1f} MB in {pull.seconds:.2f}s = "
            f"{rate:,.0f} resources/s; baseline (same bytes from memory) {base_rate:,.0f}/s; "
            f"ratio {rate / base_rate:.2f}"
        )

        # 2. concurrent incremental syncs
        load_resources(gateway.store, items[1:2])  # one change for everyone to pull
        latencies, errors = resume_all(gateway, pull.resume, timeout=60)
        cuts = statistics.quantiles(latencies, n=20)
        print(
            f"{DEVICES} concurrent incremental syncs (new TLS connection each): "
            f"p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {cuts[18] * 1000:.0f} ms, "
            f"errors {len(errors)}"
        )


if __name__ == "__main__":
    main()
