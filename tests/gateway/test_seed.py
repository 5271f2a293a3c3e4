"""The synthetic data generator: deterministic, valid, unique identifiers, realistic, scalable."""

from __future__ import annotations

import base64
import re
from datetime import date
from functools import cache
from typing import Any

import orjson
import pytest

from sync.gateway.seed.generator import (
    REFERENCE_INSTANT,
    RESOURCE_ORDER,
    generate,
    site_codes,
    summary,
)
from sync.protocol.fhir.bounded_json import loads_bounded
from sync.protocol.fhir.read import (
    nhs_check_digit_ok,
    nhs_number,
    patient_ref_of,
    prison_number,
    site_of_patient,
)
from sync.protocol.fhir.validate import parse_instant, validate_resource
from sync.protocol.fhir.vocabulary import (
    LOINC_SYSTEM,
    NHS_NUMBER_SYSTEM,
    NOTE_CONTENT_TYPE,
    PATIENT_FIELD,
    PRISON_NUMBER_SYSTEM,
    SITE_SYSTEM,
    UCUM_SYSTEM,
)


@cache
def _sample() -> tuple[dict[str, Any], ...]:
    return tuple(generate(sites=6, patients=400, seed=11))


def _serialised(**kwargs: int) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in generate(**kwargs))


def test_same_seed_gives_byte_identical_output() -> None:
    first = _serialised(sites=3, patients=150, seed=7)
    assert first == _serialised(sites=3, patients=150, seed=7)
    assert first != _serialised(sites=3, patients=150, seed=8)


def test_output_does_not_depend_on_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    import sync.gateway.seed.generator as seed_module

    before = _serialised(sites=2, patients=30, seed=3)

    class Frozen(seed_module.datetime):  # type: ignore[name-defined,misc]
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            raise AssertionError("the generator must not read the clock")

    monkeypatch.setattr(seed_module, "datetime", Frozen)
    assert _serialised(sites=2, patients=30, seed=3) == before


def test_every_resource_is_valid_and_survives_the_wire() -> None:
    for resource in _sample():
        assert validate_resource(loads_bounded(orjson.dumps(resource))) == resource
        assert resource["meta"]["versionId"] == "1"
        assert parse_instant(resource["meta"]["lastUpdated"]) <= REFERENCE_INSTANT


def test_order_sites_first_then_each_patient_and_references_point_backwards() -> None:
    seen: set[str] = set()
    kinds = [r["resourceType"] for r in _sample()]
    assert kinds[:6] == ["Organization"] * 6
    rank = {kind: i for i, kind in enumerate(RESOURCE_ORDER)}
    current = None
    for resource in _sample():
        key = f"{resource['resourceType']}/{resource['id']}"
        if resource["resourceType"] == "Patient":
            current = resource["id"]
            last_rank = rank["Patient"]
        elif resource["resourceType"] != "Organization":
            assert patient_ref_of(resource) == current
            assert rank[resource["resourceType"]] >= last_rank
            last_rank = rank[resource["resourceType"]]
        for ref in re.findall(rb'"reference":"([^"]+)"', orjson.dumps(resource)):
            assert ref.decode() in seen, (key, ref)
        seen.add(key)


def test_ids_and_identifiers_are_unique_and_well_formed() -> None:
    resources = _sample()
    keys = [f"{r['resourceType']}/{r['id']}" for r in resources]
    assert len(keys) == len(set(keys))
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    nhs = [n for n in map(nhs_number, patients) if n is not None]
    prison = [prison_number(p) for p in patients]
    assert len(nhs) == len(set(nhs)) and len(nhs) >= 0.9 * len(patients)
    assert all(nhs_check_digit_ok(n) and 9_990_000_000 <= int(n) <= 9_999_999_999 for n in nhs)
    assert len(prison) == len(set(prison)) == len(patients)
    assert all(p is not None and re.fullmatch(r"[A-Z]\d{4}[A-Z]{2}", p) for p in prison)
    systems = {i["system"] for p in patients for i in p["identifier"]}
    assert systems == {NHS_NUMBER_SYSTEM, PRISON_NUMBER_SYSTEM}


def test_identifiers_stay_unique_at_a_larger_scale() -> None:
    patients = [
        r for r in generate(sites=2, patients=4000, seed=5) if r["resourceType"] == "Patient"
    ]
    nhs = [n for n in map(nhs_number, patients) if n]
    prison = [prison_number(p) for p in patients]
    assert len(set(nhs)) == len(nhs) and len(set(prison)) == len(prison) == 4000


def test_sites_are_prisons_with_stable_codes_including_the_womens_estate() -> None:
    sites = site_codes(3)
    assert [code for code, _, _ in sites] == ["hmp-brixton", "hmp-pentonville", "hmp-styal"]
    assert [women for _, _, women in sites] == [False, False, True]
    many = site_codes(200)
    assert len({code for code, _, _ in many}) == 200
    organizations = [r for r in _sample() if r["resourceType"] == "Organization"]
    for org, (code, name, _) in zip(organizations, site_codes(6), strict=True):
        assert (org["id"], org["name"]) == (code, name) and name.startswith("HMP ")
        assert org["identifier"] == [{"system": SITE_SYSTEM, "value": code}]


def test_patients_are_adults_mostly_men_and_women_in_the_womens_estate() -> None:
    women_sites = {code for code, _, women in site_codes(6) if women}
    patients = [r for r in _sample() if r["resourceType"] == "Patient"]
    reference = REFERENCE_INSTANT.date()
    for patient in patients:
        born = date.fromisoformat(patient["birthDate"])
        age = (
            reference.year - born.year - ((reference.month, reference.day) < (born.month, born.day))
        )
        assert 18 <= age <= 85
        site = site_of_patient(patient)
        assert site in {code for code, _, _ in site_codes(6)}
        expected = "female" if site in women_sites else "male"
        assert patient["gender"] in {expected, "other"}
    genders = [p["gender"] for p in patients]
    assert genders.count("male") > 0.6 * len(patients)
    assert genders.count("female") > 0
    assert len({site_of_patient(p) for p in patients}) == 6


def test_names_include_non_ascii_apostrophes_and_hyphens() -> None:
    parts = [
        part
        for r in _sample()
        if r["resourceType"] == "Patient"
        for name in r["name"]
        for part in [name.get("family", ""), *name.get("given", [])]
    ]
    assert any(not p.isascii() for p in parts)
    assert any("'" in p for p in parts)
    assert any("-" in p for p in parts)


def test_clinical_content_uses_the_expected_code_systems() -> None:
    resources = _sample()
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    by_code: dict[str, list[dict[str, Any]]] = {}
    for obs in observations:
        coding = obs["code"]["coding"][0]
        assert coding["system"] == LOINC_SYSTEM
        by_code.setdefault(coding["code"], []).append(obs)
    assert set(by_code) == {"85354-9", "8867-4", "9279-1", "8310-5", "59408-5", "29463-7"}
    units = {"8867-4": "/min", "9279-1": "/min", "8310-5": "Cel", "59408-5": "%", "29463-7": "kg"}
    for code, unit in units.items():
        for obs in by_code[code]:
            quantity = obs["valueQuantity"]
            assert (quantity["system"], quantity["code"], quantity["unit"]) == (
                UCUM_SYSTEM,
                unit,
                unit,
            )
    for panel in by_code["85354-9"]:
        assert "valueQuantity" not in panel
        parts = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in panel["component"]}
        assert set(parts) == {"8480-6", "8462-4"}
        assert all(q["code"] == "mm[Hg]" and q["system"] == UCUM_SYSTEM for q in parts.values())
        assert parts["8480-6"]["value"] > parts["8462-4"]["value"]
    for temp in by_code["8310-5"]:
        assert 35.0 < temp["valueQuantity"]["value"] < 40.0
    notes = [r for r in resources if r["resourceType"] == "DocumentReference"]
    for note in notes:
        assert note["type"]["coding"][0]["code"] == "11506-3"
        attachment = note["content"][0]["attachment"]
        assert attachment["contentType"] == NOTE_CONTENT_TYPE
        assert len(base64.b64decode(attachment["data"]).decode("utf-8")) > 40
    texts = {
        r["code"]["coding"][0]["display"]
        for r in resources
        if r["resourceType"] in {"Flag", "Condition", "AllergyIntolerance"}
    }
    for expected in ("ACCT open: at risk of self-harm", "Opioid dependence", "Penicillin"):
        assert expected in texts
    medications = {
        r["medicationCodeableConcept"].get("text", "")
        for r in resources
        if r["resourceType"] == "MedicationStatement"
    }
    assert any("Methadone" in m for m in medications)
    assert any("Buprenorphine" in m for m in medications)


def test_counts_scale_with_patients_at_about_twenty_per_patient() -> None:
    small = summary(generate(sites=2, patients=250, seed=1))
    large = summary(generate(sites=2, patients=1000, seed=1))
    assert small["Patient"] == 250 and large["Patient"] == 1000
    assert small["Organization"] == large["Organization"] == 2
    assert list(large) == [k for k in RESOURCE_ORDER if k in large]
    total = sum(large.values())
    assert 18 * 1000 <= total <= 23 * 1000
    for kind in PATIENT_FIELD:
        assert large[kind] > 2 * small[kind]


def test_summary_counts_types_in_order() -> None:
    counts = summary([{"resourceType": "Condition"}, {"resourceType": "Patient"}] * 2)
    assert list(counts.items()) == [("Patient", 2), ("Condition", 2)]


@pytest.mark.parametrize(
    "kwargs",
    [{"sites": 0, "patients": 1, "seed": 1}, {"sites": 1, "patients": -1, "seed": 1},
     {"sites": 1, "patients": 10**7, "seed": 1}],
)  # fmt: skip
def test_bad_arguments_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        next(generate(**kwargs))
