"""Issue 13 items 3 and 4, and the NW-6 backfill gap, against a real third-party FHIR R4 server
(Medplum's FHIR router, in-memory repository, at ``/fhir/R4`` over mutual TLS) that has no
type-level ``_history``: the laptop reads it by ``_lastUpdated`` keyset search and must still

- confirm its caseload (every held Patient checked by id at every sync), so retention never purges
  a patient who simply did not change while the laptop syncs successfully;
- see a Patient deleted on the server (it leaves the laptop at the next sync);
- fetch the older records of a patient who enters scope (their ``lastUpdated`` is behind the
  keyset cursor, so the search alone never brings them);
- reconcile ids per type: a record deleted on the server leaves the laptop, a record the
  laptop missed is fetched.

Each test has its own server (it starts in about a second): they change its data.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.cli import sync_report
from client.core import consultation, records
from client.core.audit_log import AuditLog
from client.core.replica import VaultReplica
from client.core.vault import Vault
from sync.device.replica import ApplyStats, Page
from sync.device.transport import TransportConfig
from tests.support.medplum_server import MedplumServer, running_medplum
from tests.support.sync import (
    OTHER_SITE,
    SITE,
    TYPES,
    DeviceVault,
    device_view,
    now_utc,
    replica_settings,
    seed_resources,
    sync_once,
    transport_config,
)

ZERO = dt.timedelta(0)


@pytest.fixture
def medplum(tmp_path: Path) -> Iterator[MedplumServer]:
    with running_medplum(tmp_path / "medplum") as server:
        yield server


def _config(server: MedplumServer, name: str) -> TransportConfig:
    creds = server.pki.device(name, SITE)
    return transport_config(server.origin, server.pki.server_pin, creds)


def _patient_of(resource: dict[str, Any]) -> str:
    if resource["resourceType"] == "Patient":
        return str(resource["id"])
    key = "patient" if resource["resourceType"] == "AllergyIntolerance" else "subject"
    return str(resource[key]["reference"].split("/", 1)[1])


def _held_patients(vault: Vault) -> set[str]:
    return {pid for (pid,) in vault.connection.execute("SELECT patient_id FROM patient_index")}


def _records_of(server: MedplumServer, pid: str) -> set[tuple[str, str]]:
    """(type, id) of the patient and every record of theirs on the server."""
    return {
        (r["resourceType"], r["id"])
        for kind in TYPES
        for r in server.search_all(kind)
        if _patient_of(r) == pid
    }


def test_issue13_retention_without_history_never_purges_an_unchanged_patient(
    medplum: MedplumServer, tmp_path: Path
) -> None:
    """200 patients who do not change; the laptop syncs successfully on days 0, 3, 6 and 8
    (retention 7 days). Every sync confirms the caseload through the complete Patient id
    listing, so on day 8 no patient is past retention (the issue saw 197 of 200 purged)."""
    patients = [
        r for r in seed_resources(patients=200, seed=21, sites=1) if r["resourceType"] == "Patient"
    ]
    medplum.seed(patients)
    device = DeviceVault.create(tmp_path / "vault.db")
    config = _config(medplum, "dev-retention")
    offset = [ZERO]
    confirmed: list[bool] = []

    def clock() -> dt.datetime:
        return now_utc() + offset[0]

    with device.open() as vault:
        settings = replica_settings() | {"clock": clock}
        replica = VaultReplica(lambda: vault.connection, AuditLog(), **settings)
        for day in (0, 3, 6, 8):
            offset[0] = dt.timedelta(days=day)
            result = sync_once(vault, config, fhir_base=medplum.base, replica=replica)
            assert result.ok, (result.failed_phases, result.failed_types)
            assert result.pulled == (len(patients) if day == 0 else 0)  # nothing changed
            past = records.patients_past_retention(vault.connection, clock(), 7, {SITE})
            assert past == [], f"day {day}: {len(past)} of {len(patients)} past retention"
            confirmed.append(result.caseload_confirmed)
        assert result.reconciled["Patient"]["listed"] == len(patients)
        assert confirmed == [True] * 4
        assert len(_held_patients(vault)) == len(patients)


def test_issue13_a_patient_deleted_on_a_server_without_history_leaves_the_laptop(
    medplum: MedplumServer, tmp_path: Path
) -> None:
    resources = seed_resources(patients=6, seed=22, sites=1)
    medplum.seed(resources)
    device = DeviceVault.create(tmp_path / "vault.db")
    config = _config(medplum, "dev-deleted")
    with device.open() as vault:
        assert sync_once(vault, config, fhir_base=medplum.base).ok
        gone = sorted(_held_patients(vault))[0]
        medplum.delete("Patient", gone)
        result = sync_once(vault, config, fhir_base=medplum.base)
        assert result.ok, (result.failed_phases, result.failed_types)
        assert gone not in _held_patients(vault)
        left = vault.connection.execute(
            "SELECT count(*) FROM resources WHERE patient_id = ?", (gone,)
        ).fetchone()[0]
        assert left == 0  # the patient and every record of theirs
        purges = [
            e
            for e in AuditLog().entries(vault.connection)
            if e.action == "purge" and e.patient_id == gone
        ]
        assert [e.detail["how"] for e in purges] == ["deleted"]
        assert result.reconciled["Patient"]["gone"] == 1
        assert result.caseload_confirmed
        report = sync_report(result)  # `gatehouse device sync --json`: what IT sees
        assert report["reconciled"]["Patient"] == {"listed": 5, "gone": 1, "missed": 0}
        assert report["caseload_confirmed"] is True


def _age_search_cursors(vault: Vault, moment: dt.datetime) -> None:
    """The clinical types' keyset cursors as a sync made well after these records were written
    leaves them (``_lastUpdated=ge`` past every record now on the server): the in-memory server
    stamps ``lastUpdated`` itself, so the passage of time is set on the laptop's side."""
    stamp = moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with vault.transaction() as conn:
        rows = conn.execute(
            "SELECT stream, cursor FROM sync_cursors WHERE stream LIKE 'history:%'"
            " AND stream != 'history:Patient'"
        ).fetchall()
        for stream, cursor in rows:
            aged = re.sub(r"_lastUpdated=ge[^&]*", f"_lastUpdated=ge{stamp}", cursor)
            assert aged != cursor
            conn.execute("UPDATE sync_cursors SET cursor = ? WHERE stream = ?", (aged, stream))


def test_NW6_a_patient_entering_scope_brings_records_older_than_the_cursor(
    medplum: MedplumServer, tmp_path: Path
) -> None:
    """A patient transferred in from another site has records written long before the keyset
    cursor: the search by ``_lastUpdated`` never returns them; the backfill (``patient=``)
    does, for every type the laptop keeps."""
    medplum.seed(seed_resources(patients=10, seed=23))
    device = DeviceVault.create(tmp_path / "vault.db")
    config = _config(medplum, "dev-backfill")
    with device.open() as vault:
        assert sync_once(vault, config, fhir_base=medplum.base).ok
        patients = medplum.search_all("Patient")
        newcomer = next(
            p for p in patients if p["managingOrganization"]["reference"].endswith(OTHER_SITE)
        )
        theirs = _records_of(medplum, newcomer["id"])
        assert len(theirs) > 3
        _age_search_cursors(vault, now_utc() + dt.timedelta(seconds=1))
        newcomer["managingOrganization"] = {"reference": f"Organization/{SITE}"}
        medplum.put(newcomer)
        result = sync_once(vault, config, fhir_base=medplum.base)
        assert result.ok, (result.failed_phases, result.failed_types)
        held = {key for key in device_view(vault.connection) if key in theirs}
        assert held == theirs  # every record of theirs, not only the Patient
        assert result.backfilled == 1
        # Nothing is pending: the next sync backfills nobody.
        assert sync_once(vault, config, fhir_base=medplum.base).backfilled == 0


class DyingBeforeBackfill(VaultReplica):
    """The product's replica, whose process "dies" (an exception no one catches) at the first
    page of a backfill: the Patient page that brought the newcomer is committed, their older
    records are not."""

    def apply_page(self, page: Page) -> ApplyStats:
        if page.stream.startswith("backfill:"):
            raise KeyboardInterrupt("killed before the backfill")
        return super().apply_page(page)


def test_NW6_a_sync_killed_before_the_backfill_backfills_at_the_next_sync(
    medplum: MedplumServer, tmp_path: Path
) -> None:
    """The newcomer is remembered (in its own transaction) before their Patient page is
    applied, so a sync killed between that page and the backfill still brings their older
    records at the next sync, though the patient is then no longer "new"."""
    medplum.seed(seed_resources(patients=10, seed=26))
    device = DeviceVault.create(tmp_path / "vault.db")
    config = _config(medplum, "dev-backfill-crash")
    with device.open() as vault:
        assert sync_once(vault, config, fhir_base=medplum.base).ok
        newcomer = next(
            p
            for p in medplum.search_all("Patient")
            if p["managingOrganization"]["reference"].endswith(OTHER_SITE)
        )
        theirs = _records_of(medplum, newcomer["id"])
        _age_search_cursors(vault, now_utc() + dt.timedelta(seconds=1))
        medplum.put(newcomer | {"managingOrganization": {"reference": f"Organization/{SITE}"}})
        dying = DyingBeforeBackfill(lambda: vault.connection, AuditLog(), **replica_settings())
        with pytest.raises(KeyboardInterrupt):
            sync_once(vault, config, fhir_base=medplum.base, replica=dying)
        held = {key for key in device_view(vault.connection) if key in theirs}
        assert held == {("Patient", newcomer["id"])}  # the patient came, their records not yet
    with device.open() as vault:  # the restart
        result = sync_once(vault, config, fhir_base=medplum.base)
        assert result.ok, (result.failed_phases, result.failed_types)
        held = {key for key in device_view(vault.connection) if key in theirs}
        assert held == theirs
        assert result.backfilled == 1


def test_issue13_reconciliation_removes_what_the_server_deleted_and_fetches_what_was_missed(
    medplum: MedplumServer, tmp_path: Path
) -> None:
    """A record deleted on the server is invisible to a keyset search; the periodic id
    reconciliation removes it from the laptop. A record the laptop lacks (as if a page had
    skipped it) is fetched by ``_id``. Between reconciliations (24 h by default) nothing is
    listed but the Patients."""
    medplum.seed(seed_resources(patients=6, seed=24, sites=1))
    device = DeviceVault.create(tmp_path / "vault.db")
    config = _config(medplum, "dev-reconcile")

    def sync(every: dt.timedelta | None = None) -> Any:
        result = sync_once(vault, config, fhir_base=medplum.base, reconcile_every=every)
        assert result.ok, (result.failed_phases, result.failed_types)
        return result

    with device.open() as vault:
        sync()
        view = device_view(vault.connection)
        observation = sorted(rid for kind, rid in view if kind == "Observation")[0]
        flag = sorted(rid for kind, rid in view if kind == "Flag")[0]
        medplum.delete("Observation", observation)
        with vault.transaction() as conn:  # a record the laptop never received
            conn.execute("DELETE FROM resources WHERE type = 'Flag' AND id = ?", (flag,))
        _age_search_cursors(vault, now_utc() + dt.timedelta(seconds=1))  # past the overlap
        not_due = sync()
        assert ("Observation", observation) in device_view(vault.connection)
        assert ("Flag", flag) not in device_view(vault.connection)
        assert set(not_due.reconciled) == {"Patient"}  # clinical types: not due yet
        due = sync(ZERO)
        after = device_view(vault.connection)
        assert ("Observation", observation) not in after
        assert ("Flag", flag) in after
        assert due.reconciled["Observation"]["gone"] == 1
        assert due.reconciled["Flag"]["missed"] == 1
        on_server = {
            (kind, r["id"]) for kind in {k for k, _ in after} for r in medplum.search_all(kind)
        }
        assert set(after) == on_server  # the laptop holds exactly what the server holds


LABELS = {
    "profile": ["http://example.org/fhir/StructureDefinition/prison-vitals"],
    "security": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
    ],
    "tag": [{"system": "https://board.example/tags", "code": "reviewed"}],
}


def test_issue13_an_update_keeps_the_profile_security_labels_and_tags_the_server_set(
    medplum: MedplumServer, tmp_path: Path
) -> None:
    """The server stamped a record with a profile, a confidentiality label and a tag; the
    clinician's edit goes up as an update (If-Match) that still carries all three, so the
    server's labels survive (the issue saw an update drop them)."""
    medplum.seed(seed_resources(patients=3, seed=25, sites=1))
    target = sorted(medplum.search_all("Observation"), key=lambda r: r["id"])[0]
    target["meta"] = dict(target["meta"]) | LABELS
    medplum.put(target)
    device = DeviceVault.create(tmp_path / "vault.db")
    config = _config(medplum, "dev-labels")
    with device.open() as vault:
        assert sync_once(vault, config, fhir_base=medplum.base).ok
        stored = records.get(vault.connection, "Observation", target["id"])
        assert stored is not None, "not pulled"
        edited = dict(stored) | {"status": "amended"}
        edited.pop("meta")  # what the chart hands over: the record, not its meta
        with vault.transaction() as conn:
            consultation.queue_update(conn, edited, now=now_utc())
        result = sync_once(vault, config, fhir_base=medplum.base)
        assert result.ok and result.pushed == 1 and result.conflicts == 0, result
        held = records.get(vault.connection, "Observation", target["id"])
        assert held is not None and held["status"] == "amended"
        # A second edit is based on the server's real version: no 412, no conflict.
        with vault.transaction() as conn:
            consultation.queue_update(conn, edited | {"status": "corrected"}, now=now_utc())
        second = sync_once(vault, config, fhir_base=medplum.base)
        assert second.ok and second.pushed == 1 and second.conflicts == 0, second
        held = records.get(vault.connection, "Observation", target["id"])
        assert held is not None
    (on_server,) = [r for r in medplum.search_all("Observation") if r["id"] == target["id"]]
    assert on_server["status"] == "corrected"
    # The laptop holds the server's version (id and instant), labels included.
    assert held["meta"]["versionId"] == on_server["meta"]["versionId"]
    assert {key: on_server["meta"].get(key) for key in LABELS} == LABELS
    assert {key: held["meta"].get(key) for key in LABELS} == LABELS
