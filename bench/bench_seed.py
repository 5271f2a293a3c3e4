"""Synthetic data generation, strict validation and bounded parsing, against same-run baselines.

Figures: resources/s for ``generate`` (target ≥ 20k/s), for ``validate_resource`` and for
``loads_bounded`` on 1,000-resource pages; each against plain ``orjson.loads`` of the same bytes
measured in the same run (the ceiling a pure decoder reaches on this machine).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import orjson

from sync.gateway.seed.generator import generate, summary
from sync.protocol.fhir.bounded_json import loads_bounded
from sync.protocol.fhir.validate import validate_resource

PATIENTS = 5_000
SITES = 10
PAGE = 1_000


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _each(fn: Callable[[Any], object], items: list[Any]) -> Callable[[], None]:
    """Call ``fn`` on every item, keeping no result alive (as a streaming consumer would)."""

    def run() -> None:
        for item in items:
            fn(item)

    return run


def main() -> None:
    # Streamed, as the gateway's seed command consumes it (nothing kept alive).
    gen_s = _timed(lambda: sum(1 for _ in generate(sites=SITES, patients=PATIENTS, seed=1)))
    resources = list(generate(sites=SITES, patients=PATIENTS, seed=1))
    n = len(resources)
    blobs = [orjson.dumps(r) for r in resources]
    # The fixtures above are ~10M live objects; freeze them so that the cyclic GC does not
    # re-scan them during every timed loop (it would dominate every figure equally).
    gc.collect()
    gc.freeze()
    decode_s = _timed(_each(orjson.loads, blobs))
    print(f"seed: {PATIENTS} patients, {SITES} sites -> {n} resources ({n / PATIENTS:.1f}/patient)")
    print(f"  {summary(resources)}")
    print(f"generate:        {n / gen_s:>10,.0f} resources/s")
    print(f"baseline decode: {n / decode_s:>10,.0f} resources/s (orjson.loads, same resources)")
    print(f"  ratio generate/decode time: {gen_s / decode_s:.2f}x")

    validate_s = _timed(_each(validate_resource, resources))
    print(f"validate:        {n / validate_s:>10,.0f} resources/s")
    print(f"  ratio validate/decode time: {validate_s / decode_s:.2f}x")

    pages = [
        orjson.dumps(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": r} for r in resources[i : i + PAGE]],
            }
        )
        for i in range(0, n, PAGE)
    ]
    size = sum(map(len, pages))
    plain_s = _timed(_each(orjson.loads, pages))
    bounded_s = _timed(_each(loads_bounded, pages))
    print(f"pages: {len(pages)} x {PAGE} resources, {size / len(pages) / 1e6:.2f} MB/page")
    print(f"orjson.loads:    {n / plain_s:>10,.0f} resources/s ({size / plain_s / 1e6:.0f} MB/s)")
    print(
        f"loads_bounded:   {n / bounded_s:>10,.0f} resources/s ({size / bounded_s / 1e6:.0f} MB/s)"
    )
    print(f"  ratio bounded/plain time: {bounded_s / plain_s:.2f}x")


if __name__ == "__main__":
    main()
