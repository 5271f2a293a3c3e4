"""The FHIR R4 data plane over real mutual TLS: each interaction, conditional writes, errors."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any
from urllib.parse import quote

import pytest
import requests

from sync.gateway.api.bundle_entries import MAX_BODY_BYTES, MAX_BUNDLE_ENTRIES
from sync.gateway.store.resources import RESOURCE_TYPES
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


def _get(session: requests.Session, url: str) -> requests.Response:
    return session.get(url, timeout=30)


def _outcome(answer: requests.Response, status: int, reason: str | None = None) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    if reason is not None:
        assert body["issue"][0]["details"]["text"] == reason


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if "resource" in e]


def _next(bundle: dict[str, Any], relation: str = "next") -> str | None:
    return next((ln["url"] for ln in bundle["link"] if ln["relation"] == relation), None)


def _put_entry(resource: dict[str, Any], version: int | None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "method": "PUT",
        "url": f"{resource['resourceType']}/{resource['id']}",
    }
    if version is not None:
        request["ifMatch"] = f'W/"{version}"'
    return {"resource": resource, "request": request}


def test_metadata_lists_exactly_what_is_supported(gateway: Gateway) -> None:
    answer = _get(gateway.a, f"{gateway.fhir}/metadata")
    assert answer.status_code == 200
    cap = answer.json()
    assert cap["resourceType"] == "CapabilityStatement"
    assert cap["fhirVersion"] == "4.0.1"
    rest = cap["rest"][0]
    assert [r["type"] for r in rest["resource"]] == list(RESOURCE_TYPES)
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch", "history-system"}
    for resource in rest["resource"]:
        codes = {i["code"] for i in resource["interaction"]}
        assert codes == {"read", "vread", "search-type", "history-type"}
        assert resource["versioning"] == "versioned-update"


def test_read_vread_etag_and_meta(gateway: Gateway) -> None:
    gateway.load(patient("p1", SITE_A, family="Smith"))
    gateway.load(patient("p1", SITE_A, family="Smythe"))
    session = gateway.a
    answer = _get(session, f"{gateway.fhir}/Patient/p1")
    assert answer.status_code == 200
    assert answer.headers["ETag"] == 'W/"2"'
    assert "GMT" in answer.headers["Last-Modified"]
    body = answer.json()
    assert body["meta"]["versionId"] == "2"
    assert dt.datetime.fromisoformat(body["meta"]["lastUpdated"]).tzinfo is not None
    assert body["name"][0]["family"] == "Smythe"
    first = _get(session, f"{gateway.fhir}/Patient/p1/_history/1")
    assert first.status_code == 200
    assert first.headers["ETag"] == 'W/"1"'
    assert first.json()["name"][0]["family"] == "Smith"
    _outcome(_get(session, f"{gateway.fhir}/Patient/p1/_history/3"), 404)
    _outcome(_get(session, f"{gateway.fhir}/Patient/nope"), 404, "not_found")
    _outcome(_get(session, f"{gateway.fhir}/Practitioner/p1"), 404, "unsupported_resource_type")
    _outcome(_get(session, f"{gateway.fhir}/Patient/p1/extra/thing/here"), 404)


def test_search_by_patient_identifier_and_name(gateway: Gateway) -> None:
    gateway.load(
        patient("p1", SITE_A, family="O'Brien", given="Siobhán"),
        patient("p2", SITE_A, family="Jean-Paul", given="Zoë"),
        patient("p3", SITE_A, family="Smith", given="Ann"),
        observation("o1", "p1"),
        observation("o2", "p1"),
        observation("o3", "p2"),
    )
    s = gateway.a
    base = gateway.fhir
    assert sorted(_ids(_get(s, f"{base}/Observation?patient=p1").json())) == ["o1", "o2"]
    assert _ids(_get(s, f"{base}/Observation?patient=Patient/p2").json()) == ["o3"]
    assert _ids(_get(s, f"{base}/Patient?name=o'bri").json()) == ["p1"]
    assert _ids(_get(s, f"{base}/Patient?name=SIOBH%C3%81N").json()) == ["p1"]
    assert _ids(_get(s, f"{base}/Patient?name=paul").json()) == []  # prefix of a word only
    assert _ids(_get(s, f"{base}/Patient?name=jean-p").json()) == ["p2"]
    assert _ids(_get(s, f"{base}/Patient?name=zo%C3%AB").json()) == ["p2"]
    assert _ids(_get(s, f"{base}/Patient?name=%25").json()) == []  # LIKE wildcards are literal
    nhs = _get(s, f"{base}/Patient/p3").json()["identifier"][0]["value"]
    assert _ids(_get(s, f"{base}/Patient?identifier={quote(NHS)}|{nhs}").json()) == ["p3"]
    assert _ids(_get(s, f"{base}/Patient?identifier={nhs}").json()) == ["p3"]
    assert _ids(_get(s, f"{base}/Patient?identifier=urn:other|{nhs}").json()) == []


def test_search_last_updated_and_stable_paging(gateway: Gateway) -> None:
    gateway.load(*(patient(f"p{i:02}", SITE_A) for i in range(7)))
    s = gateway.a
    everything = _get(s, f"{gateway.fhir}/Patient?_count=100").json()
    stamps = [e["resource"]["meta"]["lastUpdated"] for e in everything["entry"]]
    assert _next(everything) is None
    cut = quote(stamps[0])
    later = _get(s, f"{gateway.fhir}/Patient?_lastUpdated=gt{cut}&_count=100").json()
    assert _ids(later) == []  # one load = one transaction = one lastUpdated
    gateway.load(patient("late", SITE_A))
    later = _get(s, f"{gateway.fhir}/Patient?_lastUpdated=gt{cut}&_sort=_lastUpdated").json()
    assert _ids(later) == ["late"]
    before = _get(s, f"{gateway.fhir}/Patient?_lastUpdated=le{cut}&_count=100").json()
    assert len(_ids(before)) == 7
    # Paging by next links visits every match exactly once, even while one is updated.
    seen: list[str] = []
    url: str | None = f"{gateway.fhir}/Patient?_count=3&_sort=_lastUpdated"
    while url is not None:
        page = _get(s, url).json()
        seen += _ids(page)
        if len(seen) == 3:
            gateway.load(patient("p00", SITE_A, family="Updated"))  # moves to the end
        url = _next(page)
        assert url is None or "_cursor=" in url
    assert sorted(set(seen)) == sorted([f"p{i:02}" for i in range(7)] + ["late"])
    assert seen.count("p00") == 2 and len(seen) == 9


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("Patient?foo=bar", "unknown_search_parameter"),
        ("Patient?patient=p1", "unknown_search_parameter"),  # not a Patient parameter
        ("Observation?name=x", "unknown_search_parameter"),
        ("Patient?_sort=-_lastUpdated", "unsupported_sort"),
        ("Patient?_count=0", "bad_count"),
        ("Patient?_count=100000", "bad_count"),
        ("Patient?_count=abc", "bad_count"),
        ("Patient?_lastUpdated=eq2020-01-01", "unsupported_date_prefix"),
        ("Patient?_lastUpdated=gtnot-a-date", "bad_date"),
        ("Patient?_cursor=%%%", "bad_cursor"),
        ("Patient?_cursor=eyJrIjoiaCIsInMiOjJ9", "bad_cursor"),  # a history cursor
        ("Patient?name=a&name=b", "repeated_parameter"),
        ("Patient?_format=xml", "unsupported_format"),
        ("_history?_since=yesterday", "bad_date"),
        ("_history?patient=p1", "unknown_search_parameter"),
        ("Observation?patient=../x", "bad_patient_parameter"),
    ],
)
def test_bad_search_parameters_are_400(gateway: Gateway, query: str, reason: str) -> None:
    _outcome(_get(gateway.a, f"{gateway.fhir}/{query}"), 400, reason)


def test_history_includes_updates_and_deletions_and_pages_by_seq(gateway: Gateway) -> None:
    gateway.load(patient("p1", SITE_A), observation("o1", "p1"), observation("o2", "p1"))
    s = gateway.a
    answer = gateway.post_bundle(
        s, [{"request": {"method": "DELETE", "url": "Observation/o1", "ifMatch": 'W/"1"'}}]
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["entry"][0]["response"]["status"].startswith("204")
    _outcome(_get(s, f"{gateway.fhir}/Observation/o1"), 410, "deleted")
    assert _ids(_get(s, f"{gateway.fhir}/Observation").json()) == ["o2"]
    history = _get(s, f"{gateway.fhir}/Observation/_history").json()
    assert history["type"] == "history"
    rows = [(e["request"]["method"], e["request"]["url"]) for e in history["entry"]]
    assert rows == [("POST", "Observation"), ("POST", "Observation"), ("DELETE", "Observation/o1")]
    # System level, paged two at a time by next links, then resumed after a new change.
    seen: list[tuple[str, str]] = []
    url: str | None = f"{gateway.fhir}/_history?_count=2"
    resume = None
    while url is not None:
        page = _get(s, url).json()
        seen += [(e["request"]["method"], e["fullUrl"].rsplit("/", 2)[-2]) for e in page["entry"]]
        resume, url = _next(page, "x-resume"), _next(page)
    assert [m for m, _ in seen] == ["POST", "POST", "POST", "DELETE"]
    gateway.load(observation("o3", "p1"))
    assert resume is not None
    assert _ids(_get(s, resume).json()) == ["o3"]
    # _since filters by lastUpdated (inclusive).
    stamp = _get(s, f"{gateway.fhir}/Observation/o3").json()["meta"]["lastUpdated"]
    since = _get(s, f"{gateway.fhir}/_history?_since={quote(stamp)}").json()
    assert _ids(since) == ["o3"]


def test_transaction_creates_with_urn_references(gateway: Gateway) -> None:
    p_entry = create_entry(patient("ignored", SITE_A, family="Newman"))
    p_entry["resource"].pop("id")
    o_entry = create_entry(observation("ignored", "x"))
    o_entry["resource"].pop("id")
    o_entry["resource"]["subject"] = {"reference": p_entry["fullUrl"]}
    answer = gateway.post_bundle(gateway.a, [o_entry, p_entry])  # order does not matter
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert bundle["type"] == "transaction-response"
    obs, pat = (e["resource"] for e in bundle["entry"])
    assert [e["response"]["status"] for e in bundle["entry"]] == ["201 Created"] * 2
    assert obs["subject"]["reference"] == f"Patient/{pat['id']}"
    assert bundle["entry"][1]["response"]["location"] == f"Patient/{pat['id']}/_history/1"
    assert bundle["entry"][1]["response"]["etag"] == 'W/"1"'
    assert _get(gateway.a, f"{gateway.fhir}/Observation/{obs['id']}").status_code == 200


def test_CR2_if_none_exist_retry_creates_exactly_one(gateway: Gateway) -> None:
    gateway.load(patient("p1", SITE_A))
    client_id = str(uuid.uuid4())
    entry = create_entry(observation("x", "p1"), client_id)
    entry["resource"].pop("id")
    first = gateway.post_bundle(gateway.a, [entry])
    second = gateway.post_bundle(gateway.a, [entry])  # the reply was lost; the device retries
    assert first.json()["entry"][0]["response"]["status"] == "201 Created"
    assert second.status_code == 200
    assert second.json()["entry"][0]["response"]["status"] == "200 OK"
    created = first.json()["entry"][0]["resource"]["id"]
    assert second.json()["entry"][0]["resource"]["id"] == created
    found = _get(gateway.a, f"{gateway.fhir}/Observation?identifier={quote(CLIENT_ID)}|{client_id}")
    assert _ids(found.json()) == [created]
    assert len(_ids(_get(gateway.a, f"{gateway.fhir}/Observation").json())) == 1


def test_if_match_mismatch_is_412_with_the_current_version(gateway: Gateway) -> None:
    gateway.load(patient("p1", SITE_A), observation("o1", "p1", 60.0))
    gateway.load(observation("o1", "p1", 61.0))  # someone else made version 2
    mine = observation("o1", "p1", 99.0)
    answer = gateway.post_bundle(gateway.a, [_put_entry(mine, version=1)])
    _outcome(answer, 412, "version_mismatch")
    assert answer.headers["ETag"] == 'W/"2"'
    current = answer.json()["contained"][0]
    assert current["meta"]["versionId"] == "2"
    assert current["valueQuantity"]["value"] == 61.0
    read = _get(gateway.a, f"{gateway.fhir}/Observation/o1").json()
    assert read["valueQuantity"]["value"] == 61.0
    # In a batch the conflict is reported per entry, with the same information.
    batch = gateway.post_bundle(gateway.a, [_put_entry(mine, version=1)], kind="batch").json()
    response = batch["entry"][0]["response"]
    assert response["status"].startswith("412")
    assert response["etag"] == 'W/"2"'
    assert response["outcome"]["contained"][0]["meta"]["versionId"] == "2"
    # With the right version the update lands as version 3.
    ok = gateway.post_bundle(gateway.a, [_put_entry(mine, version=2)])
    assert ok.json()["entry"][0]["response"]["etag"] == 'W/"3"'


def test_update_without_if_match_is_refused(gateway: Gateway) -> None:
    gateway.load(patient("p1", SITE_A), observation("o1", "p1", 60.0))
    answer = gateway.post_bundle(gateway.a, [_put_entry(observation("o1", "p1", 1.0), None)])
    _outcome(answer, 428, "if_match_required")
    _outcome(
        gateway.post_bundle(gateway.a, [_put_entry(observation("zz", "p1"), 1)]), 404, "not_found"
    )


def test_transaction_is_all_or_nothing(gateway: Gateway) -> None:
    gateway.load(patient("p1", SITE_A), observation("o1", "p1", 60.0))
    head = gateway.store.head_seq()
    good = create_entry(observation("x", "p1"))
    good["resource"].pop("id")
    update = _put_entry(observation("o1", "p1", 70.0), 1)
    orphan = create_entry(observation("y", "no-such-patient"))
    answer = gateway.post_bundle(gateway.a, [good, update, orphan])
    _outcome(answer, 404, "unknown_patient")
    assert gateway.store.head_seq() == head
    assert _ids(_get(gateway.a, f"{gateway.fhir}/Observation").json()) == ["o1"]
    assert _get(gateway.a, f"{gateway.fhir}/Observation/o1").json()["meta"]["versionId"] == "1"
    # The same entries as a batch: the good ones land, the bad one is reported.
    batch = gateway.post_bundle(gateway.a, [good, update, orphan], kind="batch").json()
    statuses = [e["response"]["status"] for e in batch["entry"]]
    assert statuses == ["201 Created", "200 OK", "404 Not Found"]
    assert batch["entry"][2]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"x": 1}
    for _ in range(levels):
        value = {"extension": [value]}
    return value


def _bundle_with(
    resource: Any, method: str = "POST", url: str = "Observation", if_none_exist: str = ""
) -> bytes:
    import orjson

    request = {"method": method, "url": url}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": resource, "request": request}],
    }
    return orjson.dumps(bundle)


BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    ("malformed", b'{"resourceType": "Bundle", "type": ', 400, "malformed_json"),
    ("nan", b'{"resourceType": "Bundle", "type": "transaction", "x": NaN}', 400, "malformed_json"),
    ("array", b"[1, 2, 3]", 400, "not_a_bundle"),
    ("patient", b'{"resourceType": "Patient"}', 400, "not_a_bundle"),
    ("collection", b'{"resourceType": "Bundle", "type": "collection"}', 400, None),
    ("get", _bundle_with(None, "GET", "Patient/p1"), 400, "unsupported_entry_method"),
    ("type", _bundle_with({"resourceType": "Practitioner"}, url="Practitioner"), 400, None),
    (
        "mismatch",
        _bundle_with({"resourceType": "Patient", "managingOrganization": {}}, url="Observation"),
        400,
        "wrong_resource_type",
    ),
    ("string", _bundle_with("Observation"), 400, "not_a_resource"),
    (
        "no-subject",
        _bundle_with({"resourceType": "Observation", "status": "final"}),
        400,
        "missing_patient_reference",
    ),
    ("deep", _bundle_with({"resourceType": "Observation", **_deep(60)}), 400, "too_deep"),
    ("very-deep", b"[" * 5000 + b"]" * 5000, 400, "too_deep"),
    (
        "duplicate-key",
        b'{"resourceType": "Bundle", "type": "batch", "type": "transaction"}',
        400,
        "duplicate_key",
    ),
    (
        "invalid-field",
        _bundle_with(
            {"resourceType": "Observation", "status": 5, "subject": {"reference": "Patient/p1"}}
        ),
        400,
        "invalid_resource:wrong_type",
    ),
    (
        "bad-nhs-number",
        _bundle_with(
            {
                "resourceType": "Patient",
                "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "1"}],
                "managingOrganization": {"reference": "Organization/hmp-alpha"},
            },
            url="Patient",
        ),
        400,
        "invalid_resource:bad_nhs_number",
    ),
    (
        "bad-id",
        _bundle_with({"resourceType": "Patient", "id": "../x"}, url="Patient"),
        400,
        "bad_id",
    ),
    (
        "if-none-exist",
        _bundle_with(observation("x", "p1"), if_none_exist="name=x"),
        400,
        "unsupported_if_none_exist",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [pytest.param(b, s, r, id=name) for name, b, s, r in BAD_BODIES],
)
def test_bad_bodies_are_4xx_operation_outcomes_and_store_nothing(
    gateway: Gateway, body: bytes, status: int, reason: str | None
) -> None:
    gateway.load(patient("p1", SITE_A))
    head = gateway.store.head_seq()
    answer = gateway.a.post(
        gateway.fhir, data=body, headers={"Content-Type": "application/fhir+json"}, timeout=30
    )
    _outcome(answer, status, reason)
    assert gateway.store.head_seq() == head


def test_oversized_bodies_wrong_media_type_and_too_many_entries(gateway: Gateway) -> None:
    head = gateway.store.head_seq()
    fhir_json = {"Content-Type": "application/fhir+json"}
    big = b'{"resourceType": "Bundle", "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'

    def refused_while_sending(body: Any) -> None:
        """413, or — when the server stops reading before the client has finished sending,
        as it may under load — a reset connection: either way nothing is stored."""
        try:
            answer = gateway.a.post(gateway.fhir, data=body, headers=fhir_json, timeout=30)
        except requests.exceptions.ConnectionError:
            return
        _outcome(answer, 413)

    refused_while_sending(big)

    def chunks() -> Any:  # no Content-Length: the limit holds while streaming
        yield b'{"resourceType": "Bundle", "pad": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    refused_while_sending(chunks())
    _outcome(gateway.a.post(gateway.fhir, data=b"{}", headers={"Content-Type": "text/html"}), 415)
    entries = [create_entry(observation("x", "p1"))] * (MAX_BUNDLE_ENTRIES + 1)
    _outcome(gateway.post_bundle(gateway.a, entries), 413, "too_many_entries")
    _outcome(gateway.a.delete(f"{gateway.fhir}/Patient/p1", timeout=30), 405)
    _outcome(gateway.a.put(f"{gateway.fhir}/Patient/p1", json={}, timeout=30), 405)
    assert gateway.store.head_seq() == head


SERVER_LOGGERS = {"sync", "uvicorn", "starlette"}  # urllib3 is the test's own client


def test_no_patient_data_in_logs(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    canary = "Zqxcanaryname"
    caplog.set_level("DEBUG")
    gateway.load(patient("p1", SITE_A, family=canary))
    s = gateway.a
    _get(s, f"{gateway.fhir}/Patient?name={canary}")
    _get(s, f"{gateway.fhir}/Patient?foo={canary}")  # refused: the value is not logged
    bad = patient("p1", SITE_B, family=canary)
    gateway.post_bundle(s, [_put_entry(bad, 1)])
    gateway.post_bundle(s, [create_entry(observation("x", canary))])
    gateway.post_bundle(gateway.b, [create_entry(observation("x", "p1"))])
    s.get(f"{gateway.fhir}/Patient/p1", headers={"X-Client-Cert": canary}, timeout=30)
    server_side = [r for r in caplog.records if r.name.split(".")[0] in SERVER_LOGGERS]
    assert any(r.name.startswith("sync.gateway") for r in server_side)
    assert all(canary.lower() not in r.getMessage().lower() for r in server_side)
