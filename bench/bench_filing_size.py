"""The transaction size the filing worker learns, remembered across passes (issue 14).

Medplum's FHIR router 4.5.2 (in memory, TLS 1.3, client certificates; ``make medplum``) refuses
a transaction of more than 8 conditional creates and advertises no limit, so the worker starts
at ``filing.DEFAULT_TRANSACTION`` and halves on each refusal. A relay in front of it (the tests'
``Relay``) counts what reaches the server. Two passes, each filing ``NOTES`` notes a laptop
pushed (one transaction Bundle per note, as a laptop does), into one SQLite gateway store;
figures per pass: refused transactions, accepted transactions, seconds. The same-run baseline
is the first pass (the size not known yet): with the size remembered, the second makes no
refused request.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import orjson

from sync.gateway.api.bundle_entries import parse_bundle
from sync.gateway.api.transaction import Scope, run_transaction
from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.upstream.config import set_upstream
from sync.gateway.upstream.passes import run_pass
from tests.support.gateway import SITE_A, create_entry, observation, patient
from tests.support.medplum_server import running_medplum
from tests.support.upstream import gateway_data, running_relay

NOTES = 50


def _push_notes(store: SqliteStore, pid: str, tag: str) -> None:
    for i in range(NOTES):
        entry = create_entry(observation(f"{tag}{i}", pid, 30.0 + i))
        entry["resource"].pop("id")
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
        _, parsed = parse_bundle(orjson.dumps(bundle))
        run_transaction(store, parsed, Scope(SITE_A, "dev-bench"))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with running_medplum(root / "medplum") as medplum:
            store = SqliteStore(root / "gateway.sqlite3")
            try:
                with running_relay(medplum.pki, medplum.base, medplum.session()) as relay:
                    data = gateway_data(root / "d")
                    creds = medplum.pki.device("gateway-upstream", "upstream")
                    set_upstream(
                        data,
                        base=relay.base,
                        ca=str(medplum.pki.ca_path),
                        cert=str(creds.cert_path),
                        key=str(creds.key_path),
                    )
                    now = dt.datetime.now(dt.UTC)
                    medplum.put(patient("bench-p", "x"))
                    medplum.put(
                        {
                            "resourceType": "Group",
                            "id": "bench-group",
                            "type": "person",
                            "actual": True,
                            "member": [{"entity": {"reference": "Patient/bench-p"}}],
                        }
                    )
                    store.add_site(SITE_A, SITE_A, now)
                    store.link_site(SITE_A, "group", "bench-group", now)
                    run_pass(data, store)
                    for n in (1, 2):
                        _push_notes(store, "bench-p", f"p{n}-")
                        relay.forwarded.clear()
                        started = time.perf_counter()
                        counts = run_pass(data, store, reconcile=False).counts
                        took = time.perf_counter() - started
                        sent = [f for f in relay.forwarded if f.startswith("POST /fhir/R4 ")]
                        refused = [f for f in sent if not f.endswith(" 200")]
                        print(
                            f"pass {n}: {counts.get('outbox_filed', 0)} notes filed,"
                            f" {len(refused)} refused transactions,"
                            f" {len(sent) - len(refused)} accepted,"
                            f" size {counts.get('outbox_transaction_size')}, {took:.2f} s",
                            flush=True,
                        )
            finally:
                store.close()


if __name__ == "__main__":
    main()
    sys.exit(0)
