"""NW-3: inbound FHIR resources are validated strictly; identifier helpers; Bundle helpers."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.protocol.fhir import bundle as fb
from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded
from sync.protocol.fhir.read import (
    client_identifier,
    is_valid_id,
    nhs_check_digit,
    nhs_check_digit_ok,
    nhs_number,
    normalise_nhs_number,
    patient_ref_of,
    prison_number,
    site_of_patient,
)
from sync.protocol.fhir.validate import (
    MAX_NOTE_BYTES,
    InvalidResource,
    parse_instant,
    validate_resource,
)
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM, NHS_NUMBER_SYSTEM, PRISON_NUMBER_SYSTEM

META = {"versionId": "3", "lastUpdated": "2025-06-01T10:15:00.123+00:00"}
SUBJECT = {"reference": "Patient/pt1"}
CC = {"coding": [{"system": "http://snomed.info/sct", "code": "195967001", "display": "Asthma"}]}
NOTE = base64.b64encode(b"Seen on the wing.\nPlan: review.").decode()


def _valid() -> dict[str, dict[str, Any]]:
    return {
        "Patient": {
            "resourceType": "Patient",
            "id": "pt1",
            "meta": META,
            "identifier": [
                {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"},
                {"system": PRISON_NUMBER_SYSTEM, "value": "A1234BC"},
            ],
            "name": [{"use": "official", "family": "O'Brien", "given": ["Zoë", "Anne-Marie"]}],
            "gender": "female",
            "birthDate": "1990-02-28",
            "active": True,
            "managingOrganization": {"reference": "Organization/hmp-styal"},
        },
        "Organization": {
            "resourceType": "Organization",
            "id": "hmp-styal",
            "meta": META,
            "name": "HMP Styal",
        },
        "Flag": {
            "resourceType": "Flag",
            "id": "f1",
            "meta": META,
            "status": "active",
            "code": {"text": "ACCT open"},
            "subject": SUBJECT,
            "period": {"start": "2025-05-01"},
        },
        "AllergyIntolerance": {
            "resourceType": "AllergyIntolerance",
            "id": "a1",
            "meta": META,
            "code": CC,
            "patient": SUBJECT,
            "criticality": "high",
            "reaction": [{"manifestation": [CC], "severity": "severe"}],
        },
        "Condition": {
            "resourceType": "Condition",
            "id": "c1",
            "meta": META,
            "code": CC,
            "subject": SUBJECT,
            "onsetDateTime": "2019-07",
        },
        "MedicationStatement": {
            "resourceType": "MedicationStatement",
            "id": "m1",
            "meta": META,
            "status": "active",
            "medicationCodeableConcept": {"text": "Methadone 1 mg/mL"},
            "subject": SUBJECT,
            "dosage": [{"text": "60 mg daily"}],
        },
        "Observation": {
            "resourceType": "Observation",
            "id": "o1",
            "meta": META,
            "status": "final",
            "code": CC,
            "subject": SUBJECT,
            "effectiveDateTime": "2025-06-01T10:00:00Z",
            "component": [{"code": CC, "valueQuantity": {"value": 120, "unit": "mm[Hg]"}}],
        },
        "Encounter": {
            "resourceType": "Encounter",
            "id": "e1",
            "meta": META,
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": SUBJECT,
            "period": {"start": "2025-06-01T10:00:00+01:00", "end": "2025-06-01T10:30:00+01:00"},
        },
        "DocumentReference": {
            "resourceType": "DocumentReference",
            "id": "d1",
            "meta": META,
            "status": "current",
            "subject": SUBJECT,
            "date": "2025-06-01T10:30:00Z",
            "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": NOTE}}],
            "context": {"encounter": [{"reference": "Encounter/e1"}]},
        },
    }


def _mutated(kind: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    resource = copy.deepcopy(_valid()[kind])
    change(resource)
    return resource


def _rejected(resource: Any, **kwargs: bool) -> InvalidResource:
    with pytest.raises(InvalidResource) as caught:
        validate_resource(resource, **kwargs)
    assert caught.value.reason in InvalidResource.REASONS
    return caught.value


@pytest.mark.parametrize("kind", sorted(_valid()))
def test_each_valid_resource_is_returned_unchanged(kind: str) -> None:
    resource = _valid()[kind]
    before = orjson.dumps(resource)
    assert validate_resource(resource) is resource
    assert orjson.dumps(resource) == before


@pytest.mark.parametrize("kind", sorted(_valid()))
def test_each_type_requires_id_and_meta(kind: str) -> None:
    assert _rejected(_mutated(kind, lambda r: r.pop("id"))).reason == "missing"
    error = _rejected(_mutated(kind, lambda r: r["meta"].pop("lastUpdated")))
    assert (error.reason, error.path) == ("missing", f"{kind}.meta.lastUpdated")
    error = _rejected(_mutated(kind, lambda r: r.update(meta={"versionId": 3})))
    assert (error.reason, error.path) == ("wrong_type", f"{kind}.meta.versionId")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(resource: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = resource
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()

REJECTIONS = [
    # wrong types
    ("Patient", "name.0.family", 42, "wrong_type", "Patient.name[0].family"),
    ("Patient", "name.0.given", "Zoë", "wrong_type", "Patient.name[0].given"),
    ("Patient", "name", {"family": "X"}, "wrong_type", "Patient.name"),
    ("Patient", "active", "yes", "wrong_type", "Patient.active"),
    ("Patient", "identifier.0", ["x"], "wrong_type", "Patient.identifier[0]"),
    ("Observation", "component.0.valueQuantity.value", "120", "wrong_type",
     "Observation.component[0].valueQuantity.value"),
    ("Observation", "component.0.valueQuantity.value", True, "wrong_type",
     "Observation.component[0].valueQuantity.value"),
    ("Condition", "code", "asthma", "wrong_type", "Condition.code"),
    ("Encounter", "class", [{"code": "AMB"}], "wrong_type", "Encounter.class"),
    ("DocumentReference", "content", {"attachment": {}}, "wrong_type", "DocumentReference.content"),
    # missing required fields
    ("Flag", "subject", _DELETE, "missing", "Flag.subject"),
    ("AllergyIntolerance", "patient", _DELETE, "missing", "AllergyIntolerance.patient"),
    ("Observation", "status", _DELETE, "missing", "Observation.status"),
    ("Observation", "code", _DELETE, "missing", "Observation.code"),
    ("Condition", "code", {}, "missing", "Condition.code.coding"),
    ("MedicationStatement", "medicationCodeableConcept", _DELETE, "missing",
     "MedicationStatement.medicationCodeableConcept"),
    ("Encounter", "class", _DELETE, "missing", "Encounter.class"),
    ("DocumentReference", "content", _DELETE, "missing", "DocumentReference.content"),
    ("DocumentReference", "content", [], "empty_list", "DocumentReference.content"),
    ("DocumentReference", "content.0.attachment.data", _DELETE, "missing",
     "DocumentReference.content[0].attachment.data"),
    ("Organization", "name", _DELETE, "missing", "Organization.name"),
    ("Patient", "name.0", {"use": "official"}, "missing", "Patient.name[0].family"),
    ("Patient", "identifier.0.value", _DELETE, "missing", "Patient.identifier[0].value"),
    # bad references
    ("Condition", "subject", {"reference": "http://evil.example/fhir/Patient/pt1"},
     "bad_reference", "Condition.subject.reference"),
    ("Condition", "subject", {"reference": "Patient/../Organization/x"}, "bad_reference",
     "Condition.subject.reference"),
    ("Condition", "subject", {"reference": "Patient/.."}, "bad_reference",
     "Condition.subject.reference"),
    ("Condition", "subject", {"reference": "Group/g1"}, "bad_reference",
     "Condition.subject.reference"),
    ("Condition", "subject", {"reference": "Patient/pt1?_format=xml"}, "bad_reference",
     "Condition.subject.reference"),
    ("Condition", "subject", {"reference": "urn:uuid:0b7bd1a4-5a7e-4d3a-9a7e-1c4f1f0f6c11"},
     "bad_reference", "Condition.subject.reference"),
    ("Condition", "subject", {"display": "Mr Smith"}, "missing", "Condition.subject.reference"),
    ("Patient", "managingOrganization", {"reference": "Patient/pt1"}, "bad_reference",
     "Patient.managingOrganization.reference"),
    ("Observation", "encounter", {"reference": "Encounter/a/b"}, "bad_reference",
     "Observation.encounter.reference"),
    # bad ids
    ("Patient", "id", "../etc", "bad_id", "Patient.id"),
    ("Patient", "id", "a" * 65, "bad_id", "Patient.id"),
    ("Patient", "id", "pt 1", "bad_id", "Patient.id"),
    ("Patient", "id", "", "bad_id", "Patient.id"),
    ("Patient", "id", 7, "wrong_type", "Patient.id"),
    ("Patient", "meta.versionId", "1/2", "bad_id", "Patient.meta.versionId"),
    # dates
    ("Patient", "birthDate", "1990-02-30", "bad_date", "Patient.birthDate"),
    ("Patient", "birthDate", "02/01/1990", "bad_date", "Patient.birthDate"),
    ("Patient", "meta.lastUpdated", "2025-06-01T10:15:00", "bad_instant",
     "Patient.meta.lastUpdated"),
    ("Patient", "meta.lastUpdated", "2025-06-01", "bad_instant", "Patient.meta.lastUpdated"),
    ("Patient", "meta.lastUpdated", "2025-13-01T10:15:00Z", "bad_date",
     "Patient.meta.lastUpdated"),
    ("Encounter", "period.start", "2025-06-01T25:00:00Z", "bad_date", "Encounter.period.start"),
    ("Encounter", "period.start", "2025-06-01T10:00Z", "bad_date", "Encounter.period.start"),
    ("Condition", "onsetDateTime", "2019-7", "bad_date", "Condition.onsetDateTime"),
    # codes
    ("Patient", "gender", "M", "bad_code", "Patient.gender"),
    ("Observation", "status", "done", "bad_code", "Observation.status"),
    ("Flag", "status", " active", "bad_code", "Flag.status"),
    # identifiers
    ("Patient", "identifier.0.value", "9434765918", "bad_nhs_number",
     "Patient.identifier[0].value"),
    ("Patient", "identifier.1.value", "a1234bc", "bad_prison_number",
     "Patient.identifier[1].value"),
    # control characters and bidi overrides in names
    ("Patient", "name.0.family", "Smith\x00", "control_char", "Patient.name[0].family"),
    ("Patient", "name.0.family", "Smith\rJones", "control_char", "Patient.name[0].family"),
    ("Patient", "name.0.given.0", "Zo\x1bë", "control_char", "Patient.name[0].given[0]"),
    ("Patient", "name.0.family", "\u202eht\u202c", "control_char", "Patient.name[0].family"),
    ("Patient", "name.0.family", "Smith\x85", "control_char", "Patient.name[0].family"),
    # huge strings and lists
    ("Patient", "name.0.family", "x" * 201, "too_long", "Patient.name[0].family"),
    ("Condition", "code", {"text": "x" * 2001}, "too_long", "Condition.code.text"),
    ("Patient", "name.0.given", ["A"] * 1001, "too_many", "Patient.name[0].given"),
    ("Patient", "name.0.family", "", "empty", "Patient.name[0].family"),
    # notes
    ("DocumentReference", "content.0.attachment.data", "not base64!", "bad_base64",
     "DocumentReference.content[0].attachment.data"),
    ("DocumentReference", "content.0.attachment.data", "QUJD=", "bad_base64",
     "DocumentReference.content[0].attachment.data"),
    ("DocumentReference", "content.0.attachment.data", base64.b64encode(b"\xff\xfe").decode(),
     "bad_text", "DocumentReference.content[0].attachment.data"),
    ("DocumentReference", "content.0.attachment.data",
     base64.b64encode(b"a" * (MAX_NOTE_BYTES + 1)).decode(), "too_long",
     "DocumentReference.content[0].attachment.data"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "path", "value", "reason", "where"), REJECTIONS)
def test_NW3_strict_rejections(kind: str, path: str, value: Any, reason: str, where: str) -> None:
    error = _rejected(_mutated(kind, _set(path, value)))
    assert (error.reason, error.path) == (reason, where)


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([], "wrong_type"),
        ("Patient", "wrong_type"),
        ({"id": "x"}, "missing"),
        ({"resourceType": 5, "id": "x"}, "wrong_type"),
        ({"resourceType": "Bundle", "id": "x"}, "unknown_type"),
        ({"resourceType": "AuditEvent", "id": "x"}, "unknown_type"),
        ({"resourceType": "patient", "id": "x"}, "unknown_type"),
    ],
)
def test_resource_type_must_be_known(obj: Any, reason: str) -> None:
    assert _rejected(obj).reason == reason


def test_patient_needs_a_name_or_an_identifier() -> None:
    error = _rejected(_mutated("Patient", lambda r: (r.pop("name"), r.pop("identifier"))))
    assert (error.reason, error.path) == ("missing", "Patient.name")
    validate_resource(_mutated("Patient", lambda r: r.pop("name")))
    validate_resource(_mutated("Patient", lambda r: r.pop("identifier")))


def test_UI1_html_in_names_is_kept_literally() -> None:
    html = "<b>Smith</b><script>alert(1)</script> &amp;"
    patient = _mutated("Patient", _set("name.0.family", html))
    assert validate_resource(patient)["name"][0]["family"] == html


def test_non_ascii_apostrophes_hyphens_and_spaces_are_fine() -> None:
    for family in ("Ødegård", "D'Souza", "Smith-Jones", "Ó Súilleabháin", "Nguyễn", "Wiśniewski"):
        validate_resource(_mutated("Patient", _set("name.0.family", family)))


def test_unknown_fields_and_extensions_are_tolerated_and_kept() -> None:
    extension = [
        {
            "url": "https://example.org/fhir/StructureDefinition/unknown",
            "extension": [{"url": "x", "valueCodeableConcept": {"coding": [{"code": 1}]}}],
        }
    ]
    patient = _mutated(
        "Patient",
        lambda r: r.update(
            extension=extension,
            modifierExtension=[{"url": "y", "valueBoolean": True}],
            text={"status": "generated", "div": "<div xmlns='http://www.w3.org/1999/xhtml'/>"},
            telecom=[{"system": "phone", "value": "0"}],
            futureField={"anything": [1, 2, {"deep": None}]},
        ),
    )
    patient["name"][0]["extension"] = extension
    before = orjson.dumps(patient)
    assert validate_resource(patient) is patient
    assert orjson.dumps(patient) == before


def test_NW3_deep_nesting_is_refused_by_bounded_json_before_validation() -> None:
    deep = b'{"url":"x"}'
    for _ in range(200):
        deep = b'{"url":"x","extension":[' + deep + b"]}"
    data = orjson.dumps(_valid()["Patient"])[:-1] + b',"extension":[' + deep + b"]}"
    with pytest.raises(BoundedJsonError) as caught:
        loads_bounded(data)
    assert caught.value.reason == "too_deep"
    # A shallow extension goes through both layers.
    shallow = _mutated("Patient", lambda r: r.update(extension=[{"url": "x"}]))
    assert validate_resource(loads_bounded(orjson.dumps(shallow))) == shallow


def test_as_create_allows_absent_id_meta_and_same_bundle_references() -> None:
    note = _mutated("DocumentReference", lambda r: (r.pop("id"), r.pop("meta")))
    note["context"]["encounter"] = [{"reference": "urn:uuid:0b7bd1a4-5a7e-4d3a-9a7e-1c4f1f0f6c11"}]
    assert _rejected(note).reason == "missing"
    assert validate_resource(note, as_create=True) is note
    # Present fields are still checked.
    note["id"] = "../x"
    assert _rejected(note, as_create=True).reason == "bad_id"


def test_medication_reference_is_an_alternative_to_a_coded_medication() -> None:
    def use_reference(r: dict[str, Any]) -> None:
        r.pop("medicationCodeableConcept")
        r["medicationReference"] = {"reference": "Medication/med1"}

    validate_resource(_mutated("MedicationStatement", use_reference))


def test_fractional_seconds_beyond_microseconds_and_offsets_parse() -> None:
    assert parse_instant("2025-06-01T10:15:00.123456789+01:00").microsecond == 123456
    assert parse_instant("2025-06-01T10:15:00Z").utcoffset() is not None
    with pytest.raises(InvalidResource):
        parse_instant("2025-06-01T10:15:00")


def test_ids_refuse_dot_tricks() -> None:
    assert is_valid_id("a.b-C9")
    for bad in (".", "..", "...", "a..b", "a/b", "", "é", None, 5):
        assert not is_valid_id(bad)


# --- helpers ---------------------------------------------------------------------------------


def test_helpers_read_patient_site_and_identifiers() -> None:
    valid = _valid()
    patient = valid["Patient"]
    assert patient_ref_of(patient) == "pt1"
    for kind in ("Flag", "AllergyIntolerance", "Condition", "Observation", "DocumentReference"):
        assert patient_ref_of(valid[kind]) == "pt1"
    assert patient_ref_of(valid["Organization"]) is None
    assert (
        patient_ref_of({"resourceType": "Condition", "subject": {"reference": "Group/1"}}) is None
    )
    assert patient_ref_of({"resourceType": "Condition", "subject": "Patient/1"}) is None
    assert patient_ref_of(None) is None
    assert site_of_patient(patient) == "hmp-styal"
    assert site_of_patient(valid["Condition"]) is None
    assert site_of_patient({"resourceType": "Patient", "managingOrganization": 3}) is None
    assert nhs_number(patient) == "9434765919"
    assert prison_number(patient) == "A1234BC"
    assert client_identifier(patient) is None
    note = valid["DocumentReference"]
    note["identifier"] = [
        {"system": CLIENT_ID_SYSTEM, "value": "6f1c0e7e-3f0a-4c41-9a55-1f0e9b0f2a10"}
    ]
    assert client_identifier(validate_resource(note)) == "6f1c0e7e-3f0a-4c41-9a55-1f0e9b0f2a10"
    assert nhs_number({"identifier": "9434765919"}) is None


def test_nhs_check_digit_known_values() -> None:
    assert nhs_check_digit_ok("9434765919")  # the NHS's published example
    assert nhs_check_digit_ok("4010232137")
    assert not nhs_check_digit_ok("9434765918")
    assert not nhs_check_digit_ok("943476591")
    assert not nhs_check_digit_ok("94347659190")
    assert not nhs_check_digit_ok("943476591x")
    assert not nhs_check_digit_ok("９４３４７６５９１９")  # full-width digits
    assert nhs_check_digit("999000001") == 8  # 9*10 + 9*9 + 9*8 + 1*2 = 245 = 22*11 + 3
    assert nhs_check_digit_ok("9990000018")
    assert nhs_check_digit("999000000") is None  # remainder 1: check digit 10, unusable
    assert not any(nhs_check_digit_ok(f"999000000{d}") for d in range(10))
    assert nhs_check_digit("000000000") == 0  # remainder 0: check digit 11 becomes 0
    assert normalise_nhs_number("943 476 5919") == "9434765919"
    assert normalise_nhs_number("943-476-5918") is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789", min_size=9, max_size=9), st.integers(0, 9), st.integers(1, 9))
def test_nhs_check_digit_detects_every_single_digit_error(
    first_nine: str, position: int, delta: int
) -> None:
    check = nhs_check_digit(first_nine)
    if check is None:
        assert not any(nhs_check_digit_ok(first_nine + str(d)) for d in range(10))
        return
    number = first_nine + str(check)
    assert nhs_check_digit_ok(number)
    wrong = number[:position] + str((int(number[position]) + delta) % 10) + number[position + 1 :]
    assert not nhs_check_digit_ok(wrong)


# --- bundle helpers --------------------------------------------------------------------------


def test_operation_outcome_and_etags() -> None:
    outcome = fb.operation_outcome("error", "invalid", "Patient.name[0].family: wrong_type")
    assert outcome == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": "Patient.name[0].family: wrong_type",
            }
        ],
    }
    with pytest.raises(ValueError):
        fb.operation_outcome("bad", "invalid", "")  # type: ignore[arg-type]
    assert fb.etag("3") == 'W/"3"'
    assert fb.parse_etag('W/"3"') == "3"
    assert fb.parse_etag('"12"') == "12"
    for bad in ("3", 'W/"', 'W/"a/b"', None, 3, 'W/""'):
        assert fb.parse_etag(bad) is None
    with pytest.raises(ValueError):
        fb.etag("../1")


def test_searchset_and_next_link() -> None:
    resources = [_valid()["Patient"], _valid()["Condition"]]
    page = fb.searchset(resources, "https://gw.example/fhir/Patient?_page=2", total=7,
                        base_url="https://gw.example/fhir")  # fmt: skip
    assert page["type"] == "searchset" and page["total"] == 7
    assert page["entry"][0]["fullUrl"] == "https://gw.example/fhir/Patient/pt1"
    assert fb.bundle_entries(page, "searchset")[1]["resource"]["id"] == "c1"
    assert fb.next_link(page) == "https://gw.example/fhir/Patient?_page=2"
    last = fb.searchset(resources, None)
    assert fb.next_link(last) is None and "total" not in last and "link" not in last


@pytest.mark.parametrize(
    ("bundle", "reason"),
    [
        ({"link": {"relation": "next"}}, "wrong_type"),
        ({"link": ["next"]}, "wrong_type"),
        ({"link": [{"relation": "next", "url": 5}]}, "wrong_type"),
        ({"link": [{"relation": "next", "url": "https://a b"}]}, "bad_url"),
        ({"link": [{"relation": "next", "url": ""}]}, "bad_url"),
        ({"link": [{"relation": "next", "url": "x" * 9000}]}, "bad_url"),
        ({"link": [{"relation": "next", "url": "a"}, {"relation": "next", "url": "b"}]},
         "duplicate_next"),
        ([], "wrong_type"),
    ],
)  # fmt: skip
def test_next_link_refuses_malformed_links(bundle: Any, reason: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        fb.next_link(bundle)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("bundle", "reason"),
    [
        ({"resourceType": "Patient"}, "unknown_type"),
        ({"resourceType": "Bundle", "type": "weird"}, "bad_code"),
        ({"resourceType": "Bundle", "type": "history"}, "unexpected_type"),
        ({"resourceType": "Bundle", "type": "searchset", "entry": {}}, "wrong_type"),
        ({"resourceType": "Bundle", "type": "searchset", "entry": [1]}, "wrong_type"),
    ],
)
def test_bundle_entries_refuse_malformed_bundles(bundle: Any, reason: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        fb.bundle_entries(bundle, "searchset")
    assert caught.value.reason == reason


def test_history_entries_round_trip_creates_updates_and_deletions() -> None:
    patient = _valid()["Patient"]
    stamp = "2025-06-01T10:15:00+00:00"
    entries = [
        fb.history_entry(resource_type="Patient", resource_id="pt1", version_id="1",
                         last_updated=stamp, resource=patient),
        fb.history_entry(resource_type="Patient", resource_id="pt1", version_id="3",
                         last_updated=stamp, resource=patient, base_url="https://gw/fhir"),
        fb.history_entry(resource_type="Condition", resource_id="c1", version_id="4",
                         last_updated=stamp, resource=None),
    ]  # fmt: skip
    assert [e["request"]["method"] for e in entries] == ["POST", "PUT", "DELETE"]
    page = loads_bounded(orjson.dumps(fb.history(entries, None)))
    items = [fb.parse_history_entry(e, i) for i, e in enumerate(fb.bundle_entries(page, "history"))]
    assert [(i.resource_type, i.resource_id, i.version_id, i.deleted) for i in items] == [
        ("Patient", "pt1", "3", False),  # meta.versionId wins over the etag
        ("Patient", "pt1", "3", False),
        ("Condition", "c1", "4", True),
    ]
    assert items[2].resource is None


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("x", "wrong_type"),
        ({"resource": []}, "wrong_type"),
        ({"resource": {"resourceType": "Patient", "id": "../x"}}, "bad_id"),
        ({"request": {"method": "DELETE", "url": "Patient/../x"}}, "bad_reference"),
        ({"request": {"method": "DELETE", "url": "http://x/Patient/1"}}, "bad_reference"),
        ({"request": {"method": "PUT", "url": "Patient/1"}}, "missing"),
        ({"request": {"method": "BREW", "url": "Patient/1"}}, "bad_code"),
        ({}, "missing"),
    ],
)
def test_history_entries_refuse_malformed_entries(entry: Any, reason: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        fb.parse_history_entry(entry, 0)
    assert caught.value.reason == reason


def test_transaction_entries_use_if_none_exist_and_if_match() -> None:
    note = _valid()["DocumentReference"]
    uid = "6f1c0e7e-3f0a-4c41-9a55-1f0e9b0f2a10"
    note["identifier"] = [{"system": CLIENT_ID_SYSTEM, "value": uid}]
    create = fb.create_entry(note, full_url=f"urn:uuid:{uid}")
    assert create["request"] == {
        "method": "POST",
        "url": "DocumentReference",
        "ifNoneExist": f"identifier={CLIENT_ID_SYSTEM}|{uid}",
    }
    assert create["fullUrl"] == f"urn:uuid:{uid}"
    update = fb.update_entry(_valid()["Condition"], version_id="7")
    assert update["request"] == {"method": "PUT", "url": "Condition/c1", "ifMatch": 'W/"7"'}
    tx = fb.transaction([create, update])
    assert tx["type"] == "transaction" and len(fb.bundle_entries(tx, "transaction")) == 2
    assert fb.batch([])["type"] == "batch"
    with pytest.raises(ValueError):
        fb.create_entry(_valid()["Condition"])  # no client identifier
    with pytest.raises(ValueError):
        fb.update_entry({"resourceType": "Condition"}, version_id="1")


def test_transaction_response_entries_are_read_safely() -> None:
    ok = fb.parse_response_entry(
        {"response": {"status": "201 Created", "location": "Condition/c9/_history/1",
                      "etag": 'W/"1"'}}
    )  # fmt: skip
    assert (ok.status, ok.location, ok.version_id) == (201, "Condition/c9/_history/1", "1")
    conflict = fb.parse_response_entry(
        {"response": {"status": "412", "outcome": fb.operation_outcome("error", "conflict", "")}}
    )
    assert conflict.status == 412 and conflict.outcome["resourceType"] == "OperationOutcome"
    for bad in ({}, {"response": {"status": 201}}, {"response": {"status": "OK"}},
                {"response": {"status": "201", "location": 5}}, "x"):  # fmt: skip
        with pytest.raises(InvalidResource):
            fb.parse_response_entry(bad)


def test_the_printable_fast_path_never_skips_a_refused_character() -> None:
    """``_str`` skips the control-character pattern for printable text: that is exact only
    while every character the patterns refuse is non-printable. Checked over all of Unicode."""
    from sync.protocol.fhir.validate import _BAD_CHARS_RE, _BAD_TEXT_RE

    for pattern in (_BAD_TEXT_RE, _BAD_CHARS_RE):
        refused = [chr(c) for c in range(0x110000) if pattern.match(chr(c))]
        assert refused and not any(ch.isprintable() for ch in refused)
    bidi = _mutated("Patient", lambda r: r["name"][0].update(family="Smith\u202eevil"))
    with pytest.raises(InvalidResource) as caught:
        validate_resource(bidi)
    assert caught.value.reason == "control_char"
