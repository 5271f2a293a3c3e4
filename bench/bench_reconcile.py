"""The upstream's hourly reconciliation before and after id lists (issue 14), same run, same
data, on both test upstreams.

Each upstream holds one synthetic site (``seed_resources(patients, seed=7, sites=1)``), all its
patients in one Group linked to a gateway site (a fresh SQLite store), loaded by one initial
pass. Then, with nothing changed upstream (the steady state of an hourly reconciliation):
- **before**: what a reconciliation did until id lists. sekmet-fhir (it offers ``$export``): a
  full ``Group/[id]/$export`` (the server's job, every NDJSON file streamed, every line offered
  to the writer, all unchanged). Medplum (no ``$export``): every clinical type searched whole
  by ``patient=`` in chunks of 50 and offered to the writer (all unchanged).
- **after**: ``reconcile.reconcile_type`` for every clinical type over the same patients:
  ids and versions listed (``_elements=id,meta``), nothing fetched; and **after, whole pass**:
  the reconciliation pass as ``upstream sync`` runs it (``metadata``, membership, the
  Patients by ``_id``, the id lists), to set against **before**, which includes the Patients.
Then ``EDIT_SHARE`` of the Observations are edited upstream and **after** runs again: only
those are fetched whole. Figures: bytes received on the gateway's upstream connection and
wall seconds, per run.

``python -m bench.bench_reconcile`` (``--quick``: fewer patients); ``--sekmet`` or
``--medplum`` runs one upstream only. Patients: ``GATEHOUSE_BENCH_RECONCILE_PATIENTS``
(default 500 on sekmet-fhir; Medplum gets a fifth of that: its searches scan).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.store.upstream_tables import SiteLink
from sync.gateway.upstream.capabilities import fetch_capabilities
from sync.gateway.upstream.config import load_config, set_upstream
from sync.gateway.upstream.connection import UpstreamConnection
from sync.gateway.upstream.exports import export_group
from sync.gateway.upstream.load import import_records
from sync.gateway.upstream.opening import open_connection
from sync.gateway.upstream.passes import run_pass
from sync.gateway.upstream.reconcile import PATIENT_CHUNK, chunks, reconcile_type
from sync.gateway.upstream.search import keyset_search
from sync.gateway.upstream.writer import ImportWriter, offer_page
from sync.protocol.fhir.vocabulary import CLINICAL_TYPES
from tests.support.medplum_server import running_medplum
from tests.support.sekmet_server import running_sekmet
from tests.support.sync import SITE, seed_resources
from tests.support.upstream import gateway_data

EDIT_SHARE = 0.01
GROUP = "bench-group"


def _patients() -> int:
    if "--quick" in sys.argv:
        return 50
    return int(os.environ.get("GATEHOUSE_BENCH_RECONCILE_PATIENTS", "") or 500)


def _timed(
    data: Path, run: Callable[[UpstreamConnection], dict[str, int]]
) -> tuple[float, int, dict[str, int]]:
    """(seconds, bytes received, counts) of ``run`` over a fresh upstream connection."""
    with open_connection(load_config(data)) as connection:
        started = time.perf_counter()
        counts = run(connection)
        return time.perf_counter() - started, connection.counters.bytes_received, counts


def _before_search(store: SqliteStore, site_of: dict[str, str]) -> Callable[..., dict[str, int]]:
    def run(connection: UpstreamConnection) -> dict[str, int]:
        writer = ImportWriter(store, dt.datetime.now(dt.UTC))
        for rtype in CLINICAL_TYPES:
            for chunk in chunks(sorted(site_of), PATIENT_CHUNK):
                params = {"patient": ",".join(f"Patient/{p}" for p in chunk)}
                for page in keyset_search(connection, rtype, params):
                    offer_page(writer, page, site_of, [None])
        writer.flush()
        return dict(writer.counts)

    return run


def _before_export(store: SqliteStore, site_of: dict[str, str]) -> Callable[..., dict[str, int]]:
    def run(connection: UpstreamConnection) -> dict[str, int]:
        writer = ImportWriter(store, dt.datetime.now(dt.UTC))
        link = SiteLink(SITE, "group", GROUP, dt.datetime.now(dt.UTC))
        export_group(connection, writer, link, site_of)
        writer.flush()
        return dict(writer.counts)

    return run


def _after(store: SqliteStore, site_of: dict[str, str]) -> Callable[..., dict[str, int]]:
    def run(connection: UpstreamConnection) -> dict[str, int]:
        writer = ImportWriter(store, dt.datetime.now(dt.UTC))
        for rtype in CLINICAL_TYPES:
            reconcile_type(connection, writer, rtype, sorted(site_of), site_of, [None])
        writer.flush()
        return dict(writer.counts)

    return run


def _whole_pass(store: SqliteStore) -> Callable[..., dict[str, int]]:
    def run(connection: UpstreamConnection) -> dict[str, int]:
        capabilities = fetch_capabilities(connection)
        now = dt.datetime.now(dt.UTC)
        return import_records(connection, store, now=now, reconcile=True, capabilities=capabilities)

    return run


def _line(name: str, seconds: float, size: int, counts: dict[str, int]) -> str:
    shown = (
        "unchanged",
        "written",
        "reconcile_listed",
        "reconcile_fetched",
        "export_files",
        "metadata_bytes",
    )
    words = ", ".join(f"{k} {counts[k]}" for k in shown if counts.get(k))
    return f"  {name:22} {seconds:7.2f} s {size / 1e6:8.2f} MB  ({words})"


def _bench(
    label: str,
    server: AbstractContextManager[Any],
    put: Callable[[Any, dict[str, Any]], None],
    load: Callable[[Any, list[dict[str, Any]]], None],
    patients: int,
    before: Callable[[SqliteStore, dict[str, str]], Callable[..., dict[str, int]]],
    tmp: Path,
) -> None:
    resources = seed_resources(patients, seed=7, sites=1)
    pids = sorted(r["id"] for r in resources if r["resourceType"] == "Patient")
    with server as upstream:
        started = time.perf_counter()
        load(upstream, resources)
        members = [{"entity": {"reference": f"Patient/{p}"}} for p in pids]
        put(upstream, {"resourceType": "Group", "id": GROUP, "type": "person",
                       "actual": True, "member": members})  # fmt: skip
        print(
            f"{label}: {len(resources)} resources of {len(pids)} patients loaded in"
            f" {time.perf_counter() - started:.1f} s"
        )
        tmp.mkdir(parents=True, exist_ok=True)
        data = gateway_data(tmp)
        creds = upstream.pki.device("gateway-upstream", "upstream")
        set_upstream(
            data, base=upstream.base, ca=str(upstream.pki.ca_path),
            cert=str(creds.cert_path), key=str(creds.key_path),
        )  # fmt: skip
        store = SqliteStore(tmp / "gateway.sqlite3")
        try:
            store.add_site(SITE, SITE, dt.datetime.now(dt.UTC))
            store.link_site(SITE, "group", GROUP, dt.datetime.now(dt.UTC))
            started = time.perf_counter()
            initial = run_pass(data, store, reconcile=True).counts
            print(
                f"  initial pass: {initial.get('written', 0)} written in"
                f" {time.perf_counter() - started:.1f} s"
            )
            site_of = dict.fromkeys(pids, SITE)
            after = _after(store, site_of)
            runs = (  # alternated, twice: the first run after the load is the slowest
                ("after (id lists)", after),
                ("before", before(store, site_of)),
                ("after (id lists)", after),
                ("before", before(store, site_of)),
                ("after, whole pass", _whole_pass(store)),
            )
            for name, run in runs:
                seconds, size, counts = _timed(data, run)
                print(_line(name, seconds, size, counts))
            observations = [r for r in resources if r["resourceType"] == "Observation"]
            edited = observations[:: max(1, round(1 / EDIT_SHARE))]
            for resource in edited:
                put(upstream, {**resource, "status": "amended"})
            seconds, size, counts = _timed(data, after)
            print(_line(f"after, {len(edited)} edited", seconds, size, counts))
        finally:
            store.close()


def main() -> None:
    patients = _patients()
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp_dir:
        tmp = Path(tmp_dir)
        if "--medplum" not in sys.argv:
            _bench(
                "sekmet-fhir 0.1.1",
                running_sekmet(tmp / "sekmet", validation="off"),
                lambda s, r: s.put(r),
                lambda s, rs: s.load(rs),
                patients,
                _before_export,
                tmp / "gw-sekmet",
            )
        if "--sekmet" not in sys.argv:
            _bench(
                "Medplum 4.5.2",
                running_medplum(tmp / "medplum"),
                lambda s, r: s.put(r),
                lambda s, rs: s.seed(rs),
                max(10, patients // 5),
                _before_search,
                tmp / "gw-medplum",
            )


if __name__ == "__main__":
    main()
