"""Issue 15: transactions that lock two sites in opposite orders, pushed at once through two
gateway processes on one PostgreSQL, never hand a laptop a deadlock (a 503 or any error):
the gateway runs a transaction PostgreSQL rolled back to break a deadlock again, and nothing
is lost or filed twice.

A laptop of site A pushes, in one transaction, a note for a patient of A and a late note for a
patient who has moved from A to B (filed at B: ``late_notes``); a laptop of site B does the
mirror image. The first locks A then B, the second B then A. Real ``serve --workers 2``, real
mutual TLS, real PostgreSQL; the laptops are plain HTTPS clients that never retry, so any
deadlock that reached them would show.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from sync.gateway.store.conflicts import retry_conflicts
from sync.gateway.store.loader import load_resources
from sync.gateway.store.postgres import PgStore
from sync.gateway.upstream.writer import ImportWriter, Pending
from tests.support.gateway import SITE_A, SITE_B, patient
from tests.support.postgres import require_server
from tests.support.served_workers import DeviceFiles, ServedData, serve, session

CLIENT = "https://gatehouse.example/fhir/client-id"
PAIRS = 6  # patients moved each way
ROUNDS = 6  # transactions per laptop connection
CONNECTIONS = 3  # per site
T_NOTE = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)


def _note(pid: str, when: dt.datetime) -> dict[str, Any]:
    stamp = when.astimezone(dt.UTC).isoformat(timespec="microseconds")
    cid = str(uuid.uuid4())
    observation = {
        "resourceType": "Observation",
        "identifier": [{"system": CLIENT, "value": cid}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": stamp,
        "valueQuantity": {"value": 72, "unit": "/min"},
    }
    return {
        "fullUrl": f"urn:uuid:{cid}",
        "resource": observation,
        "request": {
            "method": "POST",
            "url": "Observation",
            "ifNoneExist": f"identifier={CLIENT}|{cid}",
        },
    }


def _deadlocks(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def test_opposite_order_transactions_never_hand_a_laptop_a_deadlock(tmp_path: Path) -> None:
    server = require_server()
    dsn = server.new_database("deadlock")
    data = ServedData.create(tmp_path / "gateway")
    store = PgStore(dsn)
    try:
        load_resources(store, [patient(f"a{i}", SITE_A) for i in range(PAIRS)])
        load_resources(store, [patient(f"b{i}", SITE_B) for i in range(PAIRS)])
        load_resources(store, [patient(f"ab{i}", SITE_A) for i in range(PAIRS)])
        load_resources(store, [patient(f"ba{i}", SITE_B) for i in range(PAIRS)])
        time.sleep(0.01)
        written = dt.datetime.now(dt.UTC)  # offline, before the transfers below
        time.sleep(0.01)
        load_resources(store, [patient(f"ab{i}", SITE_B) for i in range(PAIRS)])  # A -> B
        load_resources(store, [patient(f"ba{i}", SITE_A) for i in range(PAIRS)])  # B -> A
        laptops: dict[str, DeviceFiles] = {}
        for site, device_id in ((SITE_A, "dev-a"), (SITE_B, "dev-b")):
            laptops[site] = data.device(device_id, site, tmp_path / "devices")
            store.set_device(device_id, site, "active")
    finally:
        store.close()

    pushed: dict[str, list[str]] = {}  # patient -> client ids pushed for them
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()
    deadlocks_before = _deadlocks(dsn)

    with serve(data, dsn, tmp_path / "gateway.log", workers=2) as served:
        start = threading.Barrier(2 * CONNECTIONS)

        def laptop(site: str, own: str, moved: str) -> None:
            with session(data, laptops[site]) as http:
                start.wait(30)
                for r in range(ROUNDS):
                    i = r % PAIRS
                    entries = [_note(f"{own}{i}", written), _note(f"{moved}{i}", written)]
                    with lock:
                        for entry, pid in zip(entries, (f"{own}{i}", f"{moved}{i}"), strict=True):
                            pushed.setdefault(pid, []).append(
                                entry["resource"]["identifier"][0]["value"]
                            )
                    answer = http.post(
                        f"{served.url}/fhir",
                        json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                        headers={"Content-Type": "application/fhir+json"},
                        timeout=120,
                    )
                    with lock:
                        answers.append((answer.status_code, answer.text[:300]))

        threads = [
            threading.Thread(target=laptop, args=(SITE_A, "a", "ab")) for _ in range(CONNECTIONS)
        ] + [threading.Thread(target=laptop, args=(SITE_B, "b", "ba")) for _ in range(CONNECTIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)

        # Every push answered 200: no deadlock (nor anything else) reached a laptop.
        assert len(answers) == 2 * CONNECTIONS * ROUNDS
        assert [a for a in answers if a[0] != 200] == []

    # Nothing lost, nothing filed twice: each note exists exactly once, at the patient's site.
    with psycopg.connect(dsn, autocommit=True) as conn:
        for pid, client_ids in pushed.items():
            rows = conn.execute(
                "SELECT i.value, r.site FROM resource_identifiers i JOIN resources r"
                " ON r.type = i.type AND r.id = i.id"
                " WHERE i.type = 'Observation' AND i.system = %s AND r.patient_id = %s"
                " AND r.deleted = 0",
                (CLIENT, pid),
            ).fetchall()
            assert sorted(r[0] for r in rows) == sorted(client_ids), pid
            home = SITE_B if pid[:-1] in ("b", "ab") else SITE_A  # ab: moved to B; ba: to A
            assert {r[1] for r in rows} == {home}, pid
    print(f"deadlocks PostgreSQL broke during the test: {_deadlocks(dsn) - deadlocks_before}")


def test_a_transaction_postgresql_rolled_back_to_break_a_deadlock_is_run_again() -> None:
    """The backstop when a site is found only after others are held (a patient moved while
    the transaction ran): two write transactions take two sites in opposite orders, one
    after the other, so PostgreSQL must break the deadlock; ``retry_conflicts`` runs the one
    it rolled back again, and both commit their write exactly once."""
    dsn = require_server().new_database("deadlock")
    store = PgStore(dsn)
    try:
        load_resources(store, [patient("pa", SITE_A), patient("pb", SITE_B)])
        before = _deadlocks(dsn)
        both_hold_one = threading.Barrier(2)
        attempts: dict[str, int] = {"pa": 0, "pb": 0}
        failures: list[BaseException] = []

        def write(first: str, second: str) -> None:
            def once() -> None:
                attempts[first] += 1
                with store.write() as tx:
                    tx.current("Patient", first)  # holds the first patient's site
                    if attempts[first] == 1:
                        both_hold_one.wait(30)
                    tx.current("Patient", second)  # then the other's: opposite orders
                    tx.put("Observation", f"o-{first}", _note(first, T_NOTE)["resource"])

            try:
                retry_conflicts(once)
            except BaseException as err:
                failures.append(err)

        threads = [
            threading.Thread(target=write, args=("pa", "pb")),
            threading.Thread(target=write, args=("pb", "pa")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert failures == []
        assert _deadlocks(dsn) - before == 1  # PostgreSQL broke exactly one deadlock
        assert sorted(attempts.values()) == [1, 2]  # and its victim ran again, once
        for pid in ("pa", "pb"):
            stored = store.read("Observation", f"o-{pid}")
            assert stored is not None and stored.version_id == 1
    finally:
        store.close()


def _until_a_transaction_waits_for_a_lock(dsn: str) -> None:
    deadline = time.monotonic() + 60
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            time.sleep(0.02)
    raise AssertionError("no transaction ever waited for a lock")


def test_an_import_batch_postgresql_rolled_back_to_break_a_deadlock_is_run_again() -> None:
    """An import's batch that moves a patient (upstream) from site B to site A holds A and
    then wants B (``pg_write``: bulk loads lock first); a laptop's transaction holding B then
    wants A. PostgreSQL breaks the deadlock by rolling back the import's transaction (the
    laptop's checks for deadlocks only after a minute); the import's writer runs that batch
    again, and both commit exactly once."""
    dsn = require_server().new_database("deadlock")
    store = PgStore(dsn)
    try:
        load_resources(
            store, [patient("pa", SITE_A), patient("pb", SITE_B), patient("mover", SITE_B)]
        )
        before = _deadlocks(dsn)
        holding_b = threading.Event()
        attempts = {"laptop": 0, "import": 0}
        failures: list[BaseException] = []

        def laptop() -> None:
            def once() -> None:
                attempts["laptop"] += 1
                with store.write() as tx:
                    # Only the import's backend checks for the deadlock in time (1 s): it is
                    # the one PostgreSQL rolls back, however late the laptop starts waiting.
                    store._pg.execute("SET LOCAL deadlock_timeout = '60s'")
                    tx.current("Patient", "pb")  # holds B
                    if attempts["laptop"] == 1:
                        holding_b.set()
                        _until_a_transaction_waits_for_a_lock(dsn)  # the import's, for B
                    tx.current("Patient", "pa")  # then wants A, which the import holds
                    tx.put("Observation", "o-laptop", _note("pb", T_NOTE)["resource"])

            try:
                retry_conflicts(once)
            except BaseException as err:
                failures.append(err)

        thread = threading.Thread(target=laptop)
        thread.start()
        assert holding_b.wait(30)
        writer = ImportWriter(store, dt.datetime.now(dt.UTC))
        commit_once = writer._commit_once

        def counted(batch: list[Pending]) -> Counter[str]:
            attempts["import"] += 1
            return commit_once(batch)

        writer._commit_once = counted  # type: ignore[method-assign]
        moved = patient("mover", SITE_A)
        moved["meta"] = {"versionId": "2", "lastUpdated": "2026-11-20T09:00:00Z"}
        assert writer.offer(moved, SITE_A, "mover") == "mover"
        writer.flush()  # raises the batch's failure, if it failed
        thread.join(120)
        assert failures == []
        assert _deadlocks(dsn) - before == 1  # PostgreSQL broke exactly one deadlock
        assert attempts == {"laptop": 1, "import": 2}  # the import's batch, rolled back, ran again
        assert writer.counts["written"] == 1
        mover = store.read("Patient", "mover")
        assert mover is not None and (mover.site, mover.version_id) == (SITE_A, 2)
        note = store.read("Observation", "o-laptop")
        assert note is not None and (note.site, note.version_id) == (SITE_B, 1)
        assert store.imported("Patient")["mover"].upstream_version == "2"
    finally:
        store.close()
