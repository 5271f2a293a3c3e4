"""Pull rate against a third-party FHIR R4 server and against the gateway, same run, same data
(issue 13).

Both servers hold the same synthetic site (``seed_resources(patients, seed=7, sites=1)``) and
run in processes of their own behind mutual TLS 1.3 on 127.0.0.1: the gateway
(``gatehouse-gateway serve``, SQLite store, ``_history`` with change-sequence cursors) and
Medplum's FHIR router 4.5.2 on Node 20 with its in-memory repository at ``/fhir/R4`` (no type
history: the engine's ``_lastUpdated`` keyset search; ``tests/support/medplum/``, installed by
``make medplum``). A fresh SQLCipher vault pulls everything from each with the same engine,
pages of 500; figures are resources/s and the ratio Medplum/gateway. A no-change sync against
each follows (requests, ms; against Medplum it includes the id check of every held Patient),
then, against Medplum, a sync that also runs the daily id reconciliation of every type.

``GATEHOUSE_BENCH_SCALE`` (default 1: 1,000 patients, ~20k resources) or ``--quick`` (0.05).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.served_gateway import served_gateway
from sync.device.engine import SyncResult
from sync.device.transport import TransportConfig
from tests.support.medplum_server import running_medplum
from tests.support.sync import (
    DEVICE_ID,
    SITE,
    DeviceVault,
    seed_resources,
    sync_once,
    transport_config,
)

PAGE = 500
PATIENTS_AT_SCALE_1 = 1_000


def _scale() -> float:
    if "--quick" in sys.argv:
        return 0.05
    return float(os.environ.get("GATEHOUSE_BENCH_SCALE", "") or 1)


def _pull(tmp: Path, name: str, config: TransportConfig, base: str) -> tuple[SyncResult, float]:
    device = DeviceVault.create(tmp / f"{name}.db")
    with device.open() as vault:
        started = time.perf_counter()
        result = sync_once(vault, config, page_size=PAGE, fhir_base=base)
        seconds = time.perf_counter() - started
        again = sync_once(vault, config, page_size=PAGE, fhir_base=base)
        # The daily reconciliation (every type's ids listed and compared) as one sync pays it.
        reconciling = sync_once(
            vault, config, page_size=PAGE, fhir_base=base, reconcile_every=dt.timedelta(0)
        )
    if not result.ok or not again.ok or not reconciling.ok:
        raise SystemExit(f"{name}: the pull failed: {result.failed_phases or again.failed_phases}")
    print(
        f"{name}: {result.pulled} resources in {seconds:.2f} s = {result.pulled / seconds:,.0f}/s"
        f" ({result.requests} requests); no-change sync: {again.requests} requests,"
        f" {again.duration_s * 1000:.0f} ms"
    )
    if reconciling.reconciled:
        print(
            f"{name}: a sync with the daily reconciliation: {reconciling.requests} requests,"
            f" {reconciling.duration_s * 1000:.0f} ms"
        )
    return result, seconds


def main() -> None:
    patients = max(10, int(PATIENTS_AT_SCALE_1 * _scale()))
    resources = seed_resources(patients, seed=7, sites=1)
    with tempfile.TemporaryDirectory(prefix="bench-third-party-") as tmp_dir:
        tmp = Path(tmp_dir)
        with running_medplum(tmp / "medplum") as medplum:
            started = time.perf_counter()
            medplum.seed(resources)
            print(f"medplum loaded {len(resources)} resources through its API", end="")
            print(f" in {time.perf_counter() - started:.1f} s")
            creds = medplum.pki.device(DEVICE_ID, SITE)
            config = transport_config(medplum.origin, medplum.pki.server_pin, creds)
            third, third_s = _pull(tmp, "medplum (keyset search)", config, medplum.base)
        with served_gateway(tmp, resources, device_id=DEVICE_ID, site=SITE) as served:
            config = transport_config(
                served.url, served.server_pin, (served.device_cert, served.device_key)
            )
            ours, ours_s = _pull(tmp, "gateway (_history)", config, "fhir")
    if third.pulled != ours.pulled:
        raise SystemExit(f"different counts: medplum {third.pulled}, gateway {ours.pulled}")
    rate_third, rate_ours = third.pulled / third_s, ours.pulled / ours_s
    print(f"ratio medplum/gateway pull rate: {rate_third / rate_ours:.2f}")


if __name__ == "__main__":
    main()
