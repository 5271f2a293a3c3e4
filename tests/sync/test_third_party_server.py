"""Issue 13: the sync engine against a real third-party FHIR R4 server (Medplum's FHIR router,
in-memory repository, ``tests/support/medplum_server.py``) at ``/fhir/R4`` over real mutual TLS.

That server has no type-level ``_history``, answers searches with ``Bundle.total`` and no
``next`` link, and stamps ``meta.versionId`` with UUIDs: the engine must read it by keyset
search, never stop at the first page, and never report a short pull as a success.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.core import consultation
from client.core.audit_log import AuditLog
from sync.device.engine import SyncEngine, SyncResult
from sync.device.replica import ApplyStats, Page
from sync.device.transport import Transport
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM
from tests.support.medplum_server import BASE_PATH, MedplumServer, running_medplum
from tests.support.memory_replica import MemoryReplica
from tests.support.sync import (
    FULL_VITALS,
    SITE,
    TYPES,
    DeviceVault,
    device_view,
    now_utc,
    seed_resources,
    sync_once,
    transport_config,
    write_consultations,
)
from tests.support.tls_server import RawTlsServer
from tests.support.transport_pki import Pki, pinned_config, serve

SEED_PATIENTS = 30


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedplumServer]:
    with running_medplum(tmp_path_factory.mktemp("medplum")) as server:
        server.seed(seed_resources(patients=SEED_PATIENTS, seed=11))
        yield server


@pytest.fixture
def medplum(tmp_path: Path) -> Iterator[MedplumServer]:
    with running_medplum(tmp_path) as server:
        yield server


def _pull(server: MedplumServer, replica: MemoryReplica, page_size: int = 50) -> SyncResult:
    device = server.pki.device("dev-medplum", "hmp-brixton")
    config = transport_config(server.origin, server.pki.server_pin, device)
    with Transport(config) as transport:
        return SyncEngine(
            transport, replica, resource_types=TYPES, page_size=page_size, fhir_base=server.base
        ).run()


def _server_counts(server: MedplumServer) -> Counter[str]:
    return Counter({kind: len(server.search_all(kind)) for kind in TYPES})


def _device_counts(replica: MemoryReplica) -> Counter[str]:
    return Counter(kind for kind, _ in replica.resources)


def test_issue13_a_full_pull_from_a_server_at_fhir_r4_holds_every_resource(
    seeded: MedplumServer,
) -> None:
    """A base with a path (/fhir/R4), no type _history, no next links: every page is read."""
    replica = MemoryReplica()
    result = _pull(seeded, replica)
    assert result.ok, (result.failed_phases, result.failed_types)
    expected = _server_counts(seeded)
    assert sum(expected.values()) == len(seed_resources(patients=SEED_PATIENTS, seed=11))
    assert _device_counts(replica) == expected
    assert result.pulled == sum(expected.values())
    # A search cannot see deletions, but the complete Patient id listing can (issue 13 item 4).
    assert result.caseload_confirmed
    assert result.reconciled["Patient"] == {"listed": expected["Patient"], "gone": 0, "missed": 0}
    # What the server offers, read from its metadata before the push (issue 13 item 1).
    assert result.server is not None
    assert result.server["software"].startswith("Medplum")
    assert result.server["transaction"] is True
    assert not any(t["history_type"] for t in result.server["types"].values())
    assert "Patient:history-type" in result.server["missing"]
    assert result.server["types"]["Observation"]["if_match"] is True
    cursor = replica.cursors["history:Observation"]
    assert cursor.startswith(f"{BASE_PATH}/Observation?") and "_lastUpdated=ge" in cursor
    # The next sync resumes from the cursor: only the overlap is read again, nothing applied.
    again = _pull(seeded, replica)
    assert again.ok and again.pulled == 0


class EditingReplica(MemoryReplica):
    """After the first Observation page is applied, another client edits a record of that
    page on the server (it moves to the end of a _lastUpdated order) — the edit that made
    offset paging skip a record."""

    def __init__(self, server: MedplumServer) -> None:
        super().__init__()
        self.server = server
        self.edited: str | None = None

    def apply_page(self, page: Page) -> ApplyStats:
        stats = super().apply_page(page)
        if page.stream == "history:Observation" and self.edited is None and page.resources:
            first = dict(page.resources[0])
            first["status"] = "amended"
            self.edited = str(first["id"])
            self.server.put(first)
        return stats


def test_issue13_an_edit_while_paging_never_makes_the_search_skip_a_record(
    medplum: MedplumServer,
) -> None:
    medplum.seed(seed_resources(patients=SEED_PATIENTS, seed=12))
    replica = EditingReplica(medplum)
    result = _pull(medplum, replica, page_size=20)
    assert result.ok, (result.failed_phases, result.failed_types)
    assert replica.edited is not None
    assert _device_counts(replica) == _server_counts(medplum)
    held = replica.resources[("Observation", replica.edited)]
    assert held["status"] == "amended"  # the edit itself arrived in the same pull


def _searchset(entries: list[dict[str, Any]], total: int | None) -> bytes:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    if total is not None:
        bundle["total"] = total
    return json.dumps(bundle).encode()


def _history(entries: list[dict[str, Any]], total: int) -> bytes:
    return json.dumps(
        {"resourceType": "Bundle", "type": "history", "total": total, "entry": entries}
    ).encode()


def _flag(fid: str, stamp: str) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "Flag",
            "id": fid,
            "meta": {"versionId": "1", "lastUpdated": stamp},
            "status": "active",
            "code": {"text": "risk"},
            "subject": {"reference": "Patient/pt1"},
        }
    }


def _raw_pull(pki: Pki, server: RawTlsServer, replica: MemoryReplica, types: list[str]) -> Any:
    with Transport(pinned_config(pki, server.port)) as transport:
        return SyncEngine(transport, replica, resource_types=types).run()


def test_issue13_a_history_that_ends_while_its_total_says_more_is_an_incomplete_pull(
    pki: Pki,
) -> None:
    """No next link, Bundle.total 2,806, one page received: an error, the cursor not moved."""
    page = _history([_flag("f1", "2026-11-01T10:00:00Z")], total=2806)

    def answer(*_: object) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/fhir+json"}, page

    for server in serve(pki, answer):
        replica = MemoryReplica()
        result = _raw_pull(pki, server, replica, ["Flag"])
        assert not result.ok
        assert result.failed_types == {"Flag": "incomplete_pull"}
        assert result.failed_phases == {"pull": "incomplete_pull"}
        assert ("Flag", "f1") in replica.resources  # what came is kept …
        assert "_since" not in replica.cursors["history:Flag"]  # … the cursor stays put
        assert replica.cursors["history:Flag"] == "fhir/Flag/_history?_count=500"


def test_issue13_a_search_whose_total_cannot_be_reached_is_an_incomplete_pull(pki: Pki) -> None:
    """A server that caps every page at one record of the same instant and says total=3:
    the engine cannot page past it and says so instead of reporting success."""
    page = _searchset([_flag("f1", "2026-11-01T10:00:00Z")], total=3)

    def answer(method: str, path: str, *_: object) -> tuple[int, dict[str, str], bytes]:
        if "/_history" in path:
            return 404, {"Content-Type": "application/fhir+json"}, b"{}"
        return 200, {"Content-Type": "application/fhir+json"}, page

    for server in serve(pki, answer):
        replica = MemoryReplica()
        result = _raw_pull(pki, server, replica, ["Flag"])
        assert result.failed_types == {"Flag": "incomplete_pull"}
        assert not result.ok


def test_issue13_a_refused_page_of_one_type_never_stops_the_other_types(pki: Pki) -> None:
    flags = _history([_flag("f1", "2026-11-01T10:00:00Z")], total=1)

    def answer(method: str, path: str, *_: object) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/fhir/Patient"):
            return 403, {"Content-Type": "application/fhir+json"}, b"{}"
        if path.startswith("/fhir/Flag"):
            return 200, {"Content-Type": "application/fhir+json"}, flags
        return 200, {"Content-Type": "application/fhir+json"}, _history([], total=0)

    for server in serve(pki, answer):
        replica = MemoryReplica()
        result = _raw_pull(pki, server, replica, ["Patient", "AllergyIntolerance", "Flag"])
        assert result.failed_types == {"Patient": "pull_refused"}
        assert result.failed_phases == {"pull": "pull_refused"}
        assert ("Flag", "f1") in replica.resources
        assert "history:AllergyIntolerance" in replica.cursors
        assert "history:Patient" not in replica.cursors
        assert not result.caseload_confirmed


def test_the_medplum_server_requires_a_client_certificate(medplum: MedplumServer) -> None:
    """The third-party server is really behind mutual TLS (a request without a certificate is
    refused in the handshake)."""
    import requests

    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{medplum.base}/metadata", verify=str(medplum.pki.ca_path), timeout=10)
    pin = base64.b64decode(medplum.pki.server_pin)
    assert len(pin) == 32


def _site_of_patient(server: MedplumServer) -> dict[str, str]:
    return {
        p["id"]: p["managingOrganization"]["reference"].split("/", 1)[1]
        for p in server.search_all("Patient")
    }


def _patient_of(resource: dict[str, Any]) -> str:
    if resource["resourceType"] == "Patient":
        return str(resource["id"])
    key = "patient" if resource["resourceType"] == "AllergyIntolerance" else "subject"
    return str(resource[key]["reference"].split("/", 1)[1])


def test_NW6_a_laptop_scoped_to_one_site_stores_nothing_of_another_sites_patients(
    seeded: MedplumServer, tmp_path: Path
) -> None:
    """The third-party server filters nothing by site: the laptop keeps only its own site's
    patients and their records, for every type; the rest is counted and audited, not stored."""
    sites = _site_of_patient(seeded)
    everything = [r for kind in TYPES for r in seeded.search_all(kind)]
    mine = {(r["resourceType"], r["id"]) for r in everything if sites[_patient_of(r)] == SITE}
    theirs = len(everything) - len(mine)
    assert mine and theirs  # both sites have patients and records
    device = DeviceVault.create(tmp_path / "vault.db")
    creds = seeded.pki.device("dev-nw6", SITE)
    config = transport_config(seeded.origin, seeded.pki.server_pin, creds)
    with device.open() as vault:
        result = sync_once(vault, config, page_size=40, fhir_base=seeded.base)
        assert result.ok, (result.failed_phases, result.failed_types)
        assert set(device_view(vault.connection)) == mine
        assert result.out_of_scope == theirs
        (entry,) = [e for e in AuditLog().entries(vault.connection) if e.action == "sync"]
        assert entry.detail["out_of_scope"] == theirs
        # Every patient's records came with the patient: count equals the server's, per type.
        again = sync_once(vault, config, page_size=40, fhir_base=seeded.base)
        assert again.ok and again.pulled == 0
        assert set(device_view(vault.connection)) == mine


def test_issue13_consultations_reach_the_third_party_server_exactly_once(
    medplum: MedplumServer, tmp_path: Path
) -> None:
    """A consultation (Encounter, Observation, DocumentReference) goes up in a transaction
    with conditional creates; a second sync sends nothing again and duplicates nothing."""
    medplum.seed(seed_resources(patients=6, seed=13))
    device = DeviceVault.create(tmp_path / "vault.db")
    creds = medplum.pki.device("dev-push", SITE)
    config = transport_config(medplum.origin, medplum.pki.server_pin, creds)
    with device.open() as vault:
        assert sync_once(vault, config, fhir_base=medplum.base).ok
        mine = [
            p["id"]
            for p in medplum.search_all("Patient")
            if p["managingOrganization"]["reference"] == f"Organization/{SITE}"
        ]
        made = write_consultations(vault, mine, 4, "mp")
        result = sync_once(vault, config, fhir_base=medplum.base)
        assert result.ok, (result.failed_phases, result.push_errors)
        assert result.pushed == len(made)
        again = sync_once(vault, config, fhir_base=medplum.base)
        assert again.ok and again.pushed == 0
    on_server = Counter(
        ident["value"]
        for kind in ("Encounter", "Observation", "DocumentReference")
        for resource in medplum.search_all(kind)
        for ident in resource.get("identifier", [])
        if ident.get("system") == CLIENT_ID_SYSTEM
    )
    assert on_server == Counter(made)  # every resource once, none twice


def test_NW6_a_consultation_larger_than_the_servers_transaction_limit_is_sent_split_once(
    medplum: MedplumServer, tmp_path: Path
) -> None:
    """Issue 13 item 2: this server refuses a transaction holding conditional creates and more
    than 8 entries. A consultation with full vital signs (10 entries) is split into ordered
    transactions (references resolved to the server's ids), sent exactly once, never left
    unsent."""
    medplum.seed(seed_resources(patients=4, seed=14))
    device = DeviceVault.create(tmp_path / "vault.db")
    creds = medplum.pki.device("dev-big", SITE)
    config = transport_config(medplum.origin, medplum.pki.server_pin, creds)
    with device.open() as vault:
        assert sync_once(vault, config, fhir_base=medplum.base).ok
        pid = next(
            p["id"]
            for p in medplum.search_all("Patient")
            if p["managingOrganization"]["reference"] == f"Organization/{SITE}"
        )
        with vault.transaction() as conn:
            written = consultation.write_consultation(
                conn,
                patient_id=pid,
                author_user_id="nurse.sync",
                site=SITE,
                vitals=FULL_VITALS,
                note_text="Full set of observations.",
                plan_text="Review tomorrow.",
                now=now_utc(),
            )
        assert len(written.outbox_seqs) == 10
        result = sync_once(vault, config, fhir_base=medplum.base)
        assert result.ok, (result.failed_phases, result.push_errors)
        assert result.pushed == 10 and result.push_errors == 0
        assert sync_once(vault, config, fhir_base=medplum.base).pushed == 0
    (encounter,) = [
        e
        for e in medplum.search_all("Encounter")
        if any(i.get("value") == written.encounter_id for i in e.get("identifier", []))
    ]
    observations = [
        o
        for o in medplum.search_all("Observation")
        if o.get("encounter", {}).get("reference") == f"Encounter/{encounter['id']}"
    ]
    assert len(observations) == 8  # every vital, each pointing at the server's Encounter
