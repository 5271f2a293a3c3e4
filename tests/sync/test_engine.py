"""The sync engine against the real gateway over real mutual TLS on 127.0.0.1."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sync.device.engine import Progress, SyncEngine
from sync.device.replica import EXTRA_FULL_URL, EXTRA_IF_NONE_EXIST, OutboxItem, ReplicaError
from sync.device.transport import Transport
from sync.gateway.seed.generator import generate
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM
from tests.support.gateway import Gateway, running_gateway
from tests.support.memory_replica import MemoryReplica
from tests.support.sync import TYPES, seed_resources, transport_config
from tests.support.tls import DeviceCredentials

SITE = "hmp-brixton"


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(tmp_path) as gateway:
        gateway.load(*seed_resources(patients=30, seed=11))
        gateway.store.set_device("dev-s", SITE, "active")
        yield gateway


def _device(gw: Gateway) -> DeviceCredentials:
    return gw.pki.device("dev-s", SITE)


def _transport(
    gw: Gateway, creds: DeviceCredentials, pins: tuple[bytes, ...] | None = None
) -> Transport:
    config = transport_config(gw.server.url, gw.pki.server_pin, creds)
    return Transport(dataclasses.replace(config, spki_pins=pins) if pins else config)


def _sync(gw: Gateway, replica: MemoryReplica, **kw: Any) -> Any:
    creds = kw.pop("creds", None) or _device(gw)
    with _transport(gw, creds, kw.pop("pins", None)) as transport:
        return SyncEngine(transport, replica, resource_types=TYPES, page_size=40, **kw).run()


def _site_counts() -> dict[str, int]:
    resources = seed_resources(patients=30, seed=11)
    patients = {
        r["id"]: r["managingOrganization"]["reference"].split("/")[1]
        for r in resources
        if r["resourceType"] == "Patient"
    }

    def site(r: dict[str, Any]) -> str:
        if r["resourceType"] == "Patient":
            return patients[r["id"]]
        ref = (r.get("subject") or r.get("patient"))["reference"]
        return patients[ref.split("/")[1]]

    counts: dict[str, int] = {}
    for r in resources:
        counts[site(r)] = counts.get(site(r), 0) + 1
    return counts


def test_full_then_incremental_sync_brings_exactly_the_site(gw: Gateway) -> None:
    replica = MemoryReplica()
    progress: list[Progress] = []
    result = _sync(gw, replica, progress=progress.append)
    assert result.ok, result.error
    assert result.pulled == _site_counts()[SITE] == len(replica.resources)
    for patient in replica.of_type("Patient"):
        assert patient["managingOrganization"]["reference"] == f"Organization/{SITE}"
    assert {p.phase for p in progress} >= {"pull", "done"}
    assert progress[-1].bytes > 0
    again = _sync(gw, replica)
    assert again.ok and again.pulled == 0
    assert result.server is not None and result.server["missing"] == []  # the gateway: all
    # Issue 15 item 3: the metadata and every type's history page in ONE batch (was 1 + 8).
    assert again.requests == 1
    assert again.server == result.server  # the statement still read, inside the batch
    assert result.caseload_confirmed and again.caseload_confirmed  # every _history to its end


def test_changes_and_transfers_arrive_incrementally(gw: Gateway) -> None:
    replica = MemoryReplica()
    assert _sync(gw, replica).ok
    patient = dict(replica.of_type("Patient")[0])
    pid = patient["id"]
    own = [
        r
        for r in replica.resources.values()
        if (r.get("subject") or r.get("patient") or {}).get("reference") == f"Patient/{pid}"
    ]
    moved = {**patient, "managingOrganization": {"reference": "Organization/hmp-pentonville"}}
    moved.pop("meta", None)
    gw.load(moved)
    result = _sync(gw, replica)
    assert result.ok
    assert result.deleted == 1 + len(own)
    assert ("Patient", pid) not in replica.resources


def test_push_is_exactly_once_even_when_the_reply_is_lost(gw: Gateway) -> None:
    replica = MemoryReplica()
    assert _sync(gw, replica).ok
    pid = replica.of_type("Patient")[0]["id"]
    client_id = str(uuid.uuid4())
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2026-11-20T10:00:00+00:00",
        "valueQuantity": {
            "value": 77,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
        "identifier": [{"system": CLIENT_ID_SYSTEM, "value": client_id}],
    }
    replica.outbox[1] = OutboxItem(
        1,
        "create",
        "Observation",
        client_id,
        client_id,
        body,
        None,
        {
            EXTRA_IF_NONE_EXIST: f"identifier={CLIENT_ID_SYSTEM}|{client_id}",
            EXTRA_FULL_URL: f"urn:uuid:{client_id}",
        },
    )
    # First push: the server commits, but the device "loses the reply" (mark_sent never runs).
    lost = MemoryReplica(outbox=dict(replica.outbox))
    lost.mark_sent = lambda *a: None  # type: ignore[method-assign]
    assert _sync(gw, lost).pushed == 1  # committed on the server; the device never heard
    result = _sync(gw, replica)  # the same outbox item is sent again
    assert result.ok and result.pushed == 1
    server_id, version = replica.sent[1]
    matches = [
        r
        for r in replica.of_type("Observation")
        if any(i.get("value") == client_id for i in r.get("identifier", []))
    ]
    assert len(matches) == 1 and matches[0]["id"] == server_id and version == "1"
    # A reply the device refuses to record is a push error, not a failed sync: the item stays
    # pending, and sending it again next time is harmless (ifNoneExist).
    refusing = MemoryReplica(outbox=dict(replica.outbox))
    refusing.mark_sent_batch = lambda sent: {i.seq: "not_pending" for i in sent}  # type: ignore[method-assign]
    result = _sync(gw, refusing)
    assert result.ok and (result.pushed, result.push_errors) == (0, 1) and refusing.sent == {}
    assert _sync(gw, refusing.__class__(outbox=dict(replica.outbox))).pushed == 1


def _site_patient_id() -> str:
    """The id of a seeded patient of the device's site."""
    return str(
        next(
            r["id"]
            for r in generate(sites=2, patients=30, seed=11)
            if r["resourceType"] == "Patient"
            and r["managingOrganization"]["reference"].endswith(SITE)
        )
    )


def test_malformed_resources_are_quarantined_and_the_rest_goes_on(gw: Gateway) -> None:
    pid = _site_patient_id()
    bad = {
        "resourceType": "Observation",
        "id": "bad-obs-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "valueQuantity": {"value": "seventy", "unit": "/min"},
    }
    gw.load(bad)
    replica = MemoryReplica()
    result = _sync(gw, replica)
    assert result.ok
    assert result.quarantined == 1
    assert replica.quarantine[0].resource_id == "bad-obs-1"
    assert b"seventy" in replica.quarantine[0].raw
    assert result.pulled == _site_counts()[SITE]


def put_raw(gw: Gateway, resource: dict[str, Any]) -> None:
    """Serve ``resource`` as a misbehaving server would: stored through the gateway in a
    shape it accepts, then its stored bytes replaced behind the store's checks."""
    shallow = {k: v for k, v in resource.items() if k != "extension"}
    gw.load(shallow)
    key = (resource["resourceType"], resource["id"])
    with contextlib.closing(sqlite3.connect(gw.store._path)) as conn, conn:
        (stored,) = conn.execute(
            "SELECT body FROM resources WHERE type = ? AND id = ?", key
        ).fetchone()
        body = {**json.loads(stored), "extension": resource["extension"]}
        for table in ("resources", "resource_history"):
            conn.execute(
                f"UPDATE {table} SET body = ? WHERE type = ? AND id = ?",
                (json.dumps(body).encode(), *key),
            )


def _nested_extension(levels: int) -> list[dict[str, Any]]:
    inner: dict[str, Any] = {"url": "https://example.org/x", "valueString": "deep"}
    for _ in range(levels // 2):
        inner = {"url": "https://example.org/x", "extension": [inner]}
    return [inner]


def test_NW3_a_deeply_nested_resource_is_quarantined_alone(gw: Gateway) -> None:
    """One resource nested past MAX_DEPTH (but within the page bound) is quarantined with
    reason too_deep; the rest of its page, and every other page, is applied."""
    pid = _site_patient_id()
    deep = {
        "resourceType": "Observation",
        "id": "deep-obs-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "valueQuantity": {"value": 72, "unit": "/min"},
        "extension": _nested_extension(80),
    }
    put_raw(gw, deep)
    replica = MemoryReplica()
    result = _sync(gw, replica)
    assert result.ok, result
    assert result.quarantined == 1
    (held,) = replica.quarantine
    assert (held.resource_id, held.reason) == ("deep-obs-1", "too_deep")
    assert result.pulled == _site_counts()[SITE]
    assert ("Observation", "deep-obs-1") not in replica.resources


def test_NW3_a_page_nested_past_the_page_bound_is_refused_and_the_rest_goes_on(
    gw: Gateway,
) -> None:
    pid = _site_patient_id()
    hostile = {
        "resourceType": "Flag",
        "id": "hostile-flag",
        "status": "active",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{pid}"},
        "extension": _nested_extension(300),
    }
    put_raw(gw, hostile)
    replica = MemoryReplica()
    result = _sync(gw, replica)
    assert result.failed_phases == {"pull": "bad_response"} and not result.caseload_confirmed
    assert not any(kind == "Flag" for kind, _ in replica.resources)
    # The other streams were pulled before the Flag stream failed; nothing half-applied.
    assert any(kind == "Patient" for kind, _ in replica.resources)


def test_a_crash_mid_pull_resumes_without_loss_or_duplicates(gw: Gateway) -> None:
    replica = MemoryReplica(fail_after_pages=3)
    with pytest.raises(KeyboardInterrupt):
        _sync(gw, replica)
    assert replica.pages == 3
    replica.fail_after_pages = None
    result = _sync(gw, replica)
    assert result.ok
    assert len(replica.resources) == _site_counts()[SITE]


def test_cancel_stops_between_pages_and_keeps_what_arrived(gw: Gateway) -> None:
    replica = MemoryReplica()
    cancel = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.phase == "pull" and p.items > 50:
            cancel.set()

    result = _sync(gw, replica, progress=on_progress, cancel=cancel)
    assert result.error == "cancelled"
    assert 50 < len(replica.resources) < _site_counts()[SITE]
    assert _sync(gw, replica).ok
    assert len(replica.resources) == _site_counts()[SITE]


def test_NW1_a_wrong_pin_stops_the_sync_before_anything_is_sent(gw: Gateway) -> None:
    replica = MemoryReplica()
    result = _sync(gw, replica, pins=(b"\x07" * 32,))
    assert result.error == "pin_mismatch"
    assert replica.pages == 0 and replica.resources == {}


def test_H3_a_failing_pull_never_starves_the_control_steps(gw: Gateway) -> None:
    """A broken page or a poison note must not keep a remote wipe or lock from running."""

    class Broken(MemoryReplica):
        def apply_page(self, page: Any) -> Any:
            raise ReplicaError("bad_server_reply")

    ran: list[str] = []
    creds = _device(gw)
    with _transport(gw, creds) as transport:
        result = SyncEngine(
            transport,
            Broken(),
            resource_types=TYPES,
            control_before=[("commands", lambda t, r: ran.append("commands"))],
            control_after=[("policy", lambda t, r: ran.append("policy"))],
        ).run()
    assert ran == ["commands", "policy"]
    assert result.failed_phases == {"pull": "bad_server_reply"}
    assert result.error == "bad_server_reply"


def test_a_pin_failure_ends_the_sync_at_once(gw: Gateway) -> None:
    ran: list[str] = []
    with _transport(gw, _device(gw), (b"\x05" * 32,)) as transport:
        result = SyncEngine(
            transport,
            MemoryReplica(),
            resource_types=TYPES,
            control_before=[("time", lambda t, r: t.get("device/time") and ran.append("time"))],
            control_after=[("policy", lambda t, r: ran.append("policy"))],
        ).run()
    assert result.error == "pin_mismatch" and ran == []
