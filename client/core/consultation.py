"""Consultations written offline, and the outbox the sync engine drains (docs/records.md).

Invariants:
- ``write_consultation`` validates everything first (vital ranges, text sizes, the patient is
  on the device) and raises ``ConsultationError`` naming the field before a single row is
  written. Then it stores the Encounter, the vital-sign Observations and the DocumentReference
  note locally AND queues each in the outbox, all inside the caller's transaction: it never
  commits, so a rollback (or a crash before the caller's COMMIT) leaves no trace, not even an
  outbox row.
- Every created resource carries a client identifier (a UUID, system ``CLIENT_ID_SYSTEM``) used
  as its local id and for ``ifNoneExist`` on the wire, and ``meta.versionId == "local"`` until
  the server has it. Outbox bodies carry no id or meta; references between resources of one
  consultation are ``urn:uuid:<client id>`` (the bundle entry's fullUrl), rewritten to
  ``Type/<server id>`` once the target is sent.
- ``list_outbox`` hands out pending entries in order and never splits a consultation (a group).
- ``mark_sent`` re-keys the local copy to the server's id and version and fixes references to it;
  it is idempotent for the same server id. ``record_conflict`` keeps both versions, overwrites
  nothing and takes the entry out of the pending queue.
- Unsent work = outbox entries pending or in conflict; a patient with unsent work must not be
  purged (the caller checks ``has_unsent_work``).
- ``queue_update`` stores an edit of a resource the device holds and queues ONE ``update``
  entry (its own group) whose ``base_version`` is the server version the edit was made on, so
  the wire carries ``ifMatch`` and a server change since then becomes a conflict, never a silent
  overwrite. A second edit before the first is sent replaces the pending entry's body (same
  base); an edit of an unsent create replaces that create's body. An edit of a resource with
  an open conflict is refused until the conflict is resolved.
- For an update, ``mark_sent`` stores the body that went on the wire under the server's new
  version, and ``record_conflict`` keeps that body as "mine" and puts the server's version (or
  its absence) in the store: the store shows the server's truth, the edit lives in the conflict.
- ``resolve_conflict`` closes a conflict in the caller's transaction: ``theirs`` keeps the
  server's version; ``mine`` queues the clinician's edit again on top of the newest server
  version the device holds. Its outbox entry leaves the unsent work (state ``sent``,
  ``last_error`` ``conflict_resolved``: the schema has no ``resolved`` state).
"""

from __future__ import annotations

import base64
import math
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from client.core.errors import UserFacingError
from client.core.records import (
    CLIENT_ID_SYSTEM,
    CLINICAL_TYPES,
    LOCAL_VERSION,
    apply_resources,
    client_id_of,
    delete_resource,
    get,
    is_fhir_id,
    patient_of,
    require_transaction,
    store_local,
    touch_patients,
    utc_iso,
)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
USER_SYSTEM = "https://gatehouse.example/fhir/user"
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


class ConsultationError(UserFacingError):
    """A consultation that cannot be saved as entered; ``field`` names what to fix."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(reason, message)
        self.field = field


class OutboxStateError(Exception):
    """The sync engine asked for an impossible outbox transition (a bug); ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    group_id: str
    resource_type: str
    local_id: str
    client_id: str
    patient_id: str | None
    operation: str
    body: dict[str, Any]
    base_version: str | None
    state: str
    created_at: str
    attempts: int
    last_error: str | None

    @property
    def full_url(self) -> str:
        return f"urn:uuid:{self.client_id}"

    @property
    def if_none_exist(self) -> str:
        return f"identifier={CLIENT_ID_SYSTEM}|{self.client_id}"


@dataclass(frozen=True)
class Conflict:
    id: int
    outbox_seq: int
    resource_type: str
    local_id: str
    patient_id: str | None
    local_body: dict[str, Any]
    server_body: dict[str, Any] | None
    created_at: str


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
    return {"value": value, "unit": spec.unit, "system": UCUM, "code": spec.ucum}


def _observation(kind: str, values: Mapping[str, float]) -> dict[str, Any]:
    if kind == "blood_pressure":
        return {
            "code": {"coding": [_coding(LOINC, *BP_PANEL)], "text": "Blood pressure"},
            "component": [
                {
                    "code": {
                        "coding": [_coding(LOINC, VITAL_SPECS[k].loinc, VITAL_SPECS[k].display)]
                    },
                    "valueQuantity": _quantity(VITAL_SPECS[k], values[k]),
                }
                for k in ("systolic", "diastolic")
            ],
        }
    spec = VITAL_SPECS[kind]
    codings = [_coding(LOINC, spec.loinc, spec.display)]
    if kind == "spo2":
        codings.append(_coding(LOINC, "2708-6", "Oxygen saturation in Arterial blood"))
    return {
        "code": {"coding": codings, "text": spec.label},
        "valueQuantity": _quantity(spec, values[kind]),
    }


def _rewrite_refs(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        return {
            k: (new if k == "reference" and v == old else _rewrite_refs(v, old, new))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(v, old, new) for v in node]
    return node


def _rowid(value: int | None) -> int:
    if value is None:
        raise RuntimeError("an INSERT reported no rowid")
    return value


def _enqueue(
    conn: sqlite3.Connection, resource: dict[str, Any], group_id: str, patient_id: str, now: str
) -> int:
    """Store ``resource`` locally and queue its create; returns the outbox seq."""
    store_local(conn, resource)
    local_id = str(resource["id"])
    body = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    body = _rewrite_refs(body, f"Encounter/{group_id}", f"urn:uuid:{group_id}")
    # lastrowid, not RETURNING: RETURNING costs ~0.3 ms under cipher_memory_security.
    seq = conn.execute(
        "INSERT INTO outbox (group_id, resource_type, local_id, client_id, patient_id, operation,"
        " body, created_at) VALUES (?, ?, ?, ?, ?, 'create', ?, ?)",
        (group_id, resource["resourceType"], local_id, local_id, patient_id,
         orjson.dumps(body), now),
    ).lastrowid  # fmt: skip
    return _rowid(seq)


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
    seqs = [_enqueue(conn, encounter, group, patient_id, stamp)]
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
        seqs.append(_enqueue(conn, obs, group, patient_id, stamp))
        obs_ids.append(oid)
    note_id: str | None = None
    if note or plan:
        note_id = str(uuid.uuid4())
        text = f"Note:\n{note}\n\nPlan:\n{plan}\n"
        doc = base("DocumentReference", note_id) | {
            "status": "current",
            "docStatus": "final",
            "type": {
                "coding": [_coding(LOINC, "11506-3", "Progress note")],
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
        seqs.append(_enqueue(conn, doc, group, patient_id, stamp))
    touch_patients(conn, [patient_id], stamp)
    return ConsultationResult(group, tuple(obs_ids), note_id, tuple(seqs))


_OUTBOX_COLUMNS = (
    "seq, group_id, resource_type, local_id, client_id, patient_id, operation, body,"
    " base_version, state, created_at, attempts, last_error"
)


def _entry(row: Sequence[Any]) -> OutboxEntry:
    values = list(row)
    values[7] = orjson.loads(values[7])
    return OutboxEntry(*values)


def list_outbox(conn: sqlite3.Connection, limit: int = 100) -> list[OutboxEntry]:
    """Pending entries in seq order: whole groups, at least one, until ``limit`` is reached."""
    groups = conn.execute(
        "SELECT group_id, count(*) FROM outbox WHERE state = 'pending' GROUP BY group_id"
        " ORDER BY min(seq)"
    ).fetchall()
    chosen: list[str] = []
    total = 0
    for group_id, count in groups:
        if chosen and total + count > limit:
            break
        chosen.append(group_id)
        total += count
    rows = conn.execute(
        f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending'"  # noqa: S608 (constant)
        " AND group_id IN (SELECT value FROM json_each(?)) ORDER BY seq",
        (orjson.dumps(chosen).decode(),),
    ).fetchall()
    return [_entry(r) for r in rows]


def _outbox_row(conn: sqlite3.Connection, seq: int) -> OutboxEntry:
    row = conn.execute(
        f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE seq = ?",  # noqa: S608 (constant)
        (seq,),
    ).fetchone()
    if row is None:
        raise OutboxStateError("unknown_entry")
    return _entry(row)


def mark_sent(
    conn: sqlite3.Connection,
    seq: int,
    server_id: str,
    server_version: str,
    *,
    now: datetime | None = None,
) -> None:
    """The server has the entry as ``Type/server_id`` at ``server_version`` (caller's txn)."""
    require_transaction(conn)
    if (
        not (is_fhir_id(server_id) and is_fhir_id(server_version))
        or server_version == LOCAL_VERSION
    ):
        raise OutboxStateError("bad_server_reply")  # before anything changes
    entry = _outbox_row(conn, seq)
    if entry.state == "sent":
        (known,) = conn.execute("SELECT server_id FROM outbox WHERE seq = ?", (seq,)).fetchone()
        if known == server_id:
            return
        raise OutboxStateError("already_sent")
    if entry.state != "pending":
        raise OutboxStateError("not_pending")
    stamp = utc_iso(now or datetime.now(UTC))
    conn.execute(
        "UPDATE outbox SET state = 'sent', server_id = ?, server_version = ?, sent_at = ?"
        " WHERE seq = ?",
        (server_id, server_version, stamp, seq),
    )
    if entry.operation == "update":
        # The body that went on the wire is what the server now holds at ``server_version``
        # (the local row may meanwhile show an older server version a pull brought in).
        sent = dict(entry.body) | {"meta": {"versionId": server_version, "lastUpdated": stamp}}
        apply_resources(conn, [sent], received_at=now)
        return
    rtype = entry.resource_type
    old_ref, new_ref = f"{rtype}/{entry.local_id}", f"{rtype}/{server_id}"
    local = get(conn, rtype, entry.local_id)
    if local is not None and server_id != entry.local_id:
        conn.execute("DELETE FROM resources WHERE type = ? AND id = ?", (rtype, entry.local_id))
        if get(conn, rtype, server_id) is None:
            local["id"] = server_id
            local["meta"] = dict(local.get("meta") or {}) | {"versionId": server_version}
            apply_resources(conn, [local], received_at=now)
    elif local is not None:
        local["meta"] = dict(local.get("meta") or {}) | {"versionId": server_version}
        apply_resources(conn, [local], received_at=now)
    # References to the sent resource: local copies of the patient, and unsent bodies.
    for rt, rid, body in conn.execute(
        "SELECT type, id, json FROM resources WHERE patient_id = ? AND instr(json, ?) > 0",
        (entry.patient_id, old_ref.encode()),
    ).fetchall():
        fixed = orjson.dumps(_rewrite_refs(orjson.loads(body), old_ref, new_ref))
        conn.execute("UPDATE resources SET json = ? WHERE type = ? AND id = ?", (fixed, rt, rid))
    for other_seq, body in conn.execute(
        "SELECT seq, body FROM outbox WHERE state = 'pending' AND group_id = ?", (entry.group_id,)
    ).fetchall():
        fixed = orjson.dumps(_rewrite_refs(orjson.loads(body), entry.full_url, new_ref))
        conn.execute("UPDATE outbox SET body = ? WHERE seq = ?", (fixed, other_seq))


def record_push_error(conn: sqlite3.Connection, seq: int, reason: str) -> None:
    """Count a refused push; the entry stays pending. ``reason`` is a stable code, never data."""
    require_transaction(conn)
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
        (reason[:200], seq),
    )


def record_conflict(
    conn: sqlite3.Connection,
    seq: int,
    server_resource: Mapping[str, Any] | None,
    *,
    now: datetime | None = None,
) -> int:
    """Keep both versions; the entry leaves the pending queue; nothing is overwritten."""
    require_transaction(conn)
    entry = _outbox_row(conn, seq)
    if entry.state != "pending":
        raise OutboxStateError("not_pending")
    conn.execute("UPDATE outbox SET state = 'conflict' WHERE seq = ?", (seq,))
    if entry.operation == "update":
        local: dict[str, Any] = dict(entry.body)  # the edit as sent: "mine"
        _show_server_version(conn, entry.resource_type, entry.local_id, server_resource, now)
    else:
        local = get(conn, entry.resource_type, entry.local_id) or entry.body
    server_body = None if server_resource is None else orjson.dumps(server_resource)
    cid = conn.execute(
        "INSERT INTO conflicts (outbox_seq, resource_type, local_id, patient_id, local_body,"
        " server_body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (seq, entry.resource_type, entry.local_id, entry.patient_id, orjson.dumps(local),
         server_body, utc_iso(now or datetime.now(UTC))),
    ).lastrowid  # fmt: skip
    return _rowid(cid)


def _show_server_version(
    conn: sqlite3.Connection,
    rtype: str,
    rid: str,
    server_resource: Mapping[str, Any] | None,
    now: datetime | None,
) -> None:
    """The store shows the server's version of a conflicted resource, or drops the local edit
    when the server no longer has it for this device (deleted, moved out of scope)."""
    if server_resource is not None:
        apply_resources(conn, [server_resource], received_at=now)  # a local row always yields
    row = conn.execute(
        "SELECT version_id FROM resources WHERE type = ? AND id = ?", (rtype, rid)
    ).fetchone()
    if row is not None and row[0] == LOCAL_VERSION:
        delete_resource(conn, rtype, rid)


def _wire_body(resource: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def _refuse_edit(reason: str, message: str) -> ConsultationError:
    return ConsultationError(reason, "resource", message)


def _has_open_conflict(conn: sqlite3.Connection, rtype: str, rid: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM conflicts WHERE resource_type = ? AND local_id = ? AND resolved_at IS NULL"
        " LIMIT 1",
        (rtype, rid),
    ).fetchone()
    return row is not None


def _insert_update(
    conn: sqlite3.Connection,
    edit: Mapping[str, Any],
    patient_id: str,
    base_version: str,
    stamp: str,
) -> int:
    rid = str(edit["id"])
    body = _wire_body(edit)
    store_local(conn, body | {"meta": {"versionId": LOCAL_VERSION, "lastUpdated": stamp}})
    seq = conn.execute(
        "INSERT INTO outbox (group_id, resource_type, local_id, client_id, patient_id, operation,"
        " body, base_version, created_at) VALUES (?, ?, ?, ?, ?, 'update', ?, ?, ?)",
        (str(uuid.uuid4()), edit["resourceType"], rid, client_id_of(edit) or rid, patient_id,
         orjson.dumps(body), base_version, stamp),
    ).lastrowid  # fmt: skip
    touch_patients(conn, [patient_id], stamp)
    return _rowid(seq)


def queue_update(conn: sqlite3.Connection, resource: Mapping[str, Any], *, now: datetime) -> int:
    """Store an edit of a clinical resource on the device and queue it (caller's transaction).

    ``resource`` is the whole edited resource (its ``meta`` is ignored). Returns the outbox
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
    if _has_open_conflict(conn, rtype, rid):
        raise _refuse_edit(
            "conflict_open", "This record has a sync conflict. Resolve it before editing again."
        )
    stamp = utc_iso(now)
    body = _wire_body(resource)
    pending = conn.execute(
        "SELECT seq, operation, group_id FROM outbox WHERE state = 'pending'"
        " AND resource_type = ? AND local_id = ? ORDER BY seq DESC LIMIT 1",
        (rtype, rid),
    ).fetchone()
    if pending is not None:
        seq, operation, group_id = pending
        wire: Any = body
        if operation == "create":  # same shape as write_consultation queued it
            wire = {k: v for k, v in body.items() if k != "id"}
            for other_type, other_id in conn.execute(
                "SELECT resource_type, local_id FROM outbox WHERE state = 'pending'"
                " AND operation = 'create' AND group_id = ?",
                (group_id,),
            ).fetchall():
                wire = _rewrite_refs(wire, f"{other_type}/{other_id}", f"urn:uuid:{other_id}")
        store_local(conn, body | {"meta": {"versionId": LOCAL_VERSION, "lastUpdated": stamp}})
        conn.execute("UPDATE outbox SET body = ? WHERE seq = ?", (orjson.dumps(wire), seq))
        touch_patients(conn, [patient_id], stamp)
        return int(seq)
    if not is_fhir_id(version) or version == LOCAL_VERSION:
        raise _refuse_edit("resource_not_editable", "This record cannot be edited right now.")
    return _insert_update(conn, resource, patient_id, str(version), stamp)


def resolve_conflict(
    conn: sqlite3.Connection, conflict_id: int, keep: str, *, now: datetime
) -> int | None:
    """Close a conflict (caller's transaction): ``keep="theirs"`` keeps the server's version;
    ``keep="mine"`` queues the clinician's edit again on top of the newest server version the
    device holds and returns the new outbox seq. Refusals raise ``ConsultationError`` before
    anything is written."""
    require_transaction(conn)
    if keep not in ("mine", "theirs"):
        raise ValueError("keep must be 'mine' or 'theirs'")
    row = conn.execute(
        "SELECT c.outbox_seq, c.resource_type, c.local_id, c.patient_id, c.local_body,"
        " c.server_body, c.resolved_at, o.operation FROM conflicts c"
        " JOIN outbox o ON o.seq = c.outbox_seq WHERE c.id = ?",
        (conflict_id,),
    ).fetchone()
    if row is None:
        raise ConsultationError("conflict_unknown", "conflict", "This conflict does not exist.")
    seq, rtype, rid, patient_id, local_body, server_body, resolved_at, operation = row
    if resolved_at is not None:
        raise ConsultationError("conflict_resolved", "conflict", "This conflict is resolved.")
    server = None if server_body is None else orjson.loads(server_body)
    mine: dict[str, Any] = orjson.loads(local_body)
    if keep == "mine" and (server is None or operation != "update" or patient_id is None):
        raise ConsultationError(
            "conflict_cannot_keep_mine",
            "conflict",
            "The server no longer holds this record; your version cannot replace it.",
        )
    stamp = utc_iso(now)
    conn.execute("UPDATE conflicts SET resolved_at = ? WHERE id = ?", (stamp, conflict_id))
    conn.execute(
        "UPDATE outbox SET state = 'sent', last_error = 'conflict_resolved' WHERE seq = ?"
        " AND state = 'conflict'",
        (seq,),
    )
    if operation == "update":
        _show_server_version(conn, rtype, rid, server, now)
    if keep == "theirs":
        return None
    stored = conn.execute(
        "SELECT version_id FROM resources WHERE type = ? AND id = ?", (rtype, rid)
    ).fetchone()
    fallback = (server or {}).get("meta", {}).get("versionId")
    base = str(stored[0]) if stored is not None else str(fallback)
    return _insert_update(conn, mine | {"id": rid}, str(patient_id), base, stamp)


def list_conflicts(conn: sqlite3.Connection) -> list[Conflict]:
    """Unresolved conflicts, oldest first. Read-only."""
    rows = conn.execute(
        "SELECT id, outbox_seq, resource_type, local_id, patient_id, local_body, server_body,"
        " created_at FROM conflicts WHERE resolved_at IS NULL ORDER BY id"
    ).fetchall()
    return [
        Conflict(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            orjson.loads(r[5]),
            None if r[6] is None else orjson.loads(r[6]),
            r[7],
        )
        for r in rows
    ]


def unsent_count(conn: sqlite3.Connection) -> int:
    """Outbox entries not yet on the server (pending or in conflict)."""
    (count,) = conn.execute(
        "SELECT count(*) FROM outbox WHERE state IN ('pending', 'conflict')"
    ).fetchone()
    return int(count)


def has_unsent_work(conn: sqlite3.Connection, patient_id: str) -> bool:
    """True while any of the patient's outbox entries is pending or in conflict."""
    row = conn.execute(
        "SELECT 1 FROM outbox WHERE patient_id = ? AND state IN ('pending', 'conflict') LIMIT 1",
        (patient_id,),
    ).fetchone()
    return row is not None
