"""The records store and the chart read model, on a real SQLCipher file."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from client.core.chart import Chart, ChartNotFound, open_chart
from client.core.records import (
    CLIENT_ID_SYSTEM,
    MAX_RESOURCE_BYTES,
    TransactionRequired,
    apply_resources,
    delete_resource,
    get,
    parse_fhir_datetime,
    patients_past_retention,
    purge_patient,
    refresh_caseload,
    store_local,
)
from client.core.search import search_patients
from tests.support.fhir import (
    SEARCH_PATIENTS,
    allergy,
    blood_pressure,
    condition,
    encounter,
    flag,
    medication,
    meta,
    nhs_number,
    note,
    observation,
    open_db,
    patient,
)

SCOPE = ("hmp-brixton",)  # the device's sites, for chart completeness (UI-5)

TODAY = date(2026, 11, 22)
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    db = open_db(tmp_path / "vault.db")
    yield db
    db.close()


def apply(conn: sqlite3.Connection, resources: list[dict[str, Any]], **kw: Any) -> Any:
    conn.execute("BEGIN IMMEDIATE")
    stats = apply_resources(conn, resources, **kw)
    conn.execute("COMMIT")
    return stats


def count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


# --- storage ------------------------------------------------------------------------------


def test_apply_and_get_roundtrip_with_patient_ids(conn: sqlite3.Connection) -> None:
    jose = SEARCH_PATIENTS[0]
    stats = apply(conn, [jose, allergy("a1", "p-jose", "Penicillin"), flag("f1", "p-jose", "Risk")])
    assert (stats.applied, stats.ignored, stats.rejected) == (3, 0, ())
    assert get(conn, "Patient", "p-jose") == jose
    assert get(conn, "Patient", "nobody") is None
    rows = conn.execute("SELECT type, patient_id, site FROM resources ORDER BY type").fetchall()
    assert rows == [
        ("AllergyIntolerance", "p-jose", None),
        ("Flag", "p-jose", None),
        ("Patient", "p-jose", "hmp-brixton"),
    ]


def test_version_dedupe_ignores_older_and_equal(conn: sqlite3.Connection) -> None:
    v2 = condition("c1", "p-jose", "Asthma") | {"meta": meta("2")}
    apply(conn, [v2])
    older = condition("c1", "p-jose", "Older text") | {"meta": meta("1")}
    equal = condition("c1", "p-jose", "Same version other text") | {"meta": meta("2")}
    stats = apply(conn, [older, equal])
    assert (stats.ignored, stats.applied) == (2, 0)
    assert get(conn, "Condition", "c1") == v2
    v10 = condition("c1", "p-jose", "Newer") | {"meta": meta("10")}  # 10 > 2 as numbers
    assert apply(conn, [v10]).applied == 1
    assert get(conn, "Condition", "c1") == v10


def test_opaque_versions_order_by_last_updated(conn: sqlite3.Connection) -> None:
    first = condition("c1", "p-jose", "A") | {"meta": meta("b7f1", "2026-01-01T00:00:00Z")}
    apply(conn, [first])
    stale = condition("c1", "p-jose", "B") | {"meta": meta("a0c2", "2025-12-31T23:00:00+00:00")}
    assert apply(conn, [stale]).ignored == 1
    # 00:30+01:00 is 23:30Z the day before: earlier, although the text sorts later.
    offset = condition("c1", "p-jose", "C") | {"meta": meta("ffee", "2026-01-01T00:30:00+01:00")}
    assert apply(conn, [offset]).ignored == 1
    newer = condition("c1", "p-jose", "D") | {"meta": meta("0001", "2026-01-02T00:00:00+02:00")}
    assert apply(conn, [newer]).applied == 1
    assert get(conn, "Condition", "c1") == newer


@pytest.mark.parametrize(
    ("resource", "reason"),
    [
        ("not a dict", "not_an_object"),
        ({"resourceType": "Bundle", "id": "b1", "meta": meta()}, "unknown_type"),
        ({"resourceType": "Patient", "id": "../etc", "meta": meta()}, "bad_id"),
        ({"resourceType": "Patient", "id": "x" * 65, "meta": meta()}, "bad_id"),
        ({"resourceType": "Patient", "id": "p1"}, "bad_version"),
        ({"resourceType": "Patient", "id": "p1", "meta": {"versionId": 3}}, "bad_version"),
        ({"resourceType": "Patient", "id": "p1", "meta": meta("local")}, "bad_version"),
        ({"resourceType": "Patient", "id": "p1", "meta": meta("1", "yesterday")},
         "bad_last_updated"),
        ({"resourceType": "Patient", "id": "p1", "meta": meta("1", "2026-01-01T10:00:00")},
         "bad_last_updated"),
        (condition("c1", "p-jose", "x") | {"subject": {"reference": "Group/g"}}, "no_patient"),
        (condition("c1", "p-jose", "x") | {"subject": "Patient/p-jose"}, "no_patient"),
        (note("n1", "p-jose", "2026-01-01", "x" * MAX_RESOURCE_BYTES), "too_large"),
    ],
)  # fmt: skip
def test_malformed_resources_are_rejected_not_stored(
    conn: sqlite3.Connection, resource: Any, reason: str
) -> None:
    stats = apply(conn, [resource, SEARCH_PATIENTS[0]])
    assert [r.reason for r in stats.rejected] == [reason]
    assert stats.applied == 1
    assert count(conn, "resources") == 1


def test_allergy_belongs_to_its_patient_field(conn: sqlite3.Connection) -> None:
    wrong = allergy("a1", "p-jose", "Nuts")
    wrong["subject"] = wrong.pop("patient")  # AllergyIntolerance uses `patient`, not `subject`
    assert [r.reason for r in apply(conn, [wrong]).rejected] == ["no_patient"]


def test_writes_outside_a_transaction_are_refused(conn: sqlite3.Connection) -> None:
    with pytest.raises(TransactionRequired):
        apply_resources(conn, [SEARCH_PATIENTS[0]])
    with pytest.raises(TransactionRequired):
        purge_patient(conn, "p-jose")
    with pytest.raises(TransactionRequired):
        delete_resource(conn, "Patient", "p-jose")
    assert count(conn, "resources") == 0


def test_rollback_removes_everything_applied(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    apply_resources(conn, [*SEARCH_PATIENTS, flag("f1", "p-jose", "Risk")])
    assert count(conn, "resources") == len(SEARCH_PATIENTS) + 1
    conn.execute("ROLLBACK")
    for table in ("resources", "patient_index", "patient_fts"):
        assert count(conn, table) == 0


def test_delete_resource(conn: sqlite3.Connection) -> None:
    apply(conn, [SEARCH_PATIENTS[0], flag("f1", "p-jose", "Risk")])
    conn.execute("BEGIN IMMEDIATE")
    assert delete_resource(conn, "Flag", "f1")
    assert not delete_resource(conn, "Flag", "f1")
    conn.execute("COMMIT")
    assert get(conn, "Flag", "f1") is None
    assert get(conn, "Patient", "p-jose") is not None


def test_parse_fhir_datetime_forms() -> None:
    assert parse_fhir_datetime("2024") == datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_fhir_datetime("2024-03") == datetime(2024, 3, 1, tzinfo=UTC)
    assert parse_fhir_datetime("2024-03-07") == datetime(2024, 3, 7, tzinfo=UTC)
    assert parse_fhir_datetime("2024-03-07T10:00:00+01:00") == datetime(2024, 3, 7, 9, tzinfo=UTC)
    assert parse_fhir_datetime("2024-03-07T10:00:00") is None
    assert parse_fhir_datetime(20240307) is None


def test_ST1_record_text_is_not_plaintext_on_disk(tmp_path: Path) -> None:
    db = open_db(tmp_path / "vault.db")
    canary = "Zyxwvutsrq"
    apply(db, [patient("p-c", canary, ["Canary"]), note("n1", "p-c", "2026-01-01", canary)])
    db.close()
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert canary.encode() not in data and b"Canary" not in data
        assert not data.startswith(b"SQLite format 3")


# --- purge and retention -----------------------------------------------------------------


def _fts_shadow_bytes(conn: sqlite3.Connection) -> bytes:
    blobs = []
    for table in (
        "patient_fts_data",
        "patient_fts_idx",
        "patient_fts_content",
        "patient_fts_docsize",
    ):
        for row in conn.execute(f"SELECT * FROM {table}"):
            blobs.extend(v if isinstance(v, bytes) else str(v).encode() for v in row)
    return b"|".join(blobs)


def test_purge_leaves_no_trace_in_resources_index_or_fts_shadow_tables(
    conn: sqlite3.Connection,
) -> None:
    others = [patient(f"p{i}", f"Other{i}", ["Someone"], nhs=nhs_number(i)) for i in range(50)]
    target = patient("p-purge", "Quixotically", ["Zebedee"], nhs=nhs_number(777777),
                     prison="Z9999ZZ")  # fmt: skip
    apply(
        conn, [*others, target, flag("f1", "p-purge", "Risk"), note("n1", "p-purge", "2026", "x")]
    )
    conn.execute(
        "INSERT INTO outbox (group_id, resource_type, local_id, client_id, patient_id, operation,"
        " body, state, created_at) VALUES ('g', 'Encounter', 'e', 'e', 'p-purge', 'create',"
        " x'7b7d', 'sent', '2026-01-01')"
    )
    assert b"quixotically" in _fts_shadow_bytes(conn)
    conn.execute("BEGIN IMMEDIATE")
    assert purge_patient(conn, "p-purge") == 3
    conn.execute("COMMIT")
    shadow = _fts_shadow_bytes(conn)
    for term in (b"quixotically", b"zebedee", b"z9999zz", nhs_number(777777).encode()):
        assert term not in shadow
    conn.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, patient_fts, 'row')")
    terms = {t for (t,) in conn.execute("SELECT term FROM temp.vocab")}
    assert not {"quixotically", "zebedee", "quix", "zeb"} & terms
    assert "other1" in terms
    assert (
        conn.execute("SELECT count(*) FROM resources WHERE patient_id = 'p-purge'").fetchone()[0]
        == 0
    )
    assert (
        conn.execute("SELECT count(*) FROM patient_index WHERE patient_id = 'p-purge'").fetchone()[
            0
        ]
        == 0
    )
    assert count(conn, "patient_fts") == 50 and count(conn, "resources") == 50
    assert count(conn, "outbox") == 0
    assert search_patients(conn, "quix", site_scope=["hmp-brixton"]) == []
    assert len(search_patients(conn, "other", site_scope=["hmp-brixton"])) == 50


def test_retention_candidates(conn: sqlite3.Connection) -> None:
    old = NOW - timedelta(days=40)
    apply(conn, [patient("p-old", "Old", ["A"])], received_at=old)
    apply(conn, [patient("p-fresh", "Fresh", ["B"]), patient("p-moved", "Moved", ["C"],
                 site="hmp-pentonville")], received_at=NOW - timedelta(days=1))  # fmt: skip
    apply(conn, [condition("c-orphan", "p-gone", "Orphan")], received_at=NOW)
    conn.execute(
        "INSERT INTO outbox (group_id, resource_type, local_id, client_id, patient_id, operation,"
        " body, created_at) VALUES ('g', 'Encounter', 'e', 'e', 'p-moved', 'create', x'7b7d', 'x')"
    )
    found = patients_past_retention(conn, NOW, 30, ["hmp-brixton"])
    assert [(c.patient_id, c.reason, c.has_unsent_work) for c in found] == [
        ("p-gone", "orphaned", False),
        ("p-moved", "out_of_scope", True),
        ("p-old", "retention_expired", False),
    ]
    # Re-receiving the same version is not a refresh; a complete sync's refresh is.
    apply(conn, [patient("p-old", "Old", ["A"])], received_at=NOW)
    assert "p-old" in [
        c.patient_id for c in patients_past_retention(conn, NOW, 30, ["hmp-brixton"])
    ]
    conn.execute("BEGIN IMMEDIATE")
    assert refresh_caseload(conn, ["hmp-brixton"], NOW) == 2  # p-old and p-fresh
    conn.execute("COMMIT")
    assert "p-old" not in [
        c.patient_id for c in patients_past_retention(conn, NOW, 30, ["hmp-brixton"])
    ]
    assert {c.patient_id for c in patients_past_retention(conn, NOW, 30, None)} >= {
        "p-fresh",
        "p-old",
    }


# --- chart -------------------------------------------------------------------------------


def _chart_data() -> list[dict[str, Any]]:
    pid = "p-jose"
    return [
        SEARCH_PATIENTS[0],
        flag("f-active", pid, "Violent to staff: see two"),
        flag("f-old", pid, "Self-harm risk", start="2020-01-01", end="2021-01-01"),
        flag("f-inactive", pid, "Inactive alert", status="inactive"),
        allergy("a-pen", pid, "Penicillin"),
        allergy("a-latex", pid, "Latex", criticality="low", reaction="Rash"),
        allergy("a-gone", pid, "Resolved thing", clinical="resolved"),
        condition("c-asthma", pid, "Asthma"),
        condition("c-old", pid, "Fractured wrist", clinical="resolved"),
        medication("m-salb", pid, "Salbutamol 100mcg inhaler", "2 puffs when required"),
        medication("m-stop", pid, "Amoxicillin", "500mg TDS", status="completed"),
        observation("o-hr-new", pid, "8867-4", 88, "/min", "2026-11-20T10:00:00+00:00"),
        observation("o-hr-old", pid, "8867-4", 60, "/min", "2026-10-01T10:00:00+00:00",
                    updated="2026-11-21T00:00:00+00:00"),
        observation("o-hr-err", pid, "8867-4", 200, "/min", "2026-11-21T10:00:00+00:00",
                    status="entered-in-error"),
        observation("o-spo2-a", pid, "59408-5", 95, "%", "2026-11-01T10:00:00+00:00"),
        observation("o-spo2-b", pid, "2708-6", 97, "%", "2026-11-02T10:00:00+00:00"),
        observation("o-temp", pid, "8310-5", 37.2, "Cel", "2026-11-20"),
        observation("o-other", pid, "2345-7", 5.4, "mmol/L", "2026-11-21T10:00:00+00:00"),
        blood_pressure("o-bp", pid, 128, 82, "2026-11-20T10:00:00+00:00"),
        encounter("e-1", pid, "2026-11-20T10:00:00+00:00"),
        encounter("e-0", pid, "2025-03-01T09:00:00+00:00", kind="Dental"),
        note("n-1", pid, "2026-11-20T10:05:00+00:00", "Chest clear.\n<b>not bold</b>",
             encounter_id="e-1"),
        note("n-0", pid, "2024-01-01", "Old note"),
        flag("f-other-patient", "p-zoe", "Not Jose's"),
    ]  # fmt: skip


def test_chart_orders_safety_information_first() -> None:
    names = [f.name for f in dataclasses.fields(Chart)]
    assert names[:5] == ["banner", "alerts", "allergies", "no_known_allergies", "completeness"]
    assert names[5:] == ["problems", "medications", "vitals", "timeline"]


def test_chart_contents(conn: sqlite3.Connection) -> None:
    apply(conn, _chart_data())
    chart = open_chart(conn, "p-jose", today=TODAY, site_scope=SCOPE)
    b = chart.banner
    assert (b.name, b.birth_date, b.age, b.prison_number, b.site) == (
        "García, José",
        date(1984, 3, 7),
        42,
        "A1234BC",
        "hmp-brixton",
    )
    assert open_chart(conn, "p-jose", today=date(2027, 3, 6), site_scope=SCOPE).banner.age == 42
    assert open_chart(conn, "p-jose", today=date(2027, 3, 7), site_scope=SCOPE).banner.age == 43
    assert [a.id for a in chart.alerts] == ["f-active"]
    assert [a.substance for a in chart.allergies] == [
        "Penicillin",
        "Latex",
    ]  # high criticality first
    assert chart.allergies[0].reactions == ("Anaphylaxis",)
    assert [(p.id, p.text) for p in chart.problems] == [("c-asthma", "Asthma")]
    assert [(m.text, m.dosage) for m in chart.medications] == [
        ("Salbutamol 100mcg inhaler", "2 puffs when required")
    ]


def test_chart_picks_latest_vitals_per_code(conn: sqlite3.Connection) -> None:
    apply(conn, _chart_data())
    vitals = {v.kind: v for v in open_chart(conn, "p-jose", today=TODAY, site_scope=SCOPE).vitals}
    assert list(vitals) == ["blood_pressure", "heart_rate", "temperature", "spo2"]
    assert vitals["heart_rate"].observation_id == "o-hr-new"  # by effective time, not lastUpdated
    assert vitals["heart_rate"].value == 88.0
    assert (vitals["spo2"].observation_id, vitals["spo2"].value) == ("o-spo2-b", 97.0)
    assert vitals["blood_pressure"].components == (
        ("systolic", 128.0, "mmHg"),
        ("diastolic", 82.0, "mmHg"),
    )
    assert vitals["temperature"].effective == datetime(2026, 11, 20, tzinfo=UTC)


def test_chart_timeline_newest_first_with_notes_decoded(conn: sqlite3.Connection) -> None:
    apply(conn, _chart_data())
    timeline = open_chart(conn, "p-jose", today=TODAY, site_scope=SCOPE).timeline
    assert [(e.kind, e.id) for e in timeline] == [
        ("note", "n-1"),
        ("encounter", "e-1"),
        ("encounter", "e-0"),
        ("note", "n-0"),
    ]
    assert timeline[0].text == "Chest clear.\n<b>not bold</b>"  # literal, never interpreted
    assert timeline[0].title == "Progress note" and not timeline[0].unsent
    assert timeline[2].title == "Dental"
    assert (
        len(open_chart(conn, "p-jose", today=TODAY, timeline_limit=2, site_scope=SCOPE).timeline)
        == 2
    )


def test_chart_degrades_on_odd_shapes(conn: sqlite3.Connection) -> None:
    odd_note = note("n-pdf", "p-jose", "2026-01-01", "x")
    odd_note["content"][0]["attachment"] = {"contentType": "application/pdf", "data": "JVBERi0="}
    odd_obs = observation("o-x", "p-jose", "8867-4", 70, "/min", "2026-01-01")
    odd_obs["valueQuantity"] = {"value": "seventy"}
    odd_flag = flag("f-x", "p-jose", "x") | {"code": ["not", "a", "concept"], "period": "soon"}
    apply(conn, [SEARCH_PATIENTS[0], odd_note, odd_obs, odd_flag])
    chart = open_chart(conn, "p-jose", today=TODAY, site_scope=SCOPE)
    assert chart.timeline[0].text == "[attachment of type application/pdf not shown]"
    assert chart.vitals == ()
    assert [(a.id, a.text) for a in chart.alerts] == [("f-x", "")]


def test_UI1_chart_keeps_html_literal(conn: sqlite3.Connection) -> None:
    apply(conn, [SEARCH_PATIENTS[6], flag("f-h", "p-html", "<img src=x onerror=alert(1)>")])
    chart = open_chart(conn, "p-html", today=TODAY, site_scope=SCOPE)
    assert chart.banner.name == "<b>Bold</b>, <script>alert(1)</script>"
    assert chart.alerts[0].text == "<img src=x onerror=alert(1)>"


def test_chart_of_unknown_patient(conn: sqlite3.Connection) -> None:
    with pytest.raises(ChartNotFound) as err:
        open_chart(conn, "nobody", today=TODAY, site_scope=SCOPE)
    assert err.value.reason == "patient_not_found"


def test_client_id_copy_from_server_replaces_local_copy(conn: sqlite3.Connection) -> None:
    apply(conn, [SEARCH_PATIENTS[0]])
    local = encounter("local-uuid", "p-jose", "2026-11-20T10:00:00+00:00")
    local["meta"] = meta("local")
    local["identifier"] = [{"system": CLIENT_ID_SYSTEM, "value": "local-uuid"}]
    conn.execute("BEGIN IMMEDIATE")
    store_local(conn, local)
    conn.execute("COMMIT")
    server = dict(local, id="srv-1", meta=meta("1"))
    stats = apply(conn, [server])
    assert stats.replaced_local == 1
    assert get(conn, "Encounter", "local-uuid") is None
    assert [e.id for e in open_chart(conn, "p-jose", today=TODAY, site_scope=SCOPE).timeline] == [
        "srv-1"
    ]


def test_migrations_run_inside_the_vaults_stepwise_transactions(tmp_path: Path) -> None:
    vault_module = pytest.importorskip("client.core.vault")
    from client.core.schema import MIGRATIONS

    vault = vault_module.Vault.open(tmp_path / "vault.db", bytes(range(32)), MIGRATIONS)
    try:
        db = vault.connection
        assert vault.user_version == len(MIGRATIONS)
        db.execute("BEGIN IMMEDIATE")
        apply_resources(db, [SEARCH_PATIENTS[0]])
        db.execute("COMMIT")
        assert [h.id for h in search_patients(db, "jose", site_scope=["hmp-brixton"])] == ["p-jose"]
    finally:
        vault.close()
