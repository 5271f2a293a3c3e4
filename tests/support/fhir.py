"""Hand-made, realistic FHIR R4 resources for the records tests (docs/conventions-local.md).

Also opens a real SQLCipher 4 database with a random raw key and runs the vault's migrations,
the way the vault does, so the records tests need no other engineer's code.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import sqlcipher3

from client.core.schema import MIGRATIONS

NHS = "https://fhir.nhs.uk/Id/nhs-number"
PRISON = "https://gatehouse.example/fhir/prison-number"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
STAMP = "2026-11-01T09:30:00+00:00"


def open_db(path: Path) -> sqlite3.Connection:
    """A keyed SQLCipher database with the records schema (autocommit; callers BEGIN)."""
    conn: sqlite3.Connection = sqlcipher3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA key = \"x'" + secrets.token_hex(32) + "'\"")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cipher_memory_security=ON")
    for script in MIGRATIONS:
        conn.executescript(script)
    return conn


def nhs_number(serial: int) -> str:
    """A Modulus-11-valid NHS number in the synthetic range 999 000 0000 – 999 999 9999."""
    n = serial
    while True:
        digits = [9, 9, 9, *(int(d) for d in f"{n % 1_000_000:06d}")]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        if check == 11:
            check = 0
        if check != 10:
            return "".join(map(str, digits)) + str(check)
        n += 1


def meta(version: str = "1", updated: str = STAMP) -> dict[str, str]:
    return {"versionId": version, "lastUpdated": updated}


def patient(
    pid: str,
    family: str,
    given: list[str],
    *,
    birth_date: str = "1984-03-07",
    nhs: str | None = None,
    prison: str | None = None,
    site: str = "hmp-brixton",
    version: str = "1",
    updated: str = STAMP,
    gender: str = "male",
) -> dict[str, Any]:
    identifiers = []
    if nhs:
        identifiers.append({"system": NHS, "value": nhs})
    if prison:
        identifiers.append({"system": PRISON, "value": prison})
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": meta(version, updated),
        "identifier": identifiers,
        "name": [{"use": "official", "family": family, "given": given}],
        "gender": gender,
        "birthDate": birth_date,
        "managingOrganization": {"reference": f"Organization/{site}"},
    }


def _subject(pid: str) -> dict[str, str]:
    return {"reference": f"Patient/{pid}"}


def flag(
    rid: str,
    pid: str,
    text: str,
    *,
    status: str = "active",
    start: str = "2025-01-10",
    end: str | None = None,
    version: str = "1",
) -> dict[str, Any]:
    period: dict[str, str] = {"start": start}
    if end:
        period["end"] = end
    return {
        "resourceType": "Flag",
        "id": rid,
        "meta": meta(version),
        "status": status,
        "category": [{"text": "Safety"}],
        "code": {"text": text},
        "subject": _subject(pid),
        "period": period,
    }


def allergy(
    rid: str,
    pid: str,
    substance: str,
    *,
    criticality: str = "high",
    clinical: str = "active",
    reaction: str = "Anaphylaxis",
) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "id": rid,
        "meta": meta(),
        "clinicalStatus": {"coding": [{"code": clinical}]},
        "verificationStatus": {"coding": [{"code": "confirmed"}]},
        "criticality": criticality,
        "code": {"text": substance},
        "patient": _subject(pid),
        "recordedDate": "2024-05-02",
        "reaction": [{"manifestation": [{"text": reaction}]}],
    }


def condition(
    rid: str, pid: str, text: str, *, clinical: str = "active", onset: str = "2020-06-01"
) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": rid,
        "meta": meta(),
        "clinicalStatus": {"coding": [{"code": clinical}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "display": text}]},
        "subject": _subject(pid),
        "onsetDateTime": onset,
    }


def medication(
    rid: str, pid: str, text: str, dose: str, *, status: str = "active"
) -> dict[str, Any]:
    return {
        "resourceType": "MedicationStatement",
        "id": rid,
        "meta": meta(),
        "status": status,
        "medicationCodeableConcept": {"text": text},
        "subject": _subject(pid),
        "effectiveDateTime": "2025-02-03",
        "dosage": [{"text": dose}],
    }


def observation(
    rid: str,
    pid: str,
    code: str,
    value: float,
    unit: str,
    when: str,
    *,
    status: str = "final",
    updated: str = STAMP,
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "meta": meta("1", updated),
        "status": status,
        "category": [{"coding": [{"code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": _subject(pid),
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def blood_pressure(
    rid: str, pid: str, systolic: float, diastolic: float, when: str
) -> dict[str, Any]:
    def comp(code: str, value: float) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        }

    return {
        "resourceType": "Observation",
        "id": rid,
        "meta": meta(),
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": _subject(pid),
        "effectiveDateTime": when,
        "component": [comp("8480-6", systolic), comp("8462-4", diastolic)],
    }


def encounter(
    rid: str, pid: str, when: str, *, kind: str = "GP clinic", site: str = "hmp-brixton"
) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": rid,
        "meta": meta(),
        "status": "finished",
        "class": {"code": "AMB"},
        "type": [{"text": kind}],
        "subject": _subject(pid),
        "period": {"start": when, "end": when},
        "reasonCode": [{"text": "Review"}],
        "serviceProvider": {"reference": f"Organization/{site}"},
    }


def note(
    rid: str, pid: str, when: str, text: str, *, encounter_id: str | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": rid,
        "meta": meta(),
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}]},
        "subject": _subject(pid),
        "date": when,
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                }
            }
        ],
    }
    if encounter_id:
        doc["context"] = {"encounter": [{"reference": f"Encounter/{encounter_id}"}]}
    return doc


# The search matrix population: names that break naive search.
SEARCH_PATIENTS: list[dict[str, Any]] = [
    patient("p-jose", "García", ["José"], nhs=nhs_number(123456), prison="A1234BC"),
    patient(
        "p-zoe", "Brown", ["Zoë"], birth_date="1990-12-25", nhs=nhs_number(200001), prison="B2345CD"
    ),
    patient(
        "p-ode",
        "Ødegård",
        ["Ingrid"],
        birth_date="1975-01-31",
        nhs=nhs_number(300001),
        prison="C3456DE",
        gender="female",
    ),
    patient(
        "p-obrien",
        "O'Brien",
        ["Sean"],
        birth_date="1979-11-02",
        nhs=nhs_number(400001),
        prison="D4567EF",
    ),
    patient(
        "p-smithjones",
        "Smith-Jones",
        ["Alex"],
        birth_date="2000-02-29",
        nhs=nhs_number(500001),
        prison="E5678FG",
    ),
    patient(
        "p-john",
        "Smithers",
        ["John", "Paul"],
        birth_date="1968-07-04",
        nhs=nhs_number(600001),
        prison="F6789GH",
    ),
    patient(
        "p-html",
        "<b>Bold</b>",
        ["<script>alert(1)</script>"],
        birth_date="1999-09-09",
        nhs=nhs_number(700001),
        prison="G7890HI",
    ),
    patient(
        "p-away",
        "Away",
        ["Transferred"],
        birth_date="1984-03-07",
        nhs=nhs_number(800001),
        prison="H8901IJ",
        site="hmp-pentonville",
    ),
]
