"""The gateway's upstream import and filing against Medplum (issue 14), same run, same data.

Medplum's FHIR router 4.5.2 (in memory, TLS 1.3, client certificates; ``make medplum``) holds
one synthetic site (``seed_resources(patients, seed=7, sites=1)``); its Organization is linked
to a gateway site. Figures:
- **download**: the same resources read by ``_lastUpdated`` keyset search per type through the
  gateway's own upstream connection, nothing stored (the bytes-on-the-wire baseline);
- **import**: one ``upstream sync`` pass into a fresh SQLite gateway store (membership, every
  record by patient, strict validation, one store transaction per 200 records);
  resources/s and the ratio import time / download time (issue 14's target: ≤ 2);
- **same queries**: the import's own requests (Patients by ``_id``, each type by
  ``patient=`` in chunks of 50, keyset-paged) with nothing validated or stored: the ratio
  import / same queries is the gateway's own cost;
- **filing**: ``NOTES`` notes pushed into the gateway (one transaction Bundle each, as a laptop
  does) then filed upstream in one pass. Medplum's in-memory repository answers an
  ``identifier`` search (which every conditional create runs, twice inside a transaction) by
  scanning with FHIRPath: about 1-2 s at 1,000 resources against 13 ms for a plain create, so
  this figure is the server's, and the note count stays small at every scale.

- **note-to-upstream latency**: ``LAPTOPS`` real laptops (SQLCipher vaults, the real sync
  engine, mutual TLS to the real gateway) each write one consultation (Encounter, Observation,
  note) and push at once; the gateway's upstream worker runs as ``serve`` runs it, with a poll
  interval of ``LATENCY_POLL_S``. Latency per record = from its laptop's push returning (it is
  at the gateway) to the moment a watcher sees its outbox row filed; p50/p95/max for the notes
  and for every record. This runs against its own Medplum holding ``LATENCY_PATIENTS``
  patients' records (~20 each): Medplum answers the identifier search of every conditional
  create by scanning, so its size, not the gateway, sets the figure.

- **Bulk Data export** (``--export`` runs it alone): sekmet-fhir 0.1.1 (``make sekmet``; TLS
  1.3, client certificates) holds ``GATEHOUSE_BENCH_EXPORT_RESOURCES`` resources (default
  100,000; ``--quick``: 5,000) of one synthetic site, all its patients in one Group linked to a
  gateway site. Same run, same server, same Group: the **download** baseline kicks off
  ``Group/[id]/$export``, waits for the manifest (the server's job time, reported apart) and
  streams every NDJSON file, counting bytes; the **import** is one ``upstream sync`` pass into
  a fresh SQLite gateway store (its own export job, every line parsed, validated and written).
  Figures: resources/s, and import time over (job + download) time and over download time.
  Also the pass's own job (its time from kick-off to manifest) and the gateway's own work (the
  pass less its own job and the download): jobs vary by seconds from one to the next.
  ``GATEHOUSE_BENCH_EXPORT_ROUNDS`` (default 1) repeats the download and the import (into a
  fresh store each time) against the one loaded server, and prints every ratio and their
  median; sekmet's jobs grow slower from one round to the next (seen: 11.7, 15.4, 13.0 s), so
  compare later rounds by the gateway's own work, not by the ratio.
  ``GATEHOUSE_BENCH_EXPORT_STORE=postgres`` imports into a fresh database of the suite's own
  PostgreSQL 15 (``tests.support.postgres``: a disposable cluster run with ``fsync=off``, so
  its commits cost less than a production server's) instead of SQLite.

- **a laptop syncing during the import** (``--export-laptop``): after loading sekmet as above, a
  real gateway (served on 127.0.0.1, mutual TLS) imports the Group into its store while a real
  laptop of ANOTHER site writes one consultation and syncs, over and over; its sync times are
  printed against the same laptop's with the gateway idle (a sync that ends after the import
  is not counted). The gateway, its import and the laptop run in the bench's one process:
  they share its interpreter lock as well as the two cores.
  ``GATEHOUSE_IMPORT_SCREENERS=1`` runs the import with one screening worker instead of two,
  to compare.

``GATEHOUSE_BENCH_SCALE`` (default 1: 1,000 patients, ~20k resources) or ``--quick`` (0.05).
``--latency`` runs the latency part only, ``--search`` the Medplum import and filing only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import median
from typing import Any

import orjson

from sync.gateway.api.bundle_entries import parse_bundle
from sync.gateway.api.transaction import Scope, run_transaction
from sync.gateway.store.loader import load_resources
from sync.gateway.store.sql import SqlStore
from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.upstream import bulk
from sync.gateway.upstream.capabilities import IMPORTED_TYPES
from sync.gateway.upstream.config import load_config, set_upstream
from sync.gateway.upstream.exports import EXPORT_TYPES
from sync.gateway.upstream.load import PATIENT_CHUNK
from sync.gateway.upstream.opening import open_connection
from sync.gateway.upstream.passes import run_pass
from sync.gateway.upstream.search import keyset_search
from sync.gateway.upstream.worker import UpstreamWorker
from sync.protocol.fhir.vocabulary import CLINICAL_TYPES
from tests.support.gateway import (
    SITE_A,
    SITE_B,
    create_entry,
    observation,
    patient,
    running_gateway,
)
from tests.support.medplum_server import running_medplum
from tests.support.sekmet_server import running_sekmet
from tests.support.sync import (
    SITE,
    DeviceVault,
    seed_resources,
    sync_once,
    transport_config,
    write_consultations,
)
from tests.support.upstream import gateway_data

PATIENTS_AT_SCALE_1 = 1_000
NOTES = 25
LAPTOPS = 50
LATENCY_PATIENTS = 50
LATENCY_POLL_S = 1.0
EXPORT_RESOURCES = int(os.environ.get("GATEHOUSE_BENCH_EXPORT_RESOURCES", "") or 100_000)
# rounds of download and import against one loaded sekmet (loading 104k takes ~150 s)
ROUNDS = int(os.environ.get("GATEHOUSE_BENCH_EXPORT_ROUNDS", "") or 1)
EXPORT_STORE = os.environ.get("GATEHOUSE_BENCH_EXPORT_STORE", "") or "sqlite"


def _scale() -> float:
    if "--quick" in sys.argv:
        return 0.05
    return float(os.environ.get("GATEHOUSE_BENCH_SCALE", "") or 1)


def _download(data: Path) -> tuple[int, int, float]:
    with open_connection(load_config(data)) as connection:
        started = time.perf_counter()
        count = 0
        for rtype in IMPORTED_TYPES:
            for page in keyset_search(connection, rtype, {}, count=500):
                count += len(page)
        return count, connection.counters.bytes_received, time.perf_counter() - started


def _same_queries(data: Path, patient_ids: list[str]) -> tuple[int, float]:
    chunks = [patient_ids[i : i + PATIENT_CHUNK] for i in range(0, len(patient_ids), PATIENT_CHUNK)]
    with open_connection(load_config(data)) as connection:
        started = time.perf_counter()
        count = 0
        for chunk in chunks:
            for page in keyset_search(connection, "Patient", {"_id": ",".join(chunk)}):
                count += len(page)
        for rtype in CLINICAL_TYPES:
            for chunk in chunks:
                params = {"patient": ",".join(f"Patient/{p}" for p in chunk)}
                for page in keyset_search(connection, rtype, params):
                    count += len(page)
        return count, time.perf_counter() - started


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _watch_filed(store: Any, stop: threading.Event, seen: dict[tuple[str, str], float]) -> None:
    """Record, per gateway record, when its outbox row is first seen closed."""
    while not stop.is_set():
        for rtype, rid, _, done in store.outbox_timings():
            if done is not None and (rtype, rid) not in seen:
                seen[(rtype, rid)] = time.monotonic()
        stop.wait(0.05)


def latency() -> None:
    """Note-to-upstream latency with ``LAPTOPS`` laptops pushing at once (module docstring)."""
    resources = seed_resources(LATENCY_PATIENTS, seed=11, sites=1)
    pids = sorted(r["id"] for r in resources if r["resourceType"] == "Patient")
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp_dir:
        tmp = Path(tmp_dir)
        with running_medplum(tmp / "medplum") as medplum, running_gateway(tmp / "gw") as gw:
            medplum.seed(resources)
            medplum.put(
                {
                    "resourceType": "Group", "id": "bench-group", "type": "person",
                    "actual": True,
                    "member": [{"entity": {"reference": f"Patient/{p}"}} for p in pids],
                }
            )  # fmt: skip
            store: Any = gw.store
            now = dt.datetime.now(dt.UTC)
            store.add_site(SITE_A, SITE_A, now)
            store.link_site(SITE_A, "group", "bench-group", now)
            data = gateway_data(tmp)
            creds = medplum.pki.device("gateway-upstream", "upstream")
            set_upstream(
                data, base=medplum.base, ca=str(medplum.pki.ca_path),
                cert=str(creds.cert_path), key=str(creds.key_path),
            )  # fmt: skip
            run_pass(data, store)
            laptops = []
            for i in range(LAPTOPS):
                device = DeviceVault.create(tmp / f"laptop{i}.db", f"dev-l{i}")
                store.set_device(f"dev-l{i}", SITE_A, "active")
                config = transport_config(
                    gw.url, gw.pki.server_pin, gw.pki.device(f"dev-l{i}", SITE_A)
                )
                with device.open() as vault:  # a vault is used by the thread that opened it
                    if not sync_once(vault, config, site=SITE_A).ok:
                        raise SystemExit("bench: a laptop's first sync failed")
                    write_consultations(vault, [pids[i % len(pids)]], 1, f"l{i}", site=SITE_A)
                laptops.append((device, config))
            pushed_at: dict[tuple[str, str], float] = {}

            def push(i: int) -> None:
                device, config = laptops[i]
                with device.open() as vault:
                    if not sync_once(vault, config, site=SITE_A).ok:
                        raise SystemExit("bench: a laptop's push failed")
                    now = time.monotonic()
                    for rtype, server_id in vault.connection.execute(
                        "SELECT resource_type, server_id FROM outbox WHERE state = 'sent'"
                    ).fetchall():
                        pushed_at[(str(rtype), str(server_id))] = now

            stop = threading.Event()
            seen: dict[tuple[str, str], float] = {}
            watcher = threading.Thread(target=_watch_filed, args=(store, stop, seen), daemon=True)
            watcher.start()
            worker = UpstreamWorker(data, store, LATENCY_POLL_S)
            worker.start()
            started = time.monotonic()
            threads = [threading.Thread(target=push, args=(i,)) for i in range(LAPTOPS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            pushed_s = time.monotonic() - started
            rows = store.outbox_timings()
            deadline = time.monotonic() + 1800
            while len(seen) < len(rows) and time.monotonic() < deadline:
                time.sleep(0.2)
            drained_s = time.monotonic() - started
            worker.stop(timeout=120)
            stop.set()
            watcher.join()
            counts = store.outbox_counts()
            every = {key: seen[key] - pushed_at[key] for key in seen if key in pushed_at}
            notes = [v for (rtype, _), v in every.items() if rtype == "DocumentReference"]
            print(
                f"latency: {LAPTOPS} laptops pushed {len(rows)} records at once in"
                f" {pushed_s:.2f} s; outbox {counts}; drained {drained_s:.1f} s after the first"
                f" push (Medplum holding {len(resources)} resources, poll {LATENCY_POLL_S} s)"
            )
            for name, values in (("notes", notes), ("all records", list(every.values()))):
                if values:
                    print(
                        f"note-to-upstream latency, {name} ({len(values)}): p50"
                        f" {_percentile(values, 0.5):.1f} s, p95 {_percentile(values, 0.95):.1f}"
                        f" s, max {max(values):.1f} s (from its laptop's push returning)"
                    )


def _export_download(data: Path, group: str) -> tuple[int, int, float, float]:
    """(lines, bytes, job seconds, download seconds) of one ``Group/[id]/$export``."""
    with open_connection(load_config(data)) as connection:
        started = time.perf_counter()
        url = bulk.kick_off(connection, group, EXPORT_TYPES, None)
        manifest = bulk.await_manifest(connection, url)
        job_s = time.perf_counter() - started
        started = time.perf_counter()
        lines = size = 0
        for output in manifest.outputs:
            with connection.stream(output.url) as response:
                for chunk in response.chunks:
                    size += len(chunk)
                    lines += chunk.count(b"\n")
        return lines, size, job_s, time.perf_counter() - started


def bulk_export(*, laptop: bool = False) -> None:
    """Initial import by ``Group/[id]/$export`` from sekmet-fhir (module docstring); with
    ``laptop``, one import with a laptop of another site syncing meanwhile instead."""
    target = 5_000 if "--quick" in sys.argv else EXPORT_RESOURCES
    probe = seed_resources(20, seed=7, sites=1)
    per_patient = len(probe) / 20
    resources = seed_resources(max(10, int(target / per_patient)), seed=7, sites=1)
    pids = sorted(r["id"] for r in resources if r["resourceType"] == "Patient")
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp_dir:
        tmp = Path(tmp_dir)
        with running_sekmet(tmp / "sekmet", validation="off") as sekmet:
            started = time.perf_counter()
            sekmet.load(resources)
            members = [{"entity": {"reference": f"Patient/{p}"}} for p in pids]
            sekmet.put({"resourceType": "Group", "id": "bench-group", "type": "person",
                        "actual": True, "member": members})  # fmt: skip
            print(
                f"sekmet loaded {len(resources)} resources ({len(pids)} patients) in"
                f" {time.perf_counter() - started:.1f} s"
            )
            # A gateway process holds no copy of the upstream's records: neither does the
            # pass measured here (their millions of objects would slow its garbage collector).
            del resources, probe
            gc.collect()
            data = gateway_data(tmp)
            creds = sekmet.pki.device("gateway-upstream", "upstream")
            set_upstream(
                data, base=sekmet.base, ca=str(sekmet.pki.ca_path),
                cert=str(creds.cert_path), key=str(creds.key_path),
            )  # fmt: skip
            if laptop:
                _laptop_during_import(data, tmp)
                return
            ratios = [_export_round(data, tmp / f"gateway-{n}.sqlite3") for n in range(ROUNDS)]
            if len(ratios) > 1:
                print(
                    f"{len(ratios)} rounds, ratio import / (job + download):"
                    f" {', '.join(f'{r:.2f}' for r in ratios)} (median {median(ratios):.2f})"
                )


def _timed_sync(vault: Any, config: Any, pid: str, n: int) -> tuple[float, float]:
    """One consultation written, then one sync (push and pull); its seconds, and the
    ``perf_counter`` at which it ended."""
    write_consultations(vault, [pid], 1, f"b{n}", site=SITE_B)
    started = time.perf_counter()
    if not sync_once(vault, config, site=SITE_B).ok:
        raise SystemExit("bench: the laptop's sync failed")
    ended = time.perf_counter()
    return ended - started, ended


def _laptop_during_import(data: Path, tmp: Path) -> None:
    """A laptop of another site syncing while the served gateway imports (module docstring)."""
    with running_gateway(tmp / "gw-laptop") as gw:
        store: Any = gw.store
        now = dt.datetime.now(dt.UTC)
        store.add_site(SITE_A, SITE_A, now)
        store.add_site(SITE_B, SITE_B, now)
        store.link_site(SITE_A, "group", "bench-group", now)
        load_resources(store, [patient("elsewhere", SITE_B)])
        device = DeviceVault.create(tmp / "laptop-b.db", "dev-lb")
        store.set_device("dev-lb", SITE_B, "active")
        config = transport_config(gw.url, gw.pki.server_pin, gw.pki.device("dev-lb", SITE_B))
        with device.open() as vault:
            if not sync_once(vault, config, site=SITE_B).ok:
                raise SystemExit("bench: the laptop's first sync failed")
            idle = [_timed_sync(vault, config, "elsewhere", n)[0] for n in range(20)]
            outcome: dict[str, Any] = {}

            def import_pass() -> None:
                started = time.perf_counter()
                try:
                    outcome["counts"] = run_pass(data, store, reconcile=True).counts
                except BaseException as failed:  # said after the join, not as figures
                    outcome["failed"] = failed
                finally:
                    outcome["ended"] = time.perf_counter()
                    outcome["seconds"] = outcome["ended"] - started

            importer = threading.Thread(target=import_pass)
            waited: list[float] = []
            with _timed(bulk, "await_manifest", waited):
                importer.start()
                timed: list[tuple[float, float]] = []
                while importer.is_alive():
                    if not waited:  # the upstream's job is still running: not the import yet
                        time.sleep(0.2)
                        continue
                    timed.append(_timed_sync(vault, config, "elsewhere", 20 + len(timed)))
                importer.join()
    # only the syncs that ended while the import still ran (the last may end after it)
    during = [seconds for seconds, ended in timed if ended <= outcome.get("ended", 0.0)]
    if "failed" in outcome:
        raise SystemExit(f"bench: the import failed: {outcome['failed']!r}")
    counts = outcome["counts"]
    screeners = os.environ.get("GATEHOUSE_IMPORT_SCREENERS") or "default (2 on 2+ cores)"
    print(
        f"laptop of another site, idle gateway: {len(idle)} syncs (one consultation pushed,"
        f" the feed pulled), p50 {_percentile(idle, 0.5) * 1000:.0f} ms,"
        f" max {max(idle) * 1000:.0f} ms"
    )
    if not during:
        raise SystemExit("bench: the import ended before the laptop synced once")
    print(
        f"the same laptop while the gateway imported {counts.get('written', 0)} resources"
        f" (screening workers: {screeners}; the pass took {outcome.get('seconds', 0):.1f} s,"
        f" its export job {sum(waited):.1f} s): {len(during)} syncs, p50"
        f" {_percentile(during, 0.5) * 1000:.0f} ms, p95 {_percentile(during, 0.95) * 1000:.0f}"
        f" ms, max {max(during) * 1000:.0f} ms"
    )


@contextlib.contextmanager
def _timed(module: Any, name: str, spent: list[float]) -> Iterator[None]:
    """``module.name`` timed while inside (each call's seconds appended to ``spent``)."""
    original = getattr(module, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    setattr(module, name, timed)
    try:
        yield
    finally:
        setattr(module, name, original)


def _export_store(path: Path) -> SqlStore:
    """A fresh store for one export round: SQLite at ``path``, or (``EXPORT_STORE``) a new
    database of the suite's PostgreSQL."""
    if EXPORT_STORE == "postgres":
        from sync.gateway.store.postgres import PgStore
        from tests.support.postgres import PgUnavailable, shared_server

        try:
            return PgStore(shared_server().new_database())
        except PgUnavailable as missing:
            raise SystemExit(f"no PostgreSQL for the bench: {missing.reason}") from None
    if EXPORT_STORE != "sqlite":
        raise SystemExit("GATEHOUSE_BENCH_EXPORT_STORE must be 'sqlite' or 'postgres'")
    return SqliteStore(path)


def _export_round(data: Path, path: Path) -> float:
    """One round: the download baseline, then one pass into a fresh store at ``path``, then a
    poll with nothing new; returns the ratio import / (job + download)."""
    lines, size, job_s, download_s = _export_download(data, "bench-group")
    print(
        f"export download: {lines} NDJSON lines, {size / 1e6:.1f} MB streamed in"
        f" {download_s:.2f} s = {lines / download_s:,.0f}/s (after the server's job:"
        f" {job_s:.2f} s from kick-off to manifest)"
    )
    store = _export_store(path)
    try:
        store.add_site(SITE, SITE, dt.datetime.now(dt.UTC))
        store.link_site(SITE, "group", "bench-group", dt.datetime.now(dt.UTC))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        waited: list[float] = []
        kicked: list[float] = []
        started = time.perf_counter()
        with _timed(bulk, "kick_off", kicked), _timed(bulk, "await_manifest", waited):
            counts = run_pass(data, store, reconcile=True).counts
        import_s = time.perf_counter() - started
        own_job_s = sum(kicked) + sum(waited)  # as the baseline's: kick-off to manifest
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        written = counts.get("written", 0)
        ratio = import_s / (job_s + download_s)
        print(
            f"export import: {written} resources written"
            f" ({counts.get('quarantined', 0)} quarantined,"
            f" {counts.get('export_files', 0)} files) in {import_s:.2f} s ="
            f" {written / import_s:,.0f}/s; ratio import / (job + download): {ratio:.2f},"
            f" import / download: {import_s / download_s:.2f}; the pass's own job (kick-off to"
            f" manifest) {own_job_s:.2f} s (the kick-off request {sum(kicked):.2f} s),"
            f" the gateway's own work (import - its own job -"
            f" download): {import_s - own_job_s - download_s:.2f} s;"
            f" peak RSS {rss_before / 1024:.0f} MB before, {rss_after / 1024:.0f} MB after"
        )
        started = time.perf_counter()
        again = run_pass(data, store, reconcile=False).counts
        print(
            f"then a poll with nothing new (Patients by _id, _history from the"
            f" export's transactionTime: {again.get('history_entries', 0)} entries read):"
            f" {time.perf_counter() - started:.2f} s, {again.get('written', 0)} written,"
            f" {again.get('unchanged', 0)} re-read unchanged"
        )
    finally:
        store.close()
    return ratio


def main() -> None:
    if "--latency" in sys.argv:
        latency()
        return
    if "--export" in sys.argv:
        bulk_export()
        return
    if "--export-laptop" in sys.argv:
        bulk_export(laptop=True)
        return
    search_import()
    if "--search" in sys.argv:
        return
    bulk_export()
    latency()


def search_import() -> None:
    """Import, download and filing against Medplum (module docstring)."""
    scale = _scale()
    patients = max(10, int(PATIENTS_AT_SCALE_1 * scale))
    resources = seed_resources(patients, seed=7, sites=1)
    with tempfile.TemporaryDirectory(prefix="bench-upstream-") as tmp_dir:
        tmp = Path(tmp_dir)
        with running_medplum(tmp / "medplum") as medplum:
            started = time.perf_counter()
            medplum.seed(resources)
            loaded_s = time.perf_counter() - started
            print(f"medplum loaded {len(resources)} resources in {loaded_s:.1f} s")
            data = gateway_data(tmp)
            creds = medplum.pki.device("gateway-upstream", "upstream")
            set_upstream(
                data, base=medplum.base, ca=str(medplum.pki.ca_path),
                cert=str(creds.cert_path), key=str(creds.key_path),
            )  # fmt: skip
            count, size, download_s = _download(data)
            print(
                f"download: {count} resources, {size / 1e6:.1f} MB in {download_s:.2f} s"
                f" = {count / download_s:,.0f}/s"
            )
            pids = sorted(r["id"] for r in resources if r["resourceType"] == "Patient")
            same, same_s = _same_queries(data, pids)
            print(f"same queries as the import: {same} resources in {same_s:.2f} s")
            store = SqliteStore(tmp / "gateway.sqlite3")
            try:
                store.add_site(SITE, SITE, dt.datetime.now(dt.UTC))
                store.link_site(SITE, "organization", SITE, dt.datetime.now(dt.UTC))
                started = time.perf_counter()
                counts = run_pass(data, store, reconcile=True).counts
                import_s = time.perf_counter() - started
                written = counts.get("written", 0)
                print(
                    f"import: {written} resources written ({counts.get('quarantined', 0)}"
                    f" quarantined) in {import_s:.2f} s = {written / import_s:,.0f}/s;"
                    f" ratio import/download time: {import_s / download_s:.2f},"
                    f" import/same queries: {import_s / same_s:.2f}"
                )
                started = time.perf_counter()
                again = run_pass(data, store, reconcile=False).counts
                print(
                    f"a pass with nothing new: {time.perf_counter() - started:.2f} s,"
                    f" {again.get('written', 0)} written"
                )
                for i in range(NOTES):
                    entry = create_entry(observation(f"n{i}", pids[i % len(pids)], 60.0 + i % 40))
                    entry["resource"].pop("id")
                    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
                    _, parsed = parse_bundle(orjson.dumps(bundle))
                    run_transaction(store, parsed, Scope(SITE, "dev-bench"))
                started = time.perf_counter()
                filed = run_pass(data, store, reconcile=False).counts
                filing_s = time.perf_counter() - started
                print(
                    f"filing: {filed.get('outbox_filed', 0)} notes in {filing_s:.2f} s"
                    f" = {filed.get('outbox_filed', 0) / filing_s:,.0f}/s, in"
                    f" {filed.get('outbox_transactions', 0)} transactions of at most"
                    f" {filed.get('outbox_transaction_size', 1)}"
                )
            finally:
                store.close()


if __name__ == "__main__":
    main()
