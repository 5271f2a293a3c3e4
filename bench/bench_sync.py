"""Sync benchmarks, end to end: the real gateway (``gatehouse-gateway serve`` in its own
process, SQLite store, uvicorn, mutual TLS 1.3 on 127.0.0.1), the real engine and transport,
``VaultReplica`` on a SQLCipher vault.

Figures, every ratio against a baseline measured in the same run on the same data:
1. Initial sync of ~100k resources (one site, pages of 500): resources/s, against the CEILING:
   the very same history pages downloaded over the same pinned transport and parsed (orjson,
   with the garbage collector off, so the growing pile of parsed pages costs it nothing), plus
   a plain bulk insert of those resources into a vault with the same configuration (one
   ``executemany`` and one commit per page, like the engine's page transactions, no
   validation, no dedupe, no search index, no audit). Target: ratio <= 1.5. The server is
   warmed by one unmeasured download first, and each measurement starts from a collected heap.
2. A no-change incremental sync: requests made, milliseconds.
3. Pushing 1,000 consultations (3 resources each): seconds, consultations/s, requests.
4. Bytes on the wire per resource with gzip, and the uncompressed JSON bytes per resource.

``GATEHOUSE_BENCH_SCALE`` (default 1) or ``--quick`` (0.05) shrink every size.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from bench.served_gateway import served_gateway
from client.core.records import patient_of
from client.core.vault import transaction
from sync.device.transport import Transport, TransportConfig
from tests.support.gateway import start_gateway, stop_gateway
from tests.support.sync import (
    DEVICE_ID,
    SITE,
    TYPES,
    DeviceVault,
    seed_resources,
    sync_once,
    transport_config,
    write_consultations,
)

PAGE = 500
PATIENTS_AT_SCALE_1 = 5_000  # about 100k resources with the seed's ~20 per patient
CONSULTATIONS_AT_SCALE_1 = 1_000


def _scale() -> float:
    if "--quick" in sys.argv:
        return 0.05
    return float(os.environ.get("GATEHOUSE_BENCH_SCALE", "") or 1)


def _download(transport: Transport) -> tuple[list[list[dict[str, Any]]], int, list[bytes]]:
    """Every history page of every type, parsed; returns (pages of resources, JSON bytes,
    the page bodies, to measure what a gzip-enabled gateway would send)."""
    pages: list[list[dict[str, Any]]] = []
    raw_bytes = 0
    bodies: list[bytes] = []
    for rtype in TYPES:
        url: str | None = f"fhir/{rtype}/_history?" + urlencode({"_count": PAGE})
        while url:
            response = transport.get(url, headers={"Accept": "application/fhir+json"})
            raw_bytes += len(response.body)
            bodies.append(response.body)
            bundle = orjson.loads(response.body)
            pages.append([e["resource"] for e in bundle.get("entry", []) if "resource" in e])
            url = next(
                (link["url"] for link in bundle.get("link", []) if link["relation"] == "next"),
                None,
            )
    return pages, raw_bytes, bodies


def _bulk_insert(device: DeviceVault, pages: list[list[dict[str, Any]]]) -> None:
    with device.open() as vault:
        conn = vault.connection
        for page in pages:
            rows = [
                (
                    r["resourceType"],
                    r["id"],
                    r["meta"]["versionId"],
                    r["meta"]["lastUpdated"],
                    patient_of(r),
                    orjson.dumps(r),
                )
                for r in page
            ]
            with transaction(conn):
                conn.executemany(
                    "INSERT INTO resources (type, id, version_id, last_updated, patient_id, json)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )


@contextlib.contextmanager
def _gateway(tmp: Path, patients: int) -> Iterator[TransportConfig]:
    """The gateway in its own process (production's topology: a laptop shares no interpreter
    with the server), or in this one with ``GATEHOUSE_BENCH_GATEWAY=inprocess`` (then the
    device and the server share one GIL, and the figures are for that)."""
    started = time.perf_counter()
    if os.environ.get("GATEHOUSE_BENCH_GATEWAY", "process") == "inprocess":
        gw = start_gateway(tmp / "gw")
        try:
            gw.load(*seed_resources(patients, seed=7, sites=1))
            gw.store.set_device(DEVICE_ID, SITE, "active")
            print(f"gateway (in this process) loaded {patients} patients", end="")
            print(f" in {time.perf_counter() - started:.1f} s")
            yield transport_config(gw.url, gw.pki.server_pin, gw.pki.device(DEVICE_ID, SITE))
        finally:
            stop_gateway(gw)
        return
    # Handed over, not kept: millions of live objects would slow every garbage collection.
    with served_gateway(
        tmp, seed_resources(patients, seed=7, sites=1), device_id=DEVICE_ID, site=SITE
    ) as served:
        print(f"gateway (own process) loaded {patients} patients", end="")
        print(f" in {time.perf_counter() - started:.1f} s")
        yield transport_config(
            served.url, served.server_pin, (served.device_cert, served.device_key)
        )


def main() -> None:
    scale = _scale()
    patients = max(10, int(PATIENTS_AT_SCALE_1 * scale))
    consultations = max(10, int(CONSULTATIONS_AT_SCALE_1 * scale))
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp_dir:
        tmp = Path(tmp_dir)
        with _gateway(tmp, patients) as config:
            with Transport(config) as transport:  # warm the server's caches, unmeasured
                _download(transport)
            # The same download with the collector left on, as any program holding every page
            # at once would run it: reported as a second, looser ceiling.
            gc.collect()
            started = time.perf_counter()
            with Transport(config) as transport:
                _download(transport)
            download_gc_s = time.perf_counter() - started
            gc.collect()
            # The ceiling, then the sync, against the same warm server, each starting from a
            # collected heap (the ceiling's parsed pages are dropped before the sync).
            gc.collect()
            started = time.perf_counter()
            gc.disable()  # the parsed pages pile up: no collector passes over them
            with Transport(config) as transport:
                pages, json_bytes, bodies = _download(transport)
            download_s = time.perf_counter() - started
            gc.enable()
            gzip_bytes = sum(len(gzip.compress(b, compresslevel=6)) for b in bodies)
            total = sum(len(p) for p in pages)
            started = time.perf_counter()
            _bulk_insert(DeviceVault.create(tmp / "ceiling.db"), pages)
            insert_s = time.perf_counter() - started
            ceiling_s = download_s + insert_s
            del pages, bodies
            gc.collect()

            device = DeviceVault.create(tmp / "device.db")
            with device.open() as vault:
                started = time.perf_counter()
                result = sync_once(vault, config, page_size=PAGE)
                sync_s = time.perf_counter() - started
                assert result.ok and result.pulled == total, result
                print(
                    f"initial sync: {total} resources in {sync_s:.2f} s"
                    f" = {total / sync_s:,.0f} resources/s ({result.requests} requests)"
                )
                print(
                    f"  ceiling: download+parse {download_s:.2f} s + bulk insert {insert_s:.2f} s"
                    f" = {ceiling_s:.2f} s = {total / ceiling_s:,.0f} resources/s"
                )
                print(f"  ratio sync/ceiling: {sync_s / ceiling_s:.2f}x (target <= 1.5x)")
                loose_s = download_gc_s + insert_s
                print(
                    f"  collector on during the download ({download_gc_s:.2f} s):"
                    f" ceiling {loose_s:.2f} s, ratio {sync_s / loose_s:.2f}x"
                )
                encoded = "gzip" if result.bytes_received < json_bytes * 0.9 else "identity"
                print(
                    f"  wire: {result.bytes_received / total:,.0f} B/resource as received"
                    f" ({encoded}); JSON {json_bytes / total:,.0f} B/resource,"
                    f" gzipped {gzip_bytes / total:,.0f} B/resource"
                    f" ({json_bytes / gzip_bytes:.1f}x smaller)"
                )

                started = time.perf_counter()
                again = sync_once(vault, config, page_size=PAGE)
                idle_ms = (time.perf_counter() - started) * 1000
                assert again.ok and again.pulled == 0, again
                print(f"no-change incremental sync: {again.requests} requests, {idle_ms:.0f} ms")

                patient_ids = [
                    str(r[0])
                    for r in vault.connection.execute(
                        "SELECT patient_id FROM patient_index ORDER BY patient_id LIMIT 50"
                    )
                ]
                started = time.perf_counter()
                made = write_consultations(vault, patient_ids, consultations, "bench")
                write_s = time.perf_counter() - started
                started = time.perf_counter()
                pushed = sync_once(vault, config, page_size=PAGE)
                push_s = time.perf_counter() - started
                assert pushed.ok and pushed.pushed == len(made), pushed
                print(
                    f"push: {consultations} consultations ({len(made)} resources) in"
                    f" {push_s:.2f} s = {consultations / push_s:,.0f} consultations/s,"
                    f" {pushed.requests} requests, {pushed.bytes_sent / len(made):,.0f} B/resource"
                    f" sent (written offline in {write_s:.2f} s)"
                )


if __name__ == "__main__":
    main()
