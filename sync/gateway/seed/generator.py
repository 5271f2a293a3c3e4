"""Deterministic, realistic synthetic prison health care data as FHIR R4 resources.

Invariants guaranteed by :func:`generate`:

- **Deterministic**: the same ``(sites, patients, seed)`` yields the same resources in the same
  order, byte for byte once serialised; nothing depends on the clock, the machine or hash
  randomisation (dates count back from the fixed :data:`REFERENCE_INSTANT`).
- **Ordered**: one Organization per site first, then per patient: Patient, Flags,
  AllergyIntolerances, Conditions, MedicationStatements, Encounters, Observations,
  DocumentReferences — a resource never precedes one it references.
- **Valid**: every resource passes :func:`sync.protocol.fhir.validate.validate_resource`, carries
  ``meta.versionId`` "1" and a ``meta.lastUpdated`` no later than the reference instant.
- **Unique identifiers**: ids are stable (``pt000042``, ``pt000042-obs3``; sites use their
  code, e.g. ``hmp-brixton``); NHS numbers are unique, in the test range
  999 000 0000 – 999 999 9999 with a valid Modulus 11 check digit; prison numbers (``A1234BC``)
  are unique. Ids do not depend on the seed: two seeds loaded into one store overwrite.
- **Realistic mix**: mostly adult men, women in the women's estate, ages 18 to 85 skewed to the
  thirties, names with non-ASCII letters, apostrophes, hyphens and spaces; alerts, allergies
  (SNOMED), conditions (SNOMED), medications (SNOMED substances, one free-text regimen),
  vital signs (LOINC, UCUM) and progress notes. About 20 resources per patient on average.
"""

from __future__ import annotations

import base64
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

from sync.gateway.seed import names
from sync.protocol.fhir.read import nhs_check_digit
from sync.protocol.fhir.vocabulary import (
    ALERT_SYSTEM,
    LOINC_SYSTEM,
    NHS_NUMBER_SYSTEM,
    NOTE_CONTENT_TYPE,
    PRISON_NUMBER_SYSTEM,
    PROGRESS_NOTE_LOINC,
    SITE_SYSTEM,
    SNOMED_SYSTEM,
    UCUM_SYSTEM,
)

# Every generated date counts back from here, never from now(): determinism.
REFERENCE_INSTANT = datetime(2026, 1, 1, tzinfo=UTC)
# NHS test-range numbers with a usable check digit number about 909,000; keep a wide margin so
# drawing unique ones stays fast.
MAX_PATIENTS = 500_000
RESOURCE_ORDER = (
    "Organization", "Patient", "Flag", "AllergyIntolerance", "Condition",
    "MedicationStatement", "Encounter", "Observation", "DocumentReference",
)  # fmt: skip

_HL7 = "http://terminology.hl7.org/CodeSystem"
_CONDITION_WEIGHTS = [c[2] for c in names.CONDITIONS]
_TEAMS = ("mental health in-reach", "substance misuse", "primary care")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def site_codes(sites: int) -> list[tuple[str, str, bool]]:
    """The first ``sites`` sites as ``(code, name, women's estate)``; stable for any seed."""
    result = []
    for i in range(sites):
        base, women = names.PRISONS[i % len(names.PRISONS)]
        round_ = i // len(names.PRISONS)
        name = f"HMP {base}" + (f" {round_ + 1}" if round_ else "")
        code = name.lower().replace(" ", "-")
        result.append((code, name, women))
    return result


def _stamp(when: datetime) -> str:
    return when.isoformat()


def _meta(when: datetime) -> dict[str, str]:
    return {"versionId": "1", "lastUpdated": when.isoformat()}


def _concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text is not None:
        concept["text"] = text
    return concept


def _status(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"{_HL7}/{system}", "code": code}]}


def _organization(code: str, name: str, women: bool) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": code,
        "meta": _meta(REFERENCE_INSTANT - timedelta(days=3650)),
        "identifier": [{"system": SITE_SYSTEM, "value": code}],
        "active": True,
        "type": [{"text": "Prison (women's estate)" if women else "Prison (men's estate)"}],
        "name": name,
    }


class Visit(NamedTuple):
    """One encounter of one patient, with what its vital signs and note hang off."""

    pid: str
    subject: dict[str, str]
    n: int  # the encounter's number for this patient (ids are derived from it)
    encounter: dict[str, Any]
    kind: int  # index into names.ENCOUNTERS


class _Generator:
    """Holds the random stream and the uniqueness sets of one :func:`generate` call."""

    def __init__(self, sites: list[tuple[str, str, bool]], seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible synthetic data, not secrets
        self.sites = sites
        self.nhs_numbers: set[str] = set()
        self.prison_numbers: set[str] = set()

    def nhs_number(self) -> str:
        rng = self.rng
        while True:
            first_nine = str(999_000_000 + rng.randrange(1_000_000))
            check = nhs_check_digit(first_nine)
            number = f"{first_nine}{check}"
            if check is not None and number not in self.nhs_numbers:
                self.nhs_numbers.add(number)
                return number

    def prison_number(self) -> str:
        rng = self.rng
        while True:
            number = (
                f"{'AG'[rng.random() < 0.3]}{rng.randrange(10_000):04d}"
                f"{rng.choice(_LETTERS)}{rng.choice(_LETTERS)}"
            )
            if number not in self.prison_numbers:
                self.prison_numbers.add(number)
                return number

    def when(self, day: date) -> datetime:
        """A time in clinic hours on ``day`` (UTC, minutes in fives)."""
        minutes = 8 * 60 + 5 * self.rng.randrange(120)
        return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=minutes)

    def patient(self, index: int) -> Iterator[dict[str, Any]]:
        rng = self.rng
        pid = f"pt{index:06d}"
        subject = {"reference": f"Patient/{pid}"}
        code, site_name, women = self.sites[rng.randrange(len(self.sites))]
        other = rng.random() < 0.01
        gender = "other" if other else ("female" if women else "male")
        female_name = women if not other else rng.random() < 0.5
        given = rng.choice(names.FEMALE_GIVEN if female_name else names.MALE_GIVEN)
        family = rng.choice(names.SURNAMES)
        age = 18 + int(rng.betavariate(2.0, 5.0) * 67)
        ref_day = REFERENCE_INSTANT.date()
        birth = date(ref_day.year - age - 1, ref_day.month, ref_day.day) + timedelta(
            days=1 + rng.randrange(365)
        )
        arrival_day = ref_day - timedelta(days=rng.randrange(2, 900))
        arrival = self.when(arrival_day)
        identifiers = []
        if rng.random() >= 0.03:  # a few foreign nationals have no NHS number
            identifiers.append({"system": NHS_NUMBER_SYSTEM, "value": self.nhs_number()})
        identifiers.append({"system": PRISON_NUMBER_SYSTEM, "value": self.prison_number()})
        human_names: list[dict[str, Any]] = [
            {"use": "official", "family": family, "given": [given]}
        ]
        if rng.random() < 0.2:
            middle = rng.choice(names.FEMALE_GIVEN if female_name else names.MALE_GIVEN)
            human_names[0]["given"].append(middle)
        if rng.random() < 0.05:  # a recorded alias
            human_names.append({"use": "old", "family": rng.choice(names.SURNAMES)})
            human_names[1]["given"] = [given]
        yield {
            "resourceType": "Patient",
            "id": pid,
            "meta": _meta(arrival),
            "identifier": identifiers,
            "active": True,
            "name": human_names,
            "gender": gender,
            "birthDate": birth.isoformat(),
            "managingOrganization": {"reference": f"Organization/{code}", "display": site_name},
        }
        yield from self.flags(pid, subject, arrival)
        yield from self.allergies(pid, subject, arrival)
        conditions = self.pick_conditions()
        yield from self.conditions(pid, subject, arrival, conditions, age)
        medications = self.pick_medications(conditions)
        yield from self.medications(pid, subject, arrival, medications)
        problem = names.CONDITIONS[conditions[0]][1]
        medication = names.MEDICATIONS[medications[0]][2] if medications else "current medication"
        encounters = self.encounters(pid, subject, arrival, code, site_name)
        yield from (encounter for encounter, _ in encounters)
        weight = round(rng.uniform(48.0, 115.0), 1)
        visits = [
            Visit(pid, subject, n, encounter, kind)
            for n, (encounter, kind) in enumerate(encounters)
        ]
        for visit in visits:
            yield from self.vital_signs(visit, weight)
        for visit in visits:
            yield self.note(visit, problem, medication)

    def flags(self, pid: str, subject: dict[str, str], arrival: datetime) -> Iterator[Any]:
        rng = self.rng
        roll = rng.random()
        count = 0 if roll < 0.55 else (1 if roll < 0.85 else 2)
        for n, (code, display, category) in enumerate(rng.sample(names.ALERTS, count)):
            start = arrival + timedelta(days=rng.randrange(0, 60))
            start = min(start, REFERENCE_INSTANT - timedelta(hours=1))
            active = rng.random() < 0.8
            flag: dict[str, Any] = {
                "resourceType": "Flag",
                "id": f"{pid}-flag{n}",
                "meta": _meta(start),
                "status": "active" if active else "inactive",
                "category": [_concept(f"{_HL7}/flag-category", category, category.title())],
                "code": _concept(ALERT_SYSTEM, code, display, display),
                "subject": dict(subject),
                "period": {"start": _stamp(start)},
            }
            if not active:
                flag["period"]["end"] = _stamp(min(start + timedelta(days=14), REFERENCE_INSTANT))
            yield flag

    def allergies(self, pid: str, subject: dict[str, str], arrival: datetime) -> Iterator[Any]:
        rng = self.rng
        roll = rng.random()
        count = 0 if roll < 0.6 else (1 if roll < 0.9 else 2)
        base: dict[str, Any] = {
            "resourceType": "AllergyIntolerance",
            "meta": _meta(arrival),
            "clinicalStatus": _status("allergyintolerance-clinical", "active"),
            "verificationStatus": _status("allergyintolerance-verification", "confirmed"),
        }
        if count == 0:
            code, display = names.NO_KNOWN_ALLERGY
            yield base | {
                "id": f"{pid}-alg0",
                "code": _concept(SNOMED_SYSTEM, code, display, display),
                "patient": dict(subject),
                "recordedDate": _stamp(arrival),
            }
            return
        seen: set[str] = set()
        for n in range(count):
            code, display, criticality, (r_code, r_display) = rng.choice(names.ALLERGIES)
            if code in seen:
                continue
            seen.add(code)
            category = {"256349002": "food", "111088007": "environment"}.get(code, "medication")
            yield base | {
                "id": f"{pid}-alg{n}",
                "type": "allergy",
                "category": [category],
                "criticality": criticality,
                "code": _concept(SNOMED_SYSTEM, code, display, display),
                "patient": dict(subject),
                "recordedDate": _stamp(arrival),
                "reaction": [{"manifestation": [_concept(SNOMED_SYSTEM, r_code, r_display)]}],
            }

    def pick_conditions(self) -> list[int]:
        rng = self.rng
        roll = rng.random()
        wanted = 1 if roll < 0.35 else (2 if roll < 0.65 else (3 if roll < 0.85 else 4))
        picked: list[int] = []
        while len(picked) < wanted:
            i = rng.choices(range(len(names.CONDITIONS)), _CONDITION_WEIGHTS)[0]
            if i not in picked:
                picked.append(i)
        return picked

    def conditions(
        self, pid: str, subject: dict[str, str], arrival: datetime, picked: list[int], age: int
    ) -> Iterator[Any]:
        rng = self.rng
        for n, i in enumerate(picked):
            code, display, _, _ = names.CONDITIONS[i]
            onset_years = rng.randrange(0, max(1, age - 16))
            onset = date(arrival.year - onset_years, 1 + rng.randrange(12), 1)
            resolved = code == "279039007" and rng.random() < 0.5
            yield {
                "resourceType": "Condition",
                "id": f"{pid}-cond{n}",
                "meta": _meta(arrival),
                "clinicalStatus": _status(
                    "condition-clinical", "resolved" if resolved else "active"
                ),
                "verificationStatus": _status("condition-ver-status", "confirmed"),
                "category": [
                    _concept(f"{_HL7}/condition-category", "problem-list-item", "Problem")
                ],
                "code": _concept(SNOMED_SYSTEM, code, display, display),
                "subject": dict(subject),
                "onsetDateTime": onset.isoformat()[:7],
                "recordedDate": _stamp(arrival),
            }

    def pick_medications(self, conditions: list[int]) -> list[str]:
        rng = self.rng
        picked: list[str] = []
        for i in conditions:
            options = names.CONDITIONS[i][3]
            if options and rng.random() < 0.85:
                key = rng.choice(options)
                if key not in picked:
                    picked.append(key)
        for key, chance in (("paracetamol", 0.1), ("omeprazole", 0.06)):
            if key not in picked and rng.random() < chance:
                picked.append(key)
        return picked

    def medications(
        self, pid: str, subject: dict[str, str], arrival: datetime, picked: list[str]
    ) -> Iterator[Any]:
        rng = self.rng
        for n, key in enumerate(picked):
            code, display, product, dosages = names.MEDICATIONS[key]
            concept = _concept(SNOMED_SYSTEM, code, display, product) if code else {"text": product}
            yield {
                "resourceType": "MedicationStatement",
                "id": f"{pid}-med{n}",
                "meta": _meta(arrival),
                "status": "active" if rng.random() < 0.85 else "stopped",
                "medicationCodeableConcept": concept,
                "subject": dict(subject),
                "effectivePeriod": {"start": _stamp(arrival)},
                "dateAsserted": _stamp(arrival),
                "dosage": [{"text": rng.choice(dosages)}],
            }

    def encounters(
        self, pid: str, subject: dict[str, str], arrival: datetime, site: str, site_name: str
    ) -> list[tuple[dict[str, Any], int]]:
        rng = self.rng
        plan: list[tuple[datetime, int]] = [(arrival, 0)]
        last_day = REFERENCE_INSTANT.date() - timedelta(days=1)
        if rng.random() < 0.75 and arrival.date() < last_day:
            plan.append((self.when(arrival.date() + timedelta(days=1)), 1))
        span = (last_day - arrival.date()).days
        extra = 0
        while extra < 4 and rng.random() < 0.5:
            extra += 1
        for _ in range(extra if span > 0 else 0):
            day = arrival.date() + timedelta(days=1 + rng.randrange(span))
            plan.append((self.when(day), 2 + rng.randrange(len(names.ENCOUNTERS) - 2)))
        plan.sort(key=lambda item: item[0])
        result = []
        for n, (start, kind) in enumerate(plan):
            text, code, display, _, _ = names.ENCOUNTERS[kind]
            end = start + timedelta(minutes=15 + 5 * rng.randrange(6))
            encounter = {
                "resourceType": "Encounter",
                "id": f"{pid}-enc{n}",
                "meta": _meta(end),
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                    "display": "ambulatory",
                },
                "type": [_concept(SNOMED_SYSTEM, code, display, text)],
                "subject": dict(subject),
                "period": {"start": _stamp(start), "end": _stamp(end)},
                "serviceProvider": {"reference": f"Organization/{site}", "display": site_name},
            }
            result.append((encounter, kind))
        return result

    def vital_signs(self, visit: Visit, weight: float) -> Iterator[Any]:
        pid, subject, n, encounter, kind = visit
        rng = self.rng
        extent = names.ENCOUNTERS[kind][3]
        if extent == "none" or (extent == "some" and rng.random() >= 0.6):
            return
        when = encounter["period"]["start"]
        reading: list[tuple[str, str, str, float, float, int]] = [names.HEART_RATE]
        if extent == "full":
            reading += [names.RESPIRATORY_RATE, names.TEMPERATURE, names.SPO2]
        panels: list[tuple[tuple[str, str], list[Any]]] = [
            (names.BP_PANEL, [names.BP_SYSTOLIC, names.BP_DIASTOLIC])
        ]
        panels += [((code[0], code[1]), [code]) for code in reading]
        if extent == "full" or rng.random() < 0.3:
            panels.append(((names.BODY_WEIGHT[0], names.BODY_WEIGHT[1]), [names.BODY_WEIGHT]))
        for m, ((code, display), parts) in enumerate(panels):
            observation: dict[str, Any] = {
                "resourceType": "Observation",
                "id": f"{pid}-obs{n}-{m}",
                "meta": dict(encounter["meta"]),
                "status": "final",
                "category": [
                    _concept(f"{_HL7}/observation-category", "vital-signs", "Vital Signs")
                ],
                "code": _concept(LOINC_SYSTEM, code, display, display),
                "subject": dict(subject),
                "encounter": {"reference": f"Encounter/{encounter['id']}"},
                "effectiveDateTime": when,
            }
            values = [self.quantity(part, weight) for part in parts]
            if len(parts) == 1:
                observation["valueQuantity"] = values[0]
            else:
                observation["component"] = [
                    {"code": _concept(LOINC_SYSTEM, part[0], part[1], part[1]), "valueQuantity": v}
                    for part, v in zip(parts, values, strict=True)
                ]
            yield observation

    def quantity(self, part: tuple[str, str, str, float, float, int], weight: float) -> Any:
        _, _, unit, low, high, decimals = part
        if part is names.BODY_WEIGHT:
            value: float = round(weight + self.rng.uniform(-2.0, 2.0), 1)
        else:
            value = round(self.rng.uniform(low, high), decimals)
        number: float | int = value if decimals else int(value)
        return {"value": number, "unit": unit, "system": UCUM_SYSTEM, "code": unit}

    def note(self, visit: Visit, problem: str, medication: str) -> dict[str, Any]:
        pid, subject, n, encounter, kind = visit
        rng = self.rng
        text_, _, _, _, templates = names.ENCOUNTERS[kind]
        body = rng.choice(templates).format(
            problem=problem, medication=medication, team=rng.choice(_TEAMS)
        )
        author = (
            f"{rng.choice(names.STAFF_ROLES)} {rng.choice(_LETTERS)}. {rng.choice(names.SURNAMES)}"
        )
        when = encounter["period"]["end"]
        return {
            "resourceType": "DocumentReference",
            "id": f"{pid}-note{n}",
            "meta": dict(encounter["meta"]),
            "status": "current",
            "docStatus": "final",
            "type": _concept(LOINC_SYSTEM, PROGRESS_NOTE_LOINC, "Progress note", "Progress note"),
            "subject": dict(subject),
            "date": when,
            "author": [{"display": author}],
            "description": text_,
            "content": [
                {
                    "attachment": {
                        "contentType": NOTE_CONTENT_TYPE,
                        "data": base64.b64encode(body.encode("utf-8")).decode("ascii"),
                        "title": text_,
                    }
                }
            ],
            "context": {"encounter": [{"reference": f"Encounter/{encounter['id']}"}]},
        }


def generate(*, sites: int, patients: int, seed: int) -> Iterator[dict[str, Any]]:
    """Yield the Organizations of ``sites`` prisons, then ``patients`` patients' records."""
    if sites < 1:
        raise ValueError("at least one site is needed")
    if not 0 <= patients <= MAX_PATIENTS:
        raise ValueError(f"patients must be between 0 and {MAX_PATIENTS}")
    site_list = site_codes(sites)
    for code, name, women in site_list:
        yield _organization(code, name, women)
    generator = _Generator(site_list, seed)
    for index in range(1, patients + 1):
        yield from generator.patient(index)


def summary(resources: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Counts per resource type, in :data:`RESOURCE_ORDER` (types absent are left out)."""
    counts = Counter(resource["resourceType"] for resource in resources)
    ordered = {kind: counts.pop(kind) for kind in RESOURCE_ORDER if kind in counts}
    ordered.update(sorted(counts.items()))
    return ordered
