"""Site scoping: a device of site A never sees or touches site B, by any route; transfers."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from tests.support.gateway import (
    CLIENT_ID,
    NHS,
    SITE_A,
    SITE_B,
    Gateway,
    create_entry,
    observation,
    patient,
)


def _flag(fid: str, pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Flag",
        "id": fid,
        "status": "active",
        "code": {"text": "Self-harm risk"},
        "subject": {"reference": f"Patient/{pid}"},
    }


def _seed(gateway: Gateway) -> None:
    gateway.load(
        patient("pa", SITE_A, family="Alpha"),
        patient("pb", SITE_B, family="Bravo"),
        observation("oa", "pa"),
        observation("ob", "pb"),
        _flag("fb", "pb"),
    )


def _text(session: requests.Session, url: str) -> tuple[int, str]:
    answer = session.get(url, timeout=30)
    return answer.status_code, answer.text


def _history_ids(session: requests.Session, url: str) -> list[str]:
    ids: list[str] = []
    next_url: str | None = url
    while next_url is not None:
        page = session.get(next_url, timeout=30).json()
        ids += [e["fullUrl"].rsplit("/", 1)[-1] for e in page["entry"]]
        next_url = next((ln["url"] for ln in page["link"] if ln["relation"] == "next"), None)
    return ids


def test_read_vread_search_and_history_never_show_another_site(gateway: Gateway) -> None:
    _seed(gateway)
    a, fhir = gateway.a, gateway.fhir
    nhs_b = gateway.b.get(f"{fhir}/Patient/pb", timeout=30).json()["identifier"][0]["value"]
    for url in (f"{fhir}/Patient/pb", f"{fhir}/Observation/ob", f"{fhir}/Flag/fb"):
        status, text = _text(a, url)
        assert status == 404 and "Bravo" not in text
        assert _text(a, f"{url}/_history/1")[0] == 404
    searches = [
        "Patient",
        "Patient?name=bravo",
        f"Patient?identifier={quote(NHS)}|{nhs_b}",
        f"Patient?identifier={nhs_b}",
        "Observation?patient=pb",
        "Observation?patient=Patient/pb",
        "Flag",
        "Flag?patient=pb",
        "Patient?_lastUpdated=gt2000-01-01T00:00:00Z",
    ]
    for query in searches:
        answer = a.get(f"{fhir}/{query}", timeout=30)
        assert answer.status_code == 200
        assert "Bravo" not in answer.text
        assert {e["resource"]["id"] for e in answer.json().get("entry", [])} <= {"pa", "oa"}
    assert _history_ids(a, f"{fhir}/_history?_count=1") == ["pa", "oa"]
    assert _history_ids(a, f"{fhir}/Observation/_history") == ["oa"]
    assert _history_ids(a, f"{fhir}/Flag/_history") == []
    # And the other way round, B sees only B.
    assert _history_ids(gateway.b, f"{fhir}/_history") == ["pb", "ob", "fb"]


def test_transactions_cannot_reach_another_site(gateway: Gateway) -> None:
    _seed(gateway)
    a, fhir = gateway.a, gateway.fhir
    head = gateway.store.head_seq()
    attempts: list[tuple[dict[str, Any], int]] = [
        (create_entry(observation("x", "pb")), 404),  # a clinical resource for B's patient
        (create_entry(patient("x", SITE_B)), 403),  # a patient managed by site B
        (
            {
                "resource": observation("ob", "pb", 1.0),
                "request": {"method": "PUT", "url": "Observation/ob", "ifMatch": 'W/"1"'},
            },
            404,
        ),
        (
            {
                "resource": observation("oa", "pb", 1.0),  # move A's record to B's patient
                "request": {"method": "PUT", "url": "Observation/oa", "ifMatch": 'W/"1"'},
            },
            404,
        ),
        (
            {
                "resource": patient("pa", SITE_B),  # a device cannot transfer a patient
                "request": {"method": "PUT", "url": "Patient/pa", "ifMatch": 'W/"1"'},
            },
            403,
        ),
        ({"request": {"method": "DELETE", "url": "Flag/fb"}}, 404),
    ]
    for entry, status in attempts:
        for kind in ("transaction", "batch"):
            answer = gateway.post_bundle(a, [entry], kind=kind)
            text = answer.text
            if kind == "transaction":
                assert answer.status_code == status, (entry, text)
            else:
                assert answer.json()["entry"][0]["response"]["status"].startswith(str(status))
            assert "Bravo" not in text
    assert gateway.store.head_seq() == head
    assert gateway.b.get(f"{fhir}/Flag/fb", timeout=30).status_code == 200


def test_if_none_exist_does_not_match_another_sites_resource(gateway: Gateway) -> None:
    _seed(gateway)
    taken = "5b8d2f7e-0000-4000-8000-000000000001"
    created = gateway.post_bundle(gateway.b, [create_entry(observation("x", "pb"), taken)])
    b_id = created.json()["entry"][0]["resource"]["id"]
    mine = gateway.post_bundle(gateway.a, [create_entry(observation("x", "pa"), taken)]).json()
    entry = mine["entry"][0]
    assert entry["response"]["status"] == "201 Created"
    assert entry["resource"]["id"] != b_id
    assert entry["resource"]["subject"]["reference"] == "Patient/pa"
    by_id = f"{gateway.fhir}/Observation?identifier={quote(CLIENT_ID)}|{taken}"
    assert [e["resource"]["id"] for e in gateway.b.get(by_id, timeout=30).json()["entry"]] == [b_id]


def test_transfer_is_a_deletion_for_the_old_site_and_new_for_the_new(gateway: Gateway) -> None:
    gateway.load(
        patient("pt", SITE_A, family="Mover"),
        observation("o1", "pt"),
        observation("o2", "pt"),
        _flag("f1", "pt"),
        patient("stay", SITE_A),
        observation("os", "stay"),
    )
    gateway.load(observation("o2", "pt", 80.0))  # version 2 before the move
    a, b, fhir = gateway.a, gateway.b, gateway.fhir

    def caught_up(session: requests.Session) -> str:
        url: str | None = f"{fhir}/_history"
        resume = ""
        while url is not None:
            page = session.get(url, timeout=30).json()
            resume = next(ln["url"] for ln in page["link"] if ln["relation"] == "x-resume")
            url = next((ln["url"] for ln in page["link"] if ln["relation"] == "next"), None)
        return resume

    resume_a, resume_b = caught_up(a), caught_up(b)
    gateway.load(patient("pt", SITE_B, family="Mover"))  # the prison system moves the patient

    old = a.get(resume_a, timeout=30).json()["entry"]
    assert {(e["request"]["method"], e["request"]["url"]) for e in old} == {
        ("DELETE", "Patient/pt"),
        ("DELETE", "Observation/o1"),
        ("DELETE", "Observation/o2"),
        ("DELETE", "Flag/f1"),
    }
    assert all("resource" not in e for e in old)
    new = b.get(resume_b, timeout=30).json()["entry"]
    got = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in new}
    assert got == {("Patient", "pt"), ("Observation", "o1"), ("Observation", "o2"), ("Flag", "f1")}
    o2 = next(e["resource"] for e in new if e["resource"]["id"] == "o2")
    assert o2["meta"]["versionId"] == "2" and o2["valueQuantity"]["value"] == 80.0

    assert a.get(f"{fhir}/Patient/pt", timeout=30).status_code == 404
    assert a.get(f"{fhir}/Observation?patient=pt", timeout=30).json().get("entry", []) == []
    assert a.get(f"{fhir}/Observation/os", timeout=30).status_code == 200  # others stay
    assert b.get(f"{fhir}/Patient/pt", timeout=30).status_code == 200
    ids = sorted(
        e["resource"]["id"] for e in b.get(f"{fhir}/Observation?patient=pt").json()["entry"]
    )
    assert ids == ["o1", "o2"]
    # Writes follow the patient: A can no longer write for them (a note of no time in their
    # stay at A is refused, saying why: issue 12), B can.
    refused = gateway.post_bundle(a, [create_entry(observation("x", "pt"))])
    assert refused.status_code == 403
    assert refused.json()["issue"][0]["details"]["text"] == "patient_left_site"
    assert gateway.post_bundle(b, [create_entry(observation("x", "pt"))]).status_code == 200


def test_seed_data_loads_and_each_site_pulls_exactly_its_own(gateway: Gateway) -> None:
    from sync.gateway.seed.generator import generate

    items = list(generate(sites=2, patients=30, seed=7))
    gateway.load(*items)
    sites = sorted(r["id"] for r in items if r["resourceType"] == "Organization")
    patient_site = {
        r["id"]: r["managingOrganization"]["reference"].split("/")[1]
        for r in items
        if r["resourceType"] == "Patient"
    }

    def site_of(resource: dict[str, Any]) -> str:
        if resource["resourceType"] == "Organization":
            return str(resource["id"])
        if resource["resourceType"] == "Patient":
            return patient_site[resource["id"]]
        ref = resource.get("subject") or resource.get("patient")
        return patient_site[ref["reference"].split("/")[1]]

    for number, site in enumerate(sites):
        gateway.store.set_device(f"seed-{number}", site, "active")
        session = gateway.session(gateway.pki.device(f"seed-{number}", site))
        pulled: list[tuple[str, str]] = []
        url: str | None = f"{gateway.fhir}/_history?_count=500"
        while url is not None:
            page = session.get(url, timeout=30).json()
            pulled += [(e["resource"]["resourceType"], e["resource"]["id"]) for e in page["entry"]]
            url = next((ln["url"] for ln in page["link"] if ln["relation"] == "next"), None)
        expected = {(r["resourceType"], r["id"]) for r in items if site_of(r) == site}
        assert len(pulled) == len(set(pulled))
        assert set(pulled) == expected
        own = session.get(f"{gateway.fhir}/Organization/{site}", timeout=30)
        assert own.status_code == 200
        other = next(s for s in sites if s != site)
        assert session.get(f"{gateway.fhir}/Organization/{other}", timeout=30).status_code == 404
        org_write = {
            "resource": {"resourceType": "Organization", "id": site, "name": "x"},
            "request": {"method": "PUT", "url": f"Organization/{site}", "ifMatch": 'W/"1"'},
        }
        refused = gateway.post_bundle(session, [org_write])
        assert refused.status_code == 403
