"""What a clinician writes offline: consultations, and edits of clinical records (docs/records.md).

The queue that carries them to the server is ``client.core.outbox``; a write the server refuses
becomes a conflict in ``client.core.conflicts``.

Invariants:
- ``write_consultation`` validates everything first (vital ranges, text sizes, the patient is
  on the device) and raises ``ConsultationError`` naming the field before a single row is
  written. Then it stores the Encounter, the vital-sign Observations and the DocumentReference
  note locally AND queues each in the outbox as one group, all inside the caller's
  transaction: it never commits, so a rollback (or a crash before the caller's COMMIT) leaves
  no trace, not even an outbox row.
- Every created resource carries a client identifier (a UUID, system ``CLIENT_ID_SYSTEM``) used
  as its local id and for ``ifNoneExist`` on the wire, and ``meta.versionId == "local"`` until
  the server has it.
- ``queue_update`` stores an edit of a resource the device holds and queues ONE ``update``
  entry (its own group) whose ``base_version`` is the server version the edit was made on, so
  the wire carries ``ifMatch`` and a server change since then becomes a conflict, never a silent
  overwrite. A second edit before the first is sent replaces the pending entry's body (same
  base); an edit of an unsent create replaces that create's body. An edit of a resource with
  an open conflict is refused until the conflict is resolved. Refusals raise
  ``ConsultationError`` (field ``resource``) before anything is written.
"""

from __future__ import annotations

import base64
import math
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from client.core.conflicts import has_open_conflict
from client.core.errors import ConsultationError
from client.core.outbox import (
    enqueue_create,
    enqueue_update,
    local_meta,
    replace_pending_body,
    server_labels,
    wire_body,
)
from client.core.records import (
    LOCAL_VERSION,
    get,
    is_fhir_id,
    patient_of,
    require_transaction,
    store_local,
    touch_patients,
    utc_iso,
)
from sync.protocol.fhir.vocabulary import (
    CLIENT_ID_SYSTEM,
    CLINICAL_TYPES,
    LOINC_SYSTEM,
    PROGRESS_NOTE_LOINC,
    UCUM_SYSTEM,
    USER_SYSTEM,
)

__all__ = [
    "VITAL_SPECS",
    "ConsultationError",
    "ConsultationResult",
    "Vital",
    "queue_update",
    "validate_vitals",
    "write_consultation",
]

OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
NOTE_CONTENT_TYPE = "text/plain; charset=utf-8"
MAX_TEXT_CHARS = 50_000  # per note or plan: a long letter fits, a runaway paste does not
_SINGLE_VITALS = (
    "heart_rate",
    "respiratory_rate",
    "temperature",
    "spo2",
    "weight",
    "height",
    "bmi",
)
BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")


@dataclass(frozen=True)
class VitalSpec:
    label: str
    loinc: str
    display: str
    ucum: str
    unit: str
    low: float
    high: float


VITAL_SPECS: dict[str, VitalSpec] = {
    "systolic": VitalSpec("Systolic blood pressure", "8480-6", "Systolic blood pressure",
                          "mm[Hg]", "mmHg", 50, 260),
    "diastolic": VitalSpec("Diastolic blood pressure", "8462-4", "Diastolic blood pressure",
                           "mm[Hg]", "mmHg", 20, 160),
    "heart_rate": VitalSpec("Heart rate", "8867-4", "Heart rate", "/min", "beats/minute", 20, 250),
    "respiratory_rate": VitalSpec("Respiratory rate", "9279-1", "Respiratory rate", "/min",
                                  "breaths/minute", 4, 60),
    "temperature": VitalSpec("Temperature", "8310-5", "Body temperature", "Cel", "°C", 30, 45),
    "spo2": VitalSpec("Oxygen saturation", "59408-5",
                      "Oxygen saturation in Arterial blood by Pulse oximetry", "%", "%", 50, 100),
    "weight": VitalSpec("Weight", "29463-7", "Body weight", "kg", "kg", 0.5, 400),
    "height": VitalSpec("Height", "8302-2", "Body height", "cm", "cm", 30, 250),
    "bmi": VitalSpec("BMI", "39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", "kg/m²", 8, 100),
}  # fmt: skip


@dataclass(frozen=True)
class Vital:
    kind: str  # a key of VITAL_SPECS
    value: float


@dataclass(frozen=True)
class ConsultationResult:
    encounter_id: str
    observation_ids: tuple[str, ...]
    note_id: str | None
    outbox_seqs: tuple[int, ...]


def validate_vitals(vitals: Sequence[Vital]) -> dict[str, float]:
    """Check kinds, duplicates, numbers and plausible ranges; return kind → value."""
    values: dict[str, float] = {}
    for vital in vitals:
        spec = VITAL_SPECS.get(vital.kind)
        if spec is None:
            raise ConsultationError("vital_unknown", vital.kind, "This measurement is not known.")
        if vital.kind in values:
            raise ConsultationError(
                "vital_duplicate", vital.kind, f"{spec.label} was entered twice."
            )
        value = vital.value
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ConsultationError(
                "vital_not_a_number", vital.kind, f"{spec.label} must be a number."
            )
        if not spec.low <= value <= spec.high:
            raise ConsultationError(
                "vital_out_of_range",
                vital.kind,
                f"{spec.label} must be between {spec.low:g} and {spec.high:g} {spec.unit}."
                " Check the value and enter it again.",
            )
        values[vital.kind] = float(value)
    if ("systolic" in values) != ("diastolic" in values):
        missing = "diastolic" if "systolic" in values else "systolic"
        raise ConsultationError(
            "vital_incomplete", missing, "Blood pressure needs both systolic and diastolic."
        )
    if "systolic" in values and values["systolic"] <= values["diastolic"]:
        raise ConsultationError(
            "vital_inconsistent", "diastolic", "Diastolic pressure must be below systolic."
        )
    return values


def _validate_text(field: str, label: str, text: str) -> str:
    if not isinstance(text, str):
        raise ConsultationError("text_invalid", field, f"The {label} must be text.")
    if len(text) > MAX_TEXT_CHARS:
        raise ConsultationError(
            "text_too_long", field, f"The {label} is longer than {MAX_TEXT_CHARS} characters."
        )
    return text.strip()


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _quantity(spec: VitalSpec, value: float) -> dict[str, Any]:
    return {"value": value, "unit": spec.unit, "system": UCUM_SYSTEM, "code": spec.ucum}


def _observation(kind: str, values: Mapping[str, float]) -> dict[str, Any]:
    if kind == "blood_pressure":
        return {
            "code": {"coding": [_coding(LOINC_SYSTEM, *BP_PANEL)], "text": "Blood pressure"},
            "component": [
                {
                    "code": {
                        "coding": [
                            _coding(LOINC_SYSTEM, VITAL_SPECS[k].loinc, VITAL_SPECS[k].display)
                        ]
                    },
                    "valueQuantity": _quantity(VITAL_SPECS[k], values[k]),
                }
                for k in ("systolic", "diastolic")
            ],
        }
    spec = VITAL_SPECS[kind]
    codings = [_coding(LOINC_SYSTEM, spec.loinc, spec.display)]
    if kind == "spo2":
        codings.append(_coding(LOINC_SYSTEM, "2708-6", "Oxygen saturation in Arterial blood"))
    return {
        "code": {"coding": codings, "text": spec.label},
        "valueQuantity": _quantity(spec, values[kind]),
    }


def write_consultation(
    conn: sqlite3.Connection,
    *,
    patient_id: str,
    author_user_id: str,
    site: str,
    vitals: Sequence[Vital],
    note_text: str,
    plan_text: str,
    now: datetime,
) -> ConsultationResult:
    """Save a consultation locally and queue it for the gateway (caller's transaction)."""
    require_transaction(conn)
    values = validate_vitals(vitals)
    note = _validate_text("note", "note", note_text)
    plan = _validate_text("plan", "plan", plan_text)
    if not values and not note and not plan:
        raise ConsultationError(
            "consultation_empty", "note", "Enter a note, a plan or at least one measurement."
        )
    if get(conn, "Patient", patient_id) is None:
        raise ConsultationError(
            "patient_unknown", "patient", "This patient's record is not on this laptop."
        )
    stamp = utc_iso(now)
    subject = {"reference": f"Patient/{patient_id}"}
    # A logical reference (no Practitioner resource exists): the strict validator, on both the
    # gateway and the device, needs ``display`` when ``reference`` is absent.
    author = {
        "identifier": {"system": USER_SYSTEM, "value": author_user_id},
        "display": author_user_id,
    }
    group = str(uuid.uuid4())

    def base(rtype: str, rid: str) -> dict[str, Any]:
        return {
            "resourceType": rtype,
            "id": rid,
            "meta": {"versionId": LOCAL_VERSION, "lastUpdated": stamp},
            "identifier": [{"system": CLIENT_ID_SYSTEM, "value": rid}],
        }

    encounter = base("Encounter", group) | {
        "status": "finished",
        "class": _coding(ACT_CODE, "AMB", "ambulatory"),
        "type": [{"text": "Consultation"}],
        "subject": subject,
        "participant": [{"individual": author}],
        "period": {"start": stamp, "end": stamp},
        "serviceProvider": {"reference": f"Organization/{site}"},
    }
    seqs = [enqueue_create(conn, encounter, group, patient_id, stamp)]
    kinds = ["blood_pressure"] if "systolic" in values else []
    kinds += [k for k in _SINGLE_VITALS if k in values]
    obs_ids: list[str] = []
    for kind in kinds:
        oid = str(uuid.uuid4())
        category = {"coding": [_coding(OBSERVATION_CATEGORY, "vital-signs", "Vital Signs")]}
        obs = base("Observation", oid) | {
            "status": "final",
            "category": [category],
            "subject": subject,
            "encounter": {"reference": f"Encounter/{group}"},
            "effectiveDateTime": stamp,
            "performer": [author],
        }
        obs |= _observation(kind, values)
        seqs.append(enqueue_create(conn, obs, group, patient_id, stamp))
        obs_ids.append(oid)
    note_id: str | None = None
    if note or plan:
        note_id = str(uuid.uuid4())
        text = f"Note:\n{note}\n\nPlan:\n{plan}\n"
        doc = base("DocumentReference", note_id) | {
            "status": "current",
            "docStatus": "final",
            "type": {
                "coding": [_coding(LOINC_SYSTEM, PROGRESS_NOTE_LOINC, "Progress note")],
                "text": "Progress note",
            },
            "subject": subject,
            "date": stamp,
            "author": [author],
            "description": "Consultation note",
            "content": [
                {
                    "attachment": {
                        "contentType": NOTE_CONTENT_TYPE,
                        "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                        "title": "Consultation note",
                    }
                }
            ],
            "context": {
                "encounter": [{"reference": f"Encounter/{group}"}],
                "period": {"start": stamp, "end": stamp},
            },
        }
        seqs.append(enqueue_create(conn, doc, group, patient_id, stamp))
    touch_patients(conn, [patient_id], stamp)
    return ConsultationResult(group, tuple(obs_ids), note_id, tuple(seqs))


def _refuse_edit(reason: str, message: str) -> ConsultationError:
    return ConsultationError(reason, "resource", message)


def queue_update(conn: sqlite3.Connection, resource: Mapping[str, Any], *, now: datetime) -> int:
    """Store an edit of a clinical resource on the device and queue it (caller's transaction).

    ``resource`` is the whole edited resource (its ``meta`` is ignored: the update carries the
    stored copy's ``meta.profile``/``security``/``tag``, issue 13). Returns the outbox
    seq that will carry it: a new ``update`` entry based on the stored server version, or the
    pending entry (update or unsent create) whose body it replaces. Refusals raise
    ``ConsultationError`` (field ``resource``) before anything is written.
    """
    require_transaction(conn)
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if rtype not in CLINICAL_TYPES or not is_fhir_id(rid):
        raise _refuse_edit("resource_not_editable", "Only clinical records can be edited.")
    rtype, rid = str(rtype), str(rid)
    row = conn.execute(
        "SELECT version_id, patient_id FROM resources WHERE type = ? AND id = ?", (rtype, rid)
    ).fetchone()
    if row is None:
        raise _refuse_edit("resource_unknown", "This record is not on this laptop.")
    version, patient_id = row
    if patient_of(resource) != patient_id:
        raise _refuse_edit("patient_changed", "An edit cannot move a record to another patient.")
    if has_open_conflict(conn, rtype, rid):
        raise _refuse_edit(
            "conflict_open", "This record has a sync conflict. Resolve it before editing again."
        )
    stamp = utc_iso(now)
    labels = server_labels(conn, rtype, rid)  # kept on update (issue 13 item 2)
    body = wire_body(resource, labels)
    seq = replace_pending_body(conn, rtype, rid, body)
    if seq is not None:  # an unsent update, or an unsent create, carries the edit
        store_local(conn, body | {"meta": local_meta(labels, stamp)})
        touch_patients(conn, [patient_id], stamp)
        return seq
    if not is_fhir_id(version) or version == LOCAL_VERSION:
        raise _refuse_edit("resource_not_editable", "This record cannot be edited right now.")
    return enqueue_update(conn, resource, patient_id, str(version), stamp)
