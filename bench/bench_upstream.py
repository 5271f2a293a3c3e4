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

``GATEHOUSE_BENCH_SCALE`` (default 1: 1,000 patients, ~20k resources) or ``--quick`` (0.05).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

from sync.gateway.api.transaction import Scope, parse_bundle, run_transaction
from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.upstream.capabilities import IMPORTED_TYPES
from sync.gateway.upstream.config import load_config, set_upstream
from sync.gateway.upstream.load import PATIENT_CHUNK
from sync.gateway.upstream.opening import open_connection
from sync.gateway.upstream.passes import run_pass
from sync.gateway.upstream.search import keyset_search
from sync.protocol.fhir.vocabulary import CLINICAL_TYPES
from tests.support.gateway import create_entry, observation
from tests.support.medplum_server import running_medplum
from tests.support.sync import SITE, seed_resources
from tests.support.upstream import gateway_data

PATIENTS_AT_SCALE_1 = 1_000
NOTES = 25


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


def main() -> None:
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
