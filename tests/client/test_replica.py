"""The client core's replica (client.core.replica) on a real SQLCipher vault with a real audit
chain. Only a failing disk is simulated (a connection wrapper that fails one statement)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlcipher3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.core import conflicts, consultation, outbox, records
from client.core.audit_log import AuditLog
from client.core.completeness import patient_completeness
from client.core.consultation import Vital
from client.core.disk_space import DiskFull
from client.core.replica import MAX_QUARANTINE_RAW_BYTES, VaultReplica
from client.core.schema import MIGRATIONS
from client.core.search import search_patients
from client.core.vault import Vault
from sync.device.replica import (
    EXTRA_ATTEMPTS,
    EXTRA_FULL_URL,
    EXTRA_GROUP,
    EXTRA_IF_NONE_EXIST,
    Deletion,
    Page,
    Quarantined,
    Replica,
    ReplicaError,
    SentItem,
    SyncSummary,
)
from sync.protocol.audit.chain import verify
from sync.protocol.audit.entry import AuditEntry
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM
from tests.support.fhir import encounter, flag, nhs_number, observation, patient

DEVICE = "laptop-0042"
K0 = bytes(range(1, 33))
SITE = "hmp-brixton"
OTHER = "hmp-pentonville"
NOW = datetime(2026, 11, 22, 18, 0, tzinfo=UTC)
USER = "dr.okafor"


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    opened = Vault.open(tmp_path / "vault.db", secrets.token_bytes(32), MIGRATIONS)
    with opened.transaction() as conn:
        AuditLog().initialise(conn, DEVICE, K0)
    yield opened
    opened.close()


def make(vault: Vault, provider: Any = None, clock: Any = None) -> VaultReplica:
    return VaultReplica(
        provider or (lambda: vault.connection),
        AuditLog(),
        user_id=USER,
        role="clinician",
        site_scope=(SITE,),
        clock=Clock() if clock is None else clock,
    )


@pytest.fixture
def replica(vault: Vault) -> Replica:
    built: Replica = make(vault)  # structural: VaultReplica is a sync.device.replica.Replica
    return built


def page(
    resources: Sequence[dict[str, Any]] = (),
    deletions: Sequence[Deletion] = (),
    quarantined: Sequence[Quarantined] = (),
    *,
    stream: str = "Patient",
    cursor: str = "c1",
) -> Page:
    return Page(stream, list(resources), list(deletions), list(quarantined), cursor)


def amira(version: str = "1", site: str = SITE) -> dict[str, Any]:
    return patient("p-amira", "Hussain", ["Amira"], nhs=nhs_number(1), version=version, site=site)


def ben(version: str = "1", site: str = SITE) -> dict[str, Any]:
    return patient("p-ben", "Stokes", ["Ben"], nhs=nhs_number(2), version=version, site=site)


def entries(vault: Vault) -> list[AuditEntry]:
    return AuditLog().entries(vault.connection)


def actions(vault: Vault) -> list[tuple[str, str | None]]:
    return [(e.action, e.patient_id) for e in entries(vault)]


def stored(vault: Vault, rtype: str, rid: str) -> dict[str, Any] | None:
    return records.get(vault.connection, rtype, rid)


def count(vault: Vault, sql: str, *params: Any) -> int:
    return int(vault.connection.execute(sql, params).fetchone()[0])


def write_consultation(vault: Vault, patient_id: str) -> consultation.ConsultationResult:
    with vault.transaction() as conn:
        return consultation.write_consultation(
            conn,
            patient_id=patient_id,
            author_user_id=USER,
            site=SITE,
            vitals=[Vital("heart_rate", 72), Vital("spo2", 97)],
            note_text="Reviewed",
            plan_text="See in a week",
            now=NOW,
        )


def chain_ok(vault: Vault) -> bool:
    return verify(entries(vault), device_id=DEVICE, initial_key=K0).ok


class DiskFailsOnCursor:
    """The vault's connection, except that writing a sync cursor fails like a full disk."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @property
    def in_transaction(self) -> bool:
        return bool(self._conn.in_transaction)

    @property
    def total_changes(self) -> int:
        return int(self._conn.total_changes)

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql.startswith("INSERT INTO sync_cursors"):
            raise sqlcipher3.OperationalError("database or disk is full")
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> Any:
        return self._conn.executemany(sql, rows)


# -- pull: cursor and atomicity --------------------------------------------------------------


def test_cursor_is_per_stream_and_none_before_the_first_page(replica: Replica) -> None:
    assert replica.read_cursor("Patient") is None
    replica.apply_page(page([amira()], cursor="h-17"))
    replica.apply_page(page([flag("f1", "p-amira", "Violence risk")], stream="Flag", cursor="h-3"))
    assert replica.read_cursor("Patient") == "h-17"
    assert replica.read_cursor("Flag") == "h-3"
    replica.apply_page(page([], cursor="h-20"))
    assert replica.read_cursor("Patient") == "h-20"


def test_CR1_page_and_cursor_commit_together(vault: Vault) -> None:
    good = make(vault)
    good.apply_page(page([ben()], cursor="before"))
    failing = make(vault, lambda: DiskFailsOnCursor(vault.connection))
    bad_item = Quarantined("Patient", "p-x", "wrong_type", "Patient.name", b'{"name": 5}')
    doomed = page(
        [amira(), flag("f1", "p-amira", "Self-harm risk")],
        [Deletion("Patient", "p-ben", "2")],
        [bad_item],
        cursor="after",
    )
    audit_before = len(entries(vault))
    with pytest.raises(DiskFull):  # rolled back whole, and classified (CR-3)
        failing.apply_page(doomed)
    assert not vault.connection.in_transaction
    assert stored(vault, "Patient", "p-amira") is None
    assert stored(vault, "Flag", "f1") is None
    assert stored(vault, "Patient", "p-ben") is not None  # the deletion was rolled back too
    assert count(vault, "SELECT count(*) FROM quarantine") == 0
    assert len(entries(vault)) == audit_before  # no purge entry survives the rollback
    assert search_patients(vault.connection, "amira", site_scope=(SITE,)) == []
    assert good.read_cursor("Patient") == "before"
    # The same page, retried on a healthy disk, applies whole.
    stats = good.apply_page(doomed)
    assert (stats.applied, stats.purged, stats.quarantined) == (2, 1, 1)
    assert good.read_cursor("Patient") == "after"
    assert chain_ok(vault)


def test_CR1_reapplying_a_page_is_harmless(vault: Vault, replica: Replica) -> None:
    replica.apply_page(page([ben()], cursor="c0"))
    again = page(
        [amira(), flag("f1", "p-amira", "Violence risk", version="2")],
        [Deletion("Patient", "p-ben", "2")],
        [Quarantined(None, None, "not_json", "", b"<html>oops</html>")],
    )
    first = replica.apply_page(again)
    audit_after_first = actions(vault)
    second = replica.apply_page(again)
    assert (first.applied, first.purged, first.quarantined) == (2, 1, 1)
    assert (second.applied, second.skipped_older, second.purged) == (0, 2, 0)
    assert actions(vault) == audit_after_first  # no second purge entry
    assert count(vault, "SELECT count(*) FROM quarantine") == 1
    assert count(vault, "SELECT count(*) FROM resources") == 2
    assert count(vault, "SELECT count(*) FROM patient_index") == 1


def test_newer_versions_replace_and_older_ones_are_skipped(replica: Replica, vault: Vault) -> None:
    replica.apply_page(page([amira(version="3")]))
    stats = replica.apply_page(page([amira(version="2")]))
    assert (stats.applied, stats.skipped_older) == (0, 1)
    assert stored(vault, "Patient", "p-amira")["meta"]["versionId"] == "3"  # type: ignore[index]


_IDS = ("f0", "f1", "f2", "f3")


def _feed_pages(ops: list[tuple[int, bool]], cuts: list[int]) -> tuple[list[Page], dict[str, str]]:
    """Server history as pages: op = (resource, put?); each op is the resource's next version.
    Returns the pages and the expected final store (id → version of the last put)."""
    versions = dict.fromkeys(_IDS, 0)
    expected: dict[str, str] = {}
    resources: list[list[dict[str, Any]]] = [[]]
    deletions: list[list[Deletion]] = [[]]
    for n, (which, put) in enumerate(ops):
        rid = _IDS[which]
        versions[rid] += 1
        version = str(versions[rid])
        if put:
            resources[-1].append(flag(rid, "p-amira", f"Alert {n}", version=version))
            expected[rid] = version
        else:
            deletions[-1].append(Deletion("Flag", rid, version))
            expected.pop(rid, None)
        if n in cuts:
            resources.append([])
            deletions.append([])
    pages = [
        Page("Flag", r, d, [], str(n))
        for n, (r, d) in enumerate(zip(resources, deletions, strict=True))
    ]
    return pages, expected


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(st.tuples(st.integers(0, len(_IDS) - 1), st.booleans()), min_size=1, max_size=25),
    cuts=st.lists(st.integers(0, 24), max_size=6),
    replay=st.tuples(st.integers(0, 10), st.integers(0, 10)),
)
def test_CR1_any_replayed_suffix_of_pages_converges_to_the_server_state(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[int, bool]],
    cuts: list[int],
    replay: tuple[int, int],
) -> None:
    pages, expected = _feed_pages(ops, cuts)
    stop = replay[0] % len(pages)  # crash after page ``stop``; resume from an earlier page
    start = min(replay[1] % len(pages), stop)
    order = pages[: stop + 1] + pages[start:]
    with Vault.open(
        tmp_path_factory.mktemp("v") / "vault.db", secrets.token_bytes(32), MIGRATIONS
    ) as vault:
        with vault.transaction() as conn:
            AuditLog().initialise(conn, DEVICE, K0)
        replica = make(vault)
        replica.apply_page(page([amira()]))
        for each in order:
            replica.apply_page(each)
        rows = vault.connection.execute("SELECT id, version_id FROM resources WHERE type = 'Flag'")
        assert dict(rows.fetchall()) == expected
        assert replica.read_cursor("Flag") == str(len(pages) - 1)


# -- deletions and patients leaving scope ----------------------------------------------------


def test_deletion_removes_a_clinical_resource_unless_it_came_back(
    replica: Replica, vault: Vault
) -> None:
    replica.apply_page(page([amira(), flag("f1", "p-amira", "Alert"), flag("f2", "p-amira", "B")]))
    replica.apply_page(page([flag("f2", "p-amira", "B", version="4")]))
    stats = replica.apply_page(
        page(deletions=[Deletion("Flag", "f1", "2"), Deletion("Flag", "f2", "3")])
    )
    assert (stats.deleted, stats.skipped_older) == (1, 1)
    assert stored(vault, "Flag", "f1") is None
    assert stored(vault, "Flag", "f2") is not None  # v4 is newer than the v3 deletion


def test_deletion_never_removes_unsent_local_work(replica: Replica, vault: Vault) -> None:
    replica.apply_page(page([amira()]))
    made = write_consultation(vault, "p-amira")
    stats = replica.apply_page(page(deletions=[Deletion("Encounter", made.encounter_id)]))
    assert stats.deleted == 0
    assert stored(vault, "Encounter", made.encounter_id) is not None


def test_deleted_patient_is_purged_with_everything_and_audited(
    replica: Replica, vault: Vault
) -> None:
    replica.apply_page(
        page([amira(), ben(), flag("f1", "p-amira", "Alert"), encounter("e1", "p-amira", "2026")])
    )
    stats = replica.apply_page(page(deletions=[Deletion("Patient", "p-amira", "2")]))
    assert (stats.deleted, stats.purged, stats.held) == (1, 1, 0)
    assert count(vault, "SELECT count(*) FROM resources WHERE patient_id = 'p-amira'") == 0
    assert search_patients(vault.connection, "hussain", site_scope=(SITE,)) == []
    assert stored(vault, "Patient", "p-ben") is not None
    purge = [e for e in entries(vault) if e.action == "purge"]
    assert [(e.patient_id, e.detail["why"], e.detail["how"]) for e in purge] == [
        ("p-amira", "left_scope", "deleted")
    ]
    assert purge[0].detail["resources"] == 3
    assert purge[0].user_id == USER
    assert chain_ok(vault)


def test_transferred_patient_is_purged_and_audited(replica: Replica, vault: Vault) -> None:
    replica.apply_page(page([amira(), flag("f1", "p-amira", "Alert")]))
    moved = amira(version="2", site=OTHER)
    stats = replica.apply_page(page([moved, flag("f9", "p-amira", "New", version="1")]))
    assert (stats.purged, stats.held) == (1, 0)
    assert count(vault, "SELECT count(*) FROM resources WHERE patient_id = 'p-amira'") == 0
    assert count(vault, "SELECT count(*) FROM patient_index") == 0
    assert [
        (e.action, e.patient_id, e.detail["how"]) for e in entries(vault) if e.action == "purge"
    ] == [("purge", "p-amira", "transferred")]


def test_out_of_scope_patient_never_held_is_not_stored(replica: Replica, vault: Vault) -> None:
    stats = replica.apply_page(page([ben(site=OTHER), amira()]))
    assert (stats.applied, stats.out_of_scope) == (1, 1)
    assert stored(vault, "Patient", "p-ben") is None
    assert "purge" not in [a for a, _ in actions(vault)]


def test_deleted_patient_with_unsent_work_is_kept_out_of_scope_until_sent(
    replica: Replica, vault: Vault
) -> None:
    replica.apply_page(page([amira(), flag("f1", "p-amira", "Alert")]))
    made = write_consultation(vault, "p-amira")
    leave = page(deletions=[Deletion("Patient", "p-amira", "2"), Deletion("Flag", "f1", "2")])
    stats = replica.apply_page(leave)
    replica.apply_page(leave)  # a replay neither purges nor audits the exit again
    assert (stats.purged, stats.held, stats.deleted) == (0, 1, 1)  # the flag only
    assert stored(vault, "Patient", "p-amira") is not None
    assert stored(vault, "Flag", "f1") is None
    (hit,) = search_patients(vault.connection, "hussain", site_scope=(SITE,))
    assert hit.in_scope is False
    assert [e.detail["kept_for"] for e in entries(vault) if e.action == "purge_held"] == [
        "unsent_work"
    ]
    # A sync that has not sent the work yet keeps them.
    replica.sync_finished(SyncSummary(pulled=2))
    assert stored(vault, "Patient", "p-amira") is not None
    # Once every item is on the server, the end of the sync purges them, audited.
    for n, item in enumerate(replica.list_outbox(100)):
        replica.mark_sent(item.seq, f"srv-{n}", "1")
    replica.sync_finished(SyncSummary(pushed=len(made.outbox_seqs)))
    assert stored(vault, "Patient", "p-amira") is None
    assert count(vault, "SELECT count(*) FROM resources") == 0
    tail = [(e.action, e.patient_id, dict(e.detail).get("how")) for e in entries(vault)][-2:]
    assert tail == [("purge", "p-amira", "after_send"), ("sync", None, None)]
    assert chain_ok(vault)


def test_transferred_patient_with_unsent_work_is_kept_with_the_new_site(
    replica: Replica, vault: Vault
) -> None:
    replica.apply_page(page([amira()]))
    write_consultation(vault, "p-amira")
    stats = replica.apply_page(page([amira(version="2", site=OTHER)]))
    assert (stats.applied, stats.held, stats.purged) == (1, 1, 0)
    kept = stored(vault, "Patient", "p-amira")
    assert kept is not None and kept["managingOrganization"]["reference"] == f"Organization/{OTHER}"
    (hit,) = search_patients(vault.connection, "amira", site_scope=(SITE,))
    assert hit.in_scope is False
    assert ("purge_held", "p-amira") in actions(vault)


def test_open_conflict_also_holds_a_leaving_patient(replica: Replica, vault: Vault) -> None:
    replica.apply_page(page([amira()]))
    write_consultation(vault, "p-amira")
    items = replica.list_outbox(100)
    for n, item in enumerate(items[1:]):
        replica.mark_sent(item.seq, f"srv-{n}", "1")
    replica.record_conflict(items[0].seq, None)
    stats = replica.apply_page(page(deletions=[Deletion("Patient", "p-amira", "2")]))
    replica.sync_finished(SyncSummary(conflicts=1))
    assert stats.held == 1
    assert stored(vault, "Patient", "p-amira") is not None
    assert len(conflicts.list_conflicts(vault.connection)) == 1


def test_returning_patient_comes_back_into_scope(replica: Replica, vault: Vault) -> None:
    replica.apply_page(page([amira()]))
    write_consultation(vault, "p-amira")
    replica.apply_page(page(deletions=[Deletion("Patient", "p-amira", "2")]))
    replica.apply_page(page([amira(version="3")]))
    (hit,) = search_patients(vault.connection, "amira", site_scope=(SITE,))
    assert hit.in_scope is True


# -- quarantine ------------------------------------------------------------------------------


def test_NW3_quarantine_keeps_raw_bytes_reason_and_path_and_the_rest_applies(
    replica: Replica, vault: Vault
) -> None:
    raw = b'{"resourceType":"Patient","id":"p-bad","name":5}'
    broken = amira() | {"id": "p-nometa", "meta": {"lastUpdated": "2026-11-01T09:30:00+00:00"}}
    stats = replica.apply_page(
        page(
            [ben(), broken],
            quarantined=[Quarantined("Patient", "p-bad", "wrong_type", "name", raw)],
        )
    )
    assert (stats.applied, stats.quarantined) == (1, 2)
    rows = vault.connection.execute(
        "SELECT stream, resource_type, resource_id, reason, path, raw, raw_bytes"
        " FROM quarantine ORDER BY id"
    ).fetchall()
    assert rows[0] == ("Patient", "Patient", "p-bad", "wrong_type", "name", raw, len(raw))
    assert rows[1][1:5] == ("Patient", "p-nometa", "bad_version", "")
    assert orjson.loads(rows[1][5]) == broken
    assert stored(vault, "Patient", "p-ben") is not None
    assert stored(vault, "Patient", "p-nometa") is None


def test_quarantine_caps_the_bytes_it_keeps(replica: Replica, vault: Vault) -> None:
    huge = b"[" * (MAX_QUARANTINE_RAW_BYTES + 10)
    replica.apply_page(page(quarantined=[Quarantined(None, None, "too_deep", "$", huge)]))
    size, kept = vault.connection.execute(
        "SELECT raw_bytes, length(raw) FROM quarantine"
    ).fetchone()
    assert (size, kept) == (len(huge), MAX_QUARANTINE_RAW_BYTES)


def test_quarantine_stops_keeping_bytes_past_its_total_budget(
    replica: Replica, vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    from client.core import replica as replica_module

    monkeypatch.setattr(replica_module, "MAX_QUARANTINE_TOTAL_BYTES", 10)
    items = [Quarantined(None, None, "bad", "$", f"item-{n}!".encode()) for n in range(3)]
    replica.apply_page(page(quarantined=items[:1]))
    replica.apply_page(page(quarantined=items[1:]))
    rows = vault.connection.execute("SELECT raw, raw_bytes FROM quarantine ORDER BY id")
    assert rows.fetchall() == [(b"item-0!", 7), (b"", 7), (b"", 7)]


def test_purging_a_patient_drops_their_quarantined_patient_rows(
    replica: Replica, vault: Vault
) -> None:
    replica.apply_page(page([amira()]))
    replica.apply_page(page(quarantined=[Quarantined("Patient", "p-amira", "bad", "x", b"{}")]))
    replica.apply_page(page(deletions=[Deletion("Patient", "p-amira")]))
    assert count(vault, "SELECT count(*) FROM quarantine") == 0


# -- push ------------------------------------------------------------------------------------


def test_list_outbox_gives_whole_groups_with_wire_details(replica: Replica, vault: Vault) -> None:
    replica.apply_page(page([amira(), ben()]))
    first = write_consultation(vault, "p-amira")
    write_consultation(vault, "p-ben")
    items = replica.list_outbox(5)  # 4 + 4 > 5: only the first consultation, never split
    assert [i.seq for i in items] == list(first.outbox_seqs)
    assert {i.extra[EXTRA_GROUP] for i in items} == {first.encounter_id}
    enc = items[0]
    assert (enc.operation, enc.resource_type, enc.local_id) == (
        "create",
        "Encounter",
        first.encounter_id,
    )
    assert enc.client_identifier == first.encounter_id
    assert enc.extra[EXTRA_FULL_URL] == f"urn:uuid:{first.encounter_id}"
    assert enc.extra[EXTRA_IF_NONE_EXIST] == f"identifier={CLIENT_ID_SYSTEM}|{enc.local_id}"
    assert enc.extra[EXTRA_ATTEMPTS] == 0
    assert "id" not in enc.body and enc.base_version is None
    assert len(replica.list_outbox(1)) == 4  # at least one whole group
    assert len(replica.list_outbox(8)) == 8


def test_mark_sent_rekeys_audits_and_is_idempotent(replica: Replica, vault: Vault) -> None:
    replica.apply_page(page([amira()]))
    made = write_consultation(vault, "p-amira")
    enc = replica.list_outbox(10)[0]
    replica.mark_sent(enc.seq, "enc-77", "1")
    replica.mark_sent(enc.seq, "enc-77", "1")  # the same reply twice: no change, no entry
    assert stored(vault, "Encounter", made.encounter_id) is None
    assert stored(vault, "Encounter", "enc-77")["meta"]["versionId"] == "1"  # type: ignore[index]
    sent = [e for e in entries(vault) if e.action == "sync_sent"]
    assert [(e.patient_id, e.detail["resource_type"], e.detail["outbox_seq"]) for e in sent] == [
        ("p-amira", "Encounter", enc.seq)
    ]
    assert enc.seq not in [i.seq for i in replica.list_outbox(10)]
    with pytest.raises(ReplicaError) as caught:
        replica.mark_sent(enc.seq, "enc-78", "1")
    assert caught.value.reason == "already_sent"
    with pytest.raises(ReplicaError) as caught:
        replica.mark_sent(999_999, "x", "1")
    assert caught.value.reason == "unknown_entry"
    other = replica.list_outbox(10)[0]
    before = len(entries(vault))
    with pytest.raises(ReplicaError) as caught:
        replica.mark_sent(other.seq, "obs 1", "1")
    assert caught.value.reason == "bad_server_reply"
    assert len(entries(vault)) == before
    assert other.seq in [i.seq for i in replica.list_outbox(10)]


def test_mark_sent_batch_marks_the_good_items_and_returns_the_refused(
    replica: Replica, vault: Vault
) -> None:
    replica.apply_page(page([amira()]))
    write_consultation(vault, "p-amira")
    items = replica.list_outbox(10)
    replies = [SentItem(i.seq, f"srv-{n}", "1") for n, i in enumerate(items)]
    replies[1] = SentItem(items[1].seq, "not an id!", "1")
    assert replica.mark_sent_batch(replies) == {items[1].seq: "bad_server_reply"}
    assert [i.seq for i in replica.list_outbox(10)] == [items[1].seq]
    assert len([e for e in entries(vault) if e.action == "sync_sent"]) == len(items) - 1
    # Replaying the same replies changes nothing and audits nothing more.
    assert replica.mark_sent_batch(replies) == {items[1].seq: "bad_server_reply"}
    assert len([e for e in entries(vault) if e.action == "sync_sent"]) == len(items) - 1
    assert stored(vault, "Encounter", "srv-0") is not None
    assert chain_ok(vault)


def test_record_conflict_keeps_both_versions_and_audits_the_patient(
    replica: Replica, vault: Vault
) -> None:
    replica.apply_page(page([amira()]))
    write_consultation(vault, "p-amira")
    item = replica.list_outbox(10)[-1]
    server = {"resourceType": "DocumentReference", "id": "d-9", "meta": {"versionId": "5"}}
    replica.record_conflict(item.seq, server)
    (conflict,) = conflicts.list_conflicts(vault.connection)
    assert conflict.server_body == server
    assert conflict.local_body["resourceType"] == "DocumentReference"
    last = entries(vault)[-1]
    assert (last.action, last.patient_id, last.detail["outbox_seq"]) == (
        "sync_conflict",
        "p-amira",
        item.seq,
    )
    assert item.seq not in [i.seq for i in replica.list_outbox(10)]
    assert outbox.unsent_count(vault.connection) == 4  # still unsent until resolved
    with pytest.raises(ReplicaError) as caught:
        replica.record_conflict(item.seq, server)
    assert caught.value.reason == "not_pending"


def test_record_push_error_keeps_the_item_pending_with_a_code(
    replica: Replica, vault: Vault
) -> None:
    replica.apply_page(page([amira()]))
    write_consultation(vault, "p-amira")
    first, second = replica.list_outbox(10)[:2]
    replica.record_push_error(first.seq, "http_422")
    replica.record_push_error(second.seq, "Patient Amira Hussain is invalid\n")  # server text
    again = {i.seq: i for i in replica.list_outbox(10)}
    assert again[first.seq].extra[EXTRA_ATTEMPTS] == 1
    errors = dict(vault.connection.execute("SELECT seq, last_error FROM outbox").fetchall())
    assert (errors[first.seq], errors[second.seq]) == ("http_422", "push_refused")


# -- end of sync and plumbing ----------------------------------------------------------------


def test_sync_finished_appends_one_sync_entry_with_counts(replica: Replica, vault: Vault) -> None:
    replica.apply_page(page([amira()]))
    replica.sync_finished(SyncSummary(pulled=120, pushed=4, conflicts=1, quarantined=2))
    replica.sync_finished(SyncSummary(pulled=3, outcome="cancelled", reason="user_cancelled"))
    ok, cancelled = [e for e in entries(vault) if e.action == "sync"]
    assert ok.outcome == "success"
    assert {k: ok.detail[k] for k in ("pulled", "pushed", "conflicts", "quarantined")} == {
        "pulled": 120,
        "pushed": 4,
        "conflicts": 1,
        "quarantined": 2,
    }
    assert (cancelled.outcome, cancelled.detail["result"], cancelled.detail["reason"]) == (
        "failure",
        "cancelled",
        "user_cancelled",
    )
    assert ok.user_id == USER and ok.role == "clinician"
    assert ok.detail["purged"] == 0 and stored(vault, "Patient", "p-amira") is not None
    assert chain_ok(vault)


def test_a_complete_pull_keeps_an_unchanged_patient_past_retention(vault: Vault) -> None:
    """A patient whose record has not changed in 40 days is still on the caseload: a sync that
    pulled every stream to its end refreshes them; one that stopped part-way does not."""
    clock = Clock(NOW - timedelta(days=40))
    replica = make(vault, clock=clock)
    replica.apply_page(page([amira()]))

    def due() -> list[str]:
        found = records.patients_past_retention(vault.connection, NOW, 30, [SITE])
        return [c.patient_id for c in found]

    clock.now = NOW - timedelta(minutes=5)
    replica.sync_finished(SyncSummary(outcome="failure", reason="connection"))
    assert due() == ["p-amira"]
    replica.sync_finished(SyncSummary(caseload_confirmed=True))
    assert due() == []
    sync_entries = [e for e in entries(vault) if e.action == "sync"]
    assert [e.detail["refreshed"] for e in sync_entries] == [0, 1]
    assert chain_ok(vault)


def test_locked_vault_and_nested_transactions_are_refused(vault: Vault) -> None:
    replica = make(vault)
    with vault.transaction():
        with pytest.raises(ReplicaError) as caught:
            replica.read_cursor("Patient")
        assert caught.value.reason == "in_transaction"
    vault.close()
    with pytest.raises(ReplicaError) as caught:
        replica.list_outbox(10)
    assert caught.value.reason == "vault_locked"


def test_an_empty_scope_is_refused(vault: Vault) -> None:
    with pytest.raises(ValueError, match="scope"):
        VaultReplica(
            lambda: vault.connection,
            AuditLog(),
            user_id=USER,
            role=None,
            site_scope=(),
            clock=Clock(),
        )


# -- CR-1: SIGKILL while pages are applied ---------------------------------------------------

PAGES = 200
CRASH_CHILD = """
import sys
from datetime import UTC, datetime
from client.core.audit_log import AuditLog
from client.core.completeness import patient_completeness
from client.core.replica import VaultReplica
from client.core.schema import MIGRATIONS
from client.core.vault import Vault
from tests.client.test_replica import crash_page

vault = Vault.open(sys.argv[1], bytes.fromhex(sys.argv[2]), MIGRATIONS)
replica = VaultReplica(
    lambda: vault.connection, AuditLog(), user_id="sync", role="clinician",
    site_scope=("hmp-brixton",), clock=lambda: datetime.now(UTC),
)
cursor = replica.read_cursor("crash")
print("ready", flush=True)
# Resume by re-applying the last committed page (an overlap, as an engine might).
for number in range(max(1, int(cursor or 0)), int(sys.argv[3]) + 1):
    replica.apply_page(crash_page(number))
"""


def crash_page(number: int) -> Page:
    """Page ``number``: patient p<n> with a flag and 150 observations; deletes the previous
    flag; every 5th page also deletes patient p<n-3> (a purge)."""
    pid = f"p{number}"
    resources: list[dict[str, Any]] = [
        patient(pid, "Crash", [f"N{number}"], nhs=nhs_number(number)),
        flag(f"f{number}", pid, "Alert"),
    ]
    resources += [
        observation(f"o{number}-{k}", pid, "8867-4", 60 + k % 40, "/min", "2026-11-01")
        for k in range(150)
    ]
    deletions = [Deletion("Flag", f"f{number - 1}", "2")] if number > 1 else []
    if number % 5 == 0 and number > 3:
        deletions.append(Deletion("Patient", f"p{number - 3}", "2"))
    return Page("crash", resources, deletions, [], str(number))


def crash_expected(done: int) -> tuple[set[str], int]:
    """Patients on the device after pages 1..done, and purge entries written."""
    purged = {f"p{j - 3}" for j in range(5, done + 1, 5)}
    return {f"p{i}" for i in range(1, done + 1)} - purged, len(purged)


def crash_check(vault: Vault) -> int:
    conn = vault.connection
    cursor = make(vault).read_cursor("crash")
    done = int(cursor or 0)
    patients, purges = crash_expected(done)
    rows = conn.execute("SELECT patient_id, type, count(*) FROM resources GROUP BY 1, 2")
    held: dict[str, dict[str, int]] = {}
    for pid, rtype, n in rows.fetchall():
        held.setdefault(pid, {})[rtype] = n
    assert set(held) == patients, f"after page {done}"
    for pid, types in held.items():
        flags = 1 if pid == f"p{done}" else 0
        assert types == {"Patient": 1, "Observation": 150, **({"Flag": 1} if flags else {})}
    assert count(vault, "SELECT count(*) FROM patient_index") == len(patients)
    assert len([e for e in entries(vault) if e.action == "purge"]) == purges
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA cipher_integrity_check").fetchall() == []
    assert chain_ok(vault)
    return done


def test_CR1_kill_9_while_applying_pages_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    dek = secrets.token_bytes(32)
    path = tmp_path / "vault.db"
    with Vault.open(path, dek, MIGRATIONS) as vault, vault.transaction() as conn:
        AuditLog().initialise(conn, DEVICE, K0)
    script = tmp_path / "child.py"
    script.write_text(CRASH_CHILD)
    rng = random.Random(5)
    progress = []
    for _ in range(int(os.environ.get("GATEHOUSE_KILL_ROUNDS", "8"))):
        child = subprocess.Popen(
            [sys.executable, str(script), str(path), dek.hex(), str(PAGES)],
            stdout=subprocess.PIPE,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.02, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
        with Vault.open(path, dek, MIGRATIONS) as vault:
            progress.append(crash_check(vault))
    assert progress[-1] > 0, "no page was ever committed; the kill timing is wrong"
    finish = subprocess.run(
        [sys.executable, str(script), str(path), dek.hex(), str(PAGES)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert finish.returncode == 0
    with Vault.open(path, dek, MIGRATIONS) as vault:
        assert crash_check(vault) == PAGES


def test_ui5_only_a_finished_sync_marks_the_caseload_complete(vault: Vault) -> None:
    """A pull that stopped part-way may have brought a patient without their alerts: their
    chart must not claim completeness until a sync finishes (client.core.completeness)."""
    replica = make(vault)
    replica.apply_page(page([patient("p-amira", "Okafor", ["Amira"])]))
    replica.sync_finished(SyncSummary(pulled=1, outcome="failure", reason="network"))
    conn = vault.connection
    stopped = patient_completeness(conn, "p-amira", [SITE])
    assert stopped.last_complete is None and not stopped.complete
    assert stopped.alerts.reasons == ("never_complete",)
    replica.sync_finished(SyncSummary())
    done = patient_completeness(conn, "p-amira", [SITE])
    assert done.complete and done.last_complete is not None
    # A later failed sync keeps the last complete time; it never moves back or forward.
    replica.sync_finished(SyncSummary(outcome="failure", reason="network"))
    assert patient_completeness(conn, "p-amira", [SITE]).last_complete == done.last_complete


def test_ui5_a_quarantined_alert_marks_its_patients_alerts_incomplete(vault: Vault) -> None:
    replica = make(vault)
    bad_flag = orjson.dumps(
        {"resource": {**flag("f-bad", "p-amira", "Cell-sharing risk"), "status": 7}}
    )
    replica.apply_page(
        page(
            [patient("p-amira", "Okafor", ["Amira"])],
            quarantined=[Quarantined("Flag", "f-bad", "wrong_type", "Flag.status", bad_flag)],
        )
    )
    replica.sync_finished(SyncSummary(quarantined=1))
    found = patient_completeness(vault.connection, "p-amira", [SITE])
    assert not found.alerts.complete and found.alerts.reasons == ("held_back",)
    assert found.allergies.complete  # a bad Flag says nothing about allergies
    # A valid copy arriving later replaces what was held back.
    replica.apply_page(page([flag("f-bad", "p-amira", "Cell-sharing risk")]))
    assert patient_completeness(vault.connection, "p-amira", [SITE]).alerts.complete


def test_NW6_a_record_of_a_patient_outside_scope_is_not_stored_whatever_the_server_sends(
    vault: Vault, replica: Replica
) -> None:
    """Issue 13 item 5: scope is checked for every type, not only Patient. A record of a
    patient of another site (never held), or of no patient the device holds, is counted as
    out of scope and never written; a record of an in-scope patient is stored."""
    replica.apply_page(page([amira(), ben(site=OTHER)]))
    stats = replica.apply_page(
        page(
            [
                flag("f-mine", "p-amira", "Self-harm risk"),
                flag("f-other-site", "p-ben", "Violence risk"),
                flag("f-unknown", "p-nobody", "Allergy"),
            ],
            stream="Flag",
        )
    )
    assert (stats.applied, stats.out_of_scope) == (1, 2)
    assert stored(vault, "Flag", "f-mine") is not None
    assert stored(vault, "Flag", "f-other-site") is None
    assert stored(vault, "Flag", "f-unknown") is None
    assert count(vault, "SELECT count(*) FROM quarantine") == 0  # not kept anywhere
    replica.sync_finished(SyncSummary(pulled=1, out_of_scope=2))
    assert entries(vault)[-1].detail["out_of_scope"] == 2
