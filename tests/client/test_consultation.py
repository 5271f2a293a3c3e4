"""Consultations and the outbox, on a real SQLCipher file."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlcipher3

from client.core.chart import open_chart
from client.core.conflicts import list_conflicts, record_conflict
from client.core.consultation import (
    VITAL_SPECS,
    ConsultationError,
    ConsultationResult,
    Vital,
    write_consultation,
)
from client.core.outbox import (
    OutboxStateError,
    has_unsent_work,
    list_outbox,
    mark_sent,
    record_push_error,
    unsent_count,
)
from client.core.records import CLIENT_ID_SYSTEM, TransactionRequired, apply_resources, get
from tests.support.fhir import SEARCH_PATIENTS, open_db

SCOPE = ("hmp-brixton",)  # the device's sites, for chart completeness (UI-5)

NOW = datetime(2026, 11, 22, 14, 5, tzinfo=UTC)
FULL_VITALS = [
    Vital("systolic", 132),
    Vital("diastolic", 84),
    Vital("heart_rate", 76),
    Vital("respiratory_rate", 14),
    Vital("temperature", 36.8),
    Vital("spo2", 98),
    Vital("weight", 81.5),
    Vital("height", 178),
    Vital("bmi", 25.7),
]


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    db = open_db(tmp_path / "vault.db")
    db.execute("BEGIN IMMEDIATE")
    apply_resources(db, SEARCH_PATIENTS)
    db.execute("COMMIT")
    yield db
    db.close()


def write(conn: sqlite3.Connection, **overrides: Any) -> ConsultationResult:
    args: dict[str, Any] = {
        "patient_id": "p-jose",
        "author_user_id": "u-nurse-1",
        "site": "hmp-brixton",
        "vitals": FULL_VITALS,
        "note_text": "Wheeze on exertion. <i>Literal</i>",
        "plan_text": "Review in 2 weeks.",
        "now": NOW,
    } | overrides
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = write_consultation(conn, **args)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def local_rows(conn: sqlite3.Connection) -> int:
    return int(
        conn.execute("SELECT count(*) FROM resources WHERE version_id = 'local'").fetchone()[0]
    )


def outbox_rows(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


def test_consultation_writes_resources_and_outbox_together(conn: sqlite3.Connection) -> None:
    result = write(conn)
    assert len(result.observation_ids) == 8  # BP panel + 7 single vitals
    assert local_rows(conn) == outbox_rows(conn) == 10 == len(result.outbox_seqs)
    enc = get(conn, "Encounter", result.encounter_id)
    assert enc is not None and enc["meta"]["versionId"] == "local"
    assert enc["identifier"] == [{"system": CLIENT_ID_SYSTEM, "value": result.encounter_id}]
    assert enc["serviceProvider"] == {"reference": "Organization/hmp-brixton"}
    obs = [get(conn, "Observation", oid) for oid in result.observation_ids]
    bp = obs[0]
    assert bp is not None and bp["code"]["coding"][0]["code"] == "85354-9"
    assert [
        (c["code"]["coding"][0]["code"], c["valueQuantity"]["code"]) for c in bp["component"]
    ] == [
        ("8480-6", "mm[Hg]"),
        ("8462-4", "mm[Hg]"),
    ]
    codes = {o["code"]["coding"][0]["code"]: o["valueQuantity"] for o in obs[1:] if o}
    assert codes["8867-4"]["code"] == "/min" and codes["8310-5"]["code"] == "Cel"
    assert codes["59408-5"]["value"] == 98.0 and codes["39156-5"]["code"] == "kg/m2"
    for o in obs:
        assert o is not None
        assert o["subject"] == {"reference": "Patient/p-jose"}
        assert o["encounter"] == {"reference": f"Encounter/{result.encounter_id}"}
        assert o["category"][0]["coding"][0]["code"] == "vital-signs"
    assert result.note_id is not None
    doc = get(conn, "DocumentReference", result.note_id)
    assert doc is not None and doc["type"]["coding"][0]["code"] == "11506-3"
    attachment = doc["content"][0]["attachment"]
    assert attachment["contentType"] == "text/plain; charset=utf-8"
    text = base64.b64decode(attachment["data"]).decode("utf-8")
    assert "Wheeze on exertion. <i>Literal</i>" in text and "Review in 2 weeks." in text


def test_outbox_bodies_are_wire_ready(conn: sqlite3.Connection) -> None:
    result = write(conn)
    entries = list_outbox(conn)
    assert [e.seq for e in entries] == list(result.outbox_seqs)
    assert (
        entries[0].resource_type == "Encounter" and entries[-1].resource_type == "DocumentReference"
    )
    for entry in entries:
        assert entry.operation == "create" and entry.state == "pending" and entry.attempts == 0
        assert "id" not in entry.body and "meta" not in entry.body
        assert entry.body["identifier"] == [{"system": CLIENT_ID_SYSTEM, "value": entry.client_id}]
        assert entry.full_url == f"urn:uuid:{entry.client_id}"
        assert entry.if_none_exist == f"identifier={CLIENT_ID_SYSTEM}|{entry.client_id}"
        assert entry.patient_id == "p-jose" and entry.group_id == result.encounter_id
    assert entries[1].body["encounter"] == {"reference": f"urn:uuid:{result.encounter_id}"}


def test_consultation_rollback_leaves_nothing_not_even_an_outbox_row(
    conn: sqlite3.Connection,
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    write_consultation(
        conn, patient_id="p-jose", author_user_id="u1", site="hmp-brixton", vitals=FULL_VITALS,
        note_text="n", plan_text="p", now=NOW,
    )  # fmt: skip
    assert outbox_rows(conn) == 10
    conn.execute("ROLLBACK")
    assert local_rows(conn) == 0 and outbox_rows(conn) == 0


def test_failure_midway_through_the_save_leaves_nothing(conn: sqlite3.Connection) -> None:
    # The disk "fails" when the note reaches the outbox: the caller's rollback undoes it all.
    conn.execute(
        "CREATE TEMP TRIGGER fail_note BEFORE INSERT ON outbox"
        " WHEN NEW.resource_type = 'DocumentReference' BEGIN SELECT RAISE(ABORT, 'disk I/O'); END"
    )
    with pytest.raises(sqlcipher3.DatabaseError, match="disk I/O"):
        write(conn)
    assert local_rows(conn) == 0 and outbox_rows(conn) == 0


def test_consultation_needs_the_callers_transaction(conn: sqlite3.Connection) -> None:
    with pytest.raises(TransactionRequired):
        write_consultation(
            conn, patient_id="p-jose", author_user_id="u1", site="hmp-brixton", vitals=[],
            note_text="n", plan_text="", now=NOW,
        )  # fmt: skip
    assert local_rows(conn) == 0 and outbox_rows(conn) == 0


RANGE_CASES = [
    (kind, value)
    for kind, spec in VITAL_SPECS.items()
    for value in (spec.low - 0.1, spec.high + 0.1)
    if kind not in ("systolic", "diastolic")
] + [("systolic", 49), ("systolic", 261), ("diastolic", 19), ("diastolic", 161)]


@pytest.mark.parametrize(("kind", "value"), RANGE_CASES)
def test_implausible_vitals_are_refused_naming_the_field(
    conn: sqlite3.Connection, kind: str, value: float
) -> None:
    vitals = [Vital(kind, value)]
    if kind == "systolic":
        vitals.append(Vital("diastolic", 40))
    if kind == "diastolic":
        vitals.append(Vital("systolic", 200))
    with pytest.raises(ConsultationError) as err:
        write(conn, vitals=vitals)
    assert err.value.reason == "vital_out_of_range"
    assert err.value.field == kind
    assert VITAL_SPECS[kind].label in err.value.message
    assert local_rows(conn) == 0 and outbox_rows(conn) == 0


def test_range_limits_are_inclusive(conn: sqlite3.Connection) -> None:
    write(conn, vitals=[Vital("heart_rate", 20), Vital("spo2", 100), Vital("temperature", 45)])
    assert outbox_rows(conn) == 5


@pytest.mark.parametrize(
    ("vitals", "reason", "field"),
    [
        ([Vital("pulse", 70)], "vital_unknown", "pulse"),
        ([Vital("heart_rate", 70), Vital("heart_rate", 72)], "vital_duplicate", "heart_rate"),
        ([Vital("heart_rate", float("nan"))], "vital_not_a_number", "heart_rate"),
        ([Vital("temperature", float("inf"))], "vital_not_a_number", "temperature"),
        ([Vital("systolic", 120)], "vital_incomplete", "diastolic"),
        ([Vital("diastolic", 80)], "vital_incomplete", "systolic"),
        ([Vital("systolic", 90), Vital("diastolic", 95)], "vital_inconsistent", "diastolic"),
    ],
)
def test_vital_entry_errors(
    conn: sqlite3.Connection, vitals: list[Vital], reason: str, field: str
) -> None:
    with pytest.raises(ConsultationError) as err:
        write(conn, vitals=vitals)
    assert (err.value.reason, err.value.field) == (reason, field)
    assert local_rows(conn) == 0 and outbox_rows(conn) == 0


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"vitals": [], "note_text": "  ", "plan_text": ""}, "consultation_empty"),
        ({"note_text": "x" * 50_001}, "text_too_long"),
        ({"plan_text": "x" * 50_001}, "text_too_long"),
        ({"patient_id": "not-on-device"}, "patient_unknown"),
    ],
)
def test_consultation_errors(
    conn: sqlite3.Connection, overrides: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConsultationError) as err:
        write(conn, **overrides)
    assert err.value.reason == reason
    assert local_rows(conn) == 0 and outbox_rows(conn) == 0


def test_vitals_only_consultation_has_no_note(conn: sqlite3.Connection) -> None:
    result = write(conn, vitals=[Vital("spo2", 94)], note_text="", plan_text="")
    assert result.note_id is None and outbox_rows(conn) == 2


def test_chart_shows_the_unsent_consultation(conn: sqlite3.Connection) -> None:
    result = write(conn)
    chart = open_chart(conn, "p-jose", today=date(2026, 11, 22), site_scope=SCOPE)
    assert [(e.kind, e.unsent) for e in chart.timeline] == [("note", True), ("encounter", True)]
    assert chart.timeline[0].text.startswith("Note:\nWheeze on exertion. <i>Literal</i>")
    vitals = {v.kind: v for v in chart.vitals}
    assert vitals["heart_rate"].value == 76.0 and vitals["heart_rate"].effective == NOW
    assert vitals["blood_pressure"].components[0] == ("systolic", 132.0, "mmHg")
    assert result.encounter_id == chart.timeline[1].id


def test_unsent_counters(conn: sqlite3.Connection) -> None:
    assert unsent_count(conn) == 0 and not has_unsent_work(conn, "p-jose")
    write(conn, vitals=[], plan_text="")
    assert unsent_count(conn) == 2
    assert has_unsent_work(conn, "p-jose") and not has_unsent_work(conn, "p-zoe")


def test_mark_sent_rekeys_local_copies_and_fixes_references(conn: sqlite3.Connection) -> None:
    result = write(conn, vitals=[Vital("heart_rate", 70)])
    enc_entry, obs_entry, doc_entry = list_outbox(conn)
    conn.execute("BEGIN IMMEDIATE")
    mark_sent(conn, enc_entry.seq, "enc-srv-9", "1", now=NOW)
    mark_sent(conn, enc_entry.seq, "enc-srv-9", "1", now=NOW)  # idempotent on a resumed sync
    conn.execute("COMMIT")
    assert get(conn, "Encounter", result.encounter_id) is None
    enc = get(conn, "Encounter", "enc-srv-9")
    assert enc is not None and enc["meta"]["versionId"] == "1"
    obs = get(conn, "Observation", obs_entry.local_id)
    assert obs is not None and obs["encounter"] == {"reference": "Encounter/enc-srv-9"}
    pending = list_outbox(conn)
    assert [e.seq for e in pending] == [obs_entry.seq, doc_entry.seq]
    assert pending[0].body["encounter"] == {"reference": "Encounter/enc-srv-9"}
    assert pending[1].body["context"]["encounter"] == [{"reference": "Encounter/enc-srv-9"}]
    assert unsent_count(conn) == 2
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(OutboxStateError) as err:
        mark_sent(conn, enc_entry.seq, "another-id", "1")
    assert err.value.reason == "already_sent"
    for bad_id, bad_version in (("obs/../x", "1"), ("obs-srv", 'W/"3"'), ("obs-srv", "local")):
        with pytest.raises(OutboxStateError) as err:
            mark_sent(conn, obs_entry.seq, bad_id, bad_version)
        assert err.value.reason == "bad_server_reply"
    assert get(conn, "Observation", obs_entry.local_id) is not None
    for entry, sid in ((obs_entry, "obs-srv"), (doc_entry, "doc-srv")):
        mark_sent(conn, entry.seq, sid, "3")
    conn.execute("COMMIT")
    assert unsent_count(conn) == 0 and not has_unsent_work(conn, "p-jose")
    assert local_rows(conn) == 0
    chart = open_chart(conn, "p-jose", today=date(2026, 11, 22), site_scope=SCOPE)
    assert {e.id for e in chart.timeline} == {"enc-srv-9", "doc-srv"}
    assert not any(e.unsent for e in chart.timeline)


def test_list_outbox_never_splits_a_consultation(conn: sqlite3.Connection) -> None:
    first = write(conn, vitals=[Vital("heart_rate", 70)])  # 3 entries
    write(conn, patient_id="p-zoe", vitals=[], plan_text="")  # 2 entries
    assert len(list_outbox(conn, limit=1)) == 3  # at least one whole group
    assert len(list_outbox(conn, limit=4)) == 3
    assert len(list_outbox(conn, limit=5)) == 5
    assert {e.group_id for e in list_outbox(conn, limit=3)} == {first.encounter_id}


def test_conflict_keeps_both_versions(conn: sqlite3.Connection) -> None:
    write(conn, vitals=[], plan_text="")
    _enc, doc_entry = list_outbox(conn)
    server = {"resourceType": "DocumentReference", "id": "srv-doc", "meta": {"versionId": "4"}}
    conn.execute("BEGIN IMMEDIATE")
    record_push_error(conn, doc_entry.seq, "http_412")
    record_conflict(conn, doc_entry.seq, server, now=NOW)
    conn.execute("COMMIT")
    (conflict,) = list_conflicts(conn)
    assert conflict.server_body == server
    assert conflict.local_body["id"] == doc_entry.local_id
    assert conflict.local_body["meta"]["versionId"] == "local"
    assert [e.seq for e in list_outbox(conn)] == [_enc.seq]
    assert unsent_count(conn) == 2 and has_unsent_work(conn, "p-jose")
    (attempts, last_error) = conn.execute(
        "SELECT attempts, last_error FROM outbox WHERE seq = ?", (doc_entry.seq,)
    ).fetchone()
    assert (attempts, last_error) == (1, "http_412")
    assert get(conn, "DocumentReference", doc_entry.local_id) is not None  # nothing overwritten
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(OutboxStateError):
        mark_sent(conn, doc_entry.seq, "srv-doc", "4")
    with pytest.raises(OutboxStateError):
        record_conflict(conn, 9999, server)
    conn.execute("ROLLBACK")


def test_conflict_without_a_server_body(conn: sqlite3.Connection) -> None:
    write(conn, vitals=[], plan_text="")
    enc_entry = list_outbox(conn)[0]
    conn.execute("BEGIN IMMEDIATE")
    record_conflict(conn, enc_entry.seq, None, now=NOW)
    conn.execute("COMMIT")
    (conflict,) = list_conflicts(conn)
    assert conflict.server_body is None and conflict.local_body["resourceType"] == "Encounter"
