"""The chart read model: what a clinician sees on opening a patient (docs/records.md).

Invariants:
- ``Chart`` is frozen and holds plain strings, numbers and dates only: no HTML is produced or
  interpreted (the UI shows every string as plain text, UI-1).
- Safety first: the banner, then active alerts (Flags) and allergies, before problems,
  medications, vitals and the timeline, in that field order.
- Latest vitals: per measurement (BP, heart rate, respiratory rate, temperature, SpO2, weight,
  height, BMI) the Observation with the latest effective time wins (ties: the later
  ``meta.lastUpdated``); entered-in-error and cancelled Observations never show.
- Timeline: encounters and notes, newest first, undated entries last; notes decoded to text
  (only ``text/plain`` attachments, bounded size; anything else is named, not shown).
- Each timeline entry written on a laptop says where it has got to (``note_filing``: saved on
  this laptop, at the gateway, filed in the health record, or held with the reason).
- Read-only: opening a chart never writes (the session audits the view in its own transaction).
- Unknown shapes in stored resources degrade to empty fields, never to an exception.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from client.core.completeness import Completeness, patient_completeness
from client.core.errors import UserFacingError
from client.core.note_filing import NoteFiling, note_filing, unsent_ids
from client.core.records import (
    LOCAL_VERSION,
    coding_code,
    get,
    is_active,
    parse_fhir_datetime,
    patient_resources,
)
from client.core.search import patient_fields

MAX_NOTE_BYTES = 1024 * 1024  # decoded note text shown in a chart
_MIN = datetime.min.replace(tzinfo=UTC)

# kind -> (label, LOINC codes that count as this kind)
VITAL_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "blood_pressure": ("Blood pressure", ("85354-9",)),
    "heart_rate": ("Heart rate", ("8867-4",)),
    "respiratory_rate": ("Respiratory rate", ("9279-1",)),
    "temperature": ("Temperature", ("8310-5",)),
    "spo2": ("Oxygen saturation", ("59408-5", "2708-6")),
    "weight": ("Weight", ("29463-7",)),
    "height": ("Height", ("8302-2",)),
    "bmi": ("BMI", ("39156-5",)),
}
BP_COMPONENTS = {"8480-6": "systolic", "8462-4": "diastolic"}
_KIND_BY_CODE = {code: kind for kind, (_, codes) in VITAL_KINDS.items() for code in codes}
_HIDDEN_OBSERVATION_STATUS = ("entered-in-error", "cancelled")


class ChartNotFound(UserFacingError):
    """The patient is not on this device."""

    def __init__(self) -> None:
        super().__init__(
            "patient_not_found",
            "This patient's record is not on this laptop. Sync, then search again.",
        )


@dataclass(frozen=True)
class Banner:
    patient_id: str
    name: str
    birth_date: date | None
    age: int | None
    gender: str | None
    nhs_number: str | None
    prison_number: str | None
    site: str | None
    banner_name: str = ""  # NHS CUI: "FAMILY, Given (Title)"; ``name`` is "Family, Given"


@dataclass(frozen=True)
class Alert:
    id: str
    text: str
    category: str
    since: date | None


@dataclass(frozen=True)
class Allergy:
    id: str
    substance: str
    criticality: str | None
    reactions: tuple[str, ...]
    recorded: date | None


@dataclass(frozen=True)
class Problem:
    id: str
    text: str
    onset: date | None


@dataclass(frozen=True)
class Medication:
    id: str
    text: str
    dosage: str
    since: date | None


@dataclass(frozen=True)
class VitalReading:
    kind: str
    label: str
    code: str
    value: float | None
    unit: str
    components: tuple[tuple[str, float, str], ...]  # (name, value, unit) for blood pressure
    effective: datetime | None
    observation_id: str


@dataclass(frozen=True)
class TimelineEntry:
    kind: str  # "encounter" | "note"
    id: str
    when: datetime | None
    title: str
    text: str
    unsent: bool
    filing: NoteFiling | None = None  # where a note written on a laptop has got to


@dataclass(frozen=True)
class Chart:
    banner: Banner
    alerts: tuple[Alert, ...]
    allergies: tuple[Allergy, ...]
    # An explicit, active "no known allergy" record (SNOMED 716186003 / 409137002) and no real
    # allergy: shown as such, never as an allergy and never confused with "nothing recorded".
    no_known_allergies: bool
    # Whether the laptop holds the whole record (UI-5): when not, the alert and allergy boxes
    # say "not available on this laptop", never "none recorded".
    completeness: Completeness
    problems: tuple[Problem, ...]
    medications: tuple[Medication, ...]
    vitals: tuple[VitalReading, ...]
    timeline: tuple[TimelineEntry, ...]


# SNOMED CT: 716186003 No known allergy; 409137002 No known history of drug allergy.
NO_KNOWN_ALLERGY_CODES = frozenset({"716186003", "409137002"})


def _is_no_known_allergy(resource: Any) -> bool:
    code = resource.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    return any(
        isinstance(c, dict) and c.get("code") in NO_KNOWN_ALLERGY_CODES
        for c in (codings if isinstance(codings, list) else [])
    )


def concept_text(concept: Any) -> str:
    """Human text of a CodeableConcept: ``text``, else the first coding's display or code."""
    if not isinstance(concept, dict):
        return ""
    if isinstance(concept.get("text"), str) and concept["text"].strip():
        return str(concept["text"])
    codings = concept.get("coding")
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, dict):
            for key in ("display", "code"):
                if isinstance(coding.get(key), str) and coding[key]:
                    return str(coding[key])
    return ""


def _first_concept_text(value: Any) -> str:
    if isinstance(value, list):
        for item in value:
            if text := concept_text(item):
                return text
        return ""
    return concept_text(value)


def _day(value: Any) -> date | None:
    moment = parse_fhir_datetime(value)
    return moment.date() if moment else None


def _start(period: Any) -> Any:
    return period.get("start") if isinstance(period, dict) else None


def _age(born: date | None, today: date) -> int | None:
    if born is None or born > today:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _number(quantity: Any) -> tuple[float | None, str]:
    if not isinstance(quantity, dict):
        return None, ""
    value = quantity.get("value")
    unit = quantity.get("unit") if isinstance(quantity.get("unit"), str) else quantity.get("code")
    number = (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    )
    return number, unit if isinstance(unit, str) else ""


def _observation_time(obs: Mapping[str, Any]) -> datetime | None:
    return (
        parse_fhir_datetime(obs.get("effectiveDateTime"))
        or parse_fhir_datetime(_start(obs.get("effectivePeriod")))
        or parse_fhir_datetime(obs.get("issued"))
    )


def _vital(obs: Mapping[str, Any]) -> VitalReading | None:
    if obs.get("status") in _HIDDEN_OBSERVATION_STATUS:
        return None
    codings = obs.get("code", {}).get("coding") if isinstance(obs.get("code"), dict) else None
    code = next(
        (
            c["code"]
            for c in (codings if isinstance(codings, list) else [])
            if isinstance(c, dict) and c.get("code") in _KIND_BY_CODE
        ),
        None,
    )
    if code is None:
        return None
    kind = _KIND_BY_CODE[code]
    value, unit = _number(obs.get("valueQuantity"))
    parts: list[tuple[str, float, str]] = []
    components = obs.get("component")
    for comp in components if isinstance(components, list) else []:
        if not isinstance(comp, dict):
            continue
        name = BP_COMPONENTS.get(coding_code(comp.get("code")) or "")
        comp_value, comp_unit = _number(comp.get("valueQuantity"))
        if name and comp_value is not None:
            parts.append((name, comp_value, comp_unit))
    if value is None and not parts:
        return None
    parts.sort(key=lambda p: p[0] != "systolic")
    return VitalReading(
        kind,
        VITAL_KINDS[kind][0],
        code,
        value,
        unit,
        tuple(parts),
        _observation_time(obs),
        str(obs.get("id", "")),
    )


def _note_text(doc: Mapping[str, Any]) -> str:
    contents = doc.get("content")
    attachment = (
        contents[0].get("attachment")
        if isinstance(contents, list) and contents and isinstance(contents[0], dict)
        else None
    )
    if not isinstance(attachment, dict):
        return ""
    ctype = attachment.get("contentType")
    if not isinstance(ctype, str) or not ctype.lower().startswith("text/plain"):
        return f"[attachment of type {ctype if isinstance(ctype, str) else 'unknown'} not shown]"
    data = attachment.get("data")
    if not isinstance(data, str):
        return ""
    try:
        raw = base64.b64decode(data[: (MAX_NOTE_BYTES * 4) // 3 + 4], validate=False)
    except (binascii.Error, ValueError):
        return "[note could not be decoded]"
    return raw[:MAX_NOTE_BYTES].decode("utf-8", errors="replace")


def _note_title(doc: Mapping[str, Any]) -> str:
    if isinstance(doc.get("description"), str) and doc["description"].strip():
        return str(doc["description"])
    return concept_text(doc.get("type")) or "Note"


def _timeline_entry(
    res: Mapping[str, Any], unsent_ids: Mapping[tuple[str, str], str] | None = None
) -> TimelineEntry | None:
    rid = str(res.get("id", ""))
    meta = res.get("meta")
    unsent = isinstance(meta, dict) and meta.get("versionId") == LOCAL_VERSION
    filing = note_filing(res, unsent_ids)
    if res.get("resourceType") == "Encounter":
        if res.get("status") in ("entered-in-error", "cancelled"):
            return None
        title = _first_concept_text(res.get("type")) or "Encounter"
        reasons = res.get("reasonCode")
        text = "; ".join(
            t
            for t in (concept_text(r) for r in (reasons if isinstance(reasons, list) else []))
            if t
        )
        when = parse_fhir_datetime(_start(res.get("period")))
        return TimelineEntry("encounter", rid, when, title, text, unsent, filing)
    if res.get("status") == "entered-in-error":
        return None
    context = res.get("context")
    when = parse_fhir_datetime(res.get("date")) or parse_fhir_datetime(
        _start(context.get("period") if isinstance(context, dict) else None)
    )
    return TimelineEntry("note", rid, when, _note_title(res), _note_text(res), unsent, filing)


def _alert_current(flag: Mapping[str, Any], today: date) -> bool:
    period = flag.get("period")
    end = _day(period.get("end")) if isinstance(period, dict) else None
    return end is None or end >= today


def open_chart(
    conn: sqlite3.Connection,
    patient_id: str,
    *,
    today: date,
    site_scope: Collection[str],
    timeline_limit: int = 200,
) -> Chart:
    """Build the chart of one patient from the local store. Read-only. ``site_scope`` is the
    device's, for the completeness of what it holds."""
    patient = get(conn, "Patient", patient_id)
    if patient is None:
        raise ChartNotFound()
    fields = patient_fields(patient)
    born = date.fromisoformat(fields.birth_date) if fields.birth_date else None
    banner = Banner(
        patient_id,
        fields.display_name,
        born,
        _age(born, today),
        fields.gender,
        fields.nhs_number,
        fields.prison_number,
        fields.site,
        fields.banner_name,
    )
    alerts: list[Alert] = []
    allergies: list[Allergy] = []
    no_known_allergies = False
    problems: list[Problem] = []
    meds: list[Medication] = []
    latest: dict[str, tuple[datetime, str, VitalReading]] = {}
    timeline: list[TimelineEntry] = []
    unsent = unsent_ids(conn, patient_id)
    for res in patient_resources(conn, patient_id):
        rtype, rid = res.get("resourceType"), str(res.get("id", ""))
        if rtype == "Flag" and is_active(res) and _alert_current(res, today):
            since = _day(_start(res.get("period")))
            alerts.append(
                Alert(
                    rid,
                    concept_text(res.get("code")),
                    _first_concept_text(res.get("category")),
                    since,
                )
            )
        elif rtype == "AllergyIntolerance" and is_active(res) and _is_no_known_allergy(res):
            no_known_allergies = True
        elif rtype == "AllergyIntolerance" and is_active(res):
            reactions = res.get("reaction")
            manifestations = [
                concept_text(m)
                for r in (reactions if isinstance(reactions, list) else [])
                if isinstance(r, dict) and isinstance(r.get("manifestation"), list)
                for m in r["manifestation"]
            ]
            crit = res.get("criticality")
            allergies.append(
                Allergy(
                    rid,
                    concept_text(res.get("code")),
                    crit if isinstance(crit, str) else None,
                    tuple(m for m in manifestations if m),
                    _day(res.get("recordedDate")),
                )
            )
        elif rtype == "Condition" and is_active(res):
            onset = _day(res.get("onsetDateTime")) or _day(_start(res.get("onsetPeriod")))
            problems.append(Problem(rid, concept_text(res.get("code")), onset))
        elif rtype == "MedicationStatement" and is_active(res):
            dosage = res.get("dosage")
            dose_text = next(
                (
                    d["text"]
                    for d in (dosage if isinstance(dosage, list) else [])
                    if isinstance(d, dict) and isinstance(d.get("text"), str)
                ),
                "",
            )
            since = _day(res.get("effectiveDateTime")) or _day(_start(res.get("effectivePeriod")))
            meds.append(
                Medication(
                    rid, concept_text(res.get("medicationCodeableConcept")), dose_text, since
                )
            )
        elif rtype == "Observation":
            reading = _vital(res)
            if reading is not None:
                meta = res.get("meta")
                updated = str(meta.get("lastUpdated", "")) if isinstance(meta, dict) else ""
                key = (reading.effective or _MIN, updated)
                held = latest.get(reading.kind)
                if held is None or key > held[:2]:
                    latest[reading.kind] = (*key, reading)
        elif rtype in ("Encounter", "DocumentReference"):
            entry = _timeline_entry(res, unsent)
            if entry is not None:
                timeline.append(entry)
    alerts.sort(key=lambda a: (a.since or date.min, a.id), reverse=True)
    allergies.sort(key=lambda a: (a.criticality != "high", a.substance.casefold(), a.id))
    problems.sort(key=lambda p: (p.onset or date.min, p.id), reverse=True)
    meds.sort(key=lambda m: (m.text.casefold(), m.id))
    timeline.sort(key=lambda e: (e.when is not None, e.when or _MIN, e.kind, e.id), reverse=True)
    vitals = tuple(latest[k][2] for k in VITAL_KINDS if k in latest)
    if allergies:
        no_known_allergies = False  # a real allergy outranks an older "none known" entry
    return Chart(
        banner,
        tuple(alerts),
        tuple(allergies),
        no_known_allergies,
        patient_completeness(conn, patient_id, site_scope),
        tuple(problems),
        tuple(meds),
        vitals,
        tuple(timeline[:timeline_limit]),
    )
