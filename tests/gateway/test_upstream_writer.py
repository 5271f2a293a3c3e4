"""The import's writer commits full batches right away (SQLite) or on its committer thread
while the next batch is read (where the store's ``bulk_commits_overlap`` says so:
PostgreSQL). Either way ``flush`` returns only once everything offered has committed, and a
batch that fails is raised, leaves nothing half-written, and is imported whole by the next
pass."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from sync.gateway.store.base import DatabaseFailure
from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.upstream import writer as writer_module
from sync.gateway.upstream.writer import ImportWriter, patient_of
from tests.support.gateway import make_store
from tests.support.sync import seed_resources

SITE = "hmp-brixton"  # the site seed_resources names


def _upstream(count_patients: int) -> list[dict[str, Any]]:
    resources = seed_resources(count_patients, seed=11, sites=1)
    for resource in resources:
        resource["meta"] = {"versionId": "1", "lastUpdated": "2026-03-01T09:00:00Z"}
    return sorted(resources, key=lambda r: r["resourceType"] != "Patient")


def _offer_all(writer: ImportWriter, resources: list[dict[str, Any]]) -> None:
    for resource in resources:
        pid = resource["id"] if resource["resourceType"] == "Patient" else patient_of(resource)
        assert pid is not None
        writer.offer(resource, SITE, pid)


def _rows(path: Path) -> tuple[int, int, int]:
    """(live resources, history rows, imported rows) as another connection sees them."""
    with sqlite3.connect(path) as db:
        return (
            db.execute("SELECT COUNT(*) FROM resources WHERE type <> 'Organization'").fetchone()[0],
            db.execute(
                "SELECT COUNT(*) FROM resource_history WHERE type <> 'Organization'"
            ).fetchone()[0],
            db.execute("SELECT COUNT(*) FROM upstream_imported").fetchone()[0],
        )


@pytest.fixture(params=[False, True], ids=["commits-here", "commits-overlap"])
def store(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(SqliteStore, "bulk_commits_overlap", request.param)
    opened = SqliteStore(tmp_path / "gateway.sqlite3")
    opened.add_site(SITE, "HMP Brixton", dt.datetime.now(dt.UTC))
    yield opened
    opened.close()


def test_flush_returns_once_every_batch_has_committed(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "WRITE_BATCH", 40)
    resources = _upstream(12)
    writer = ImportWriter(store, dt.datetime.now(dt.UTC))
    _offer_all(writer, resources)
    writer.flush()
    assert writer.counts["written"] == len(resources)
    assert _rows(tmp_path / "gateway.sqlite3") == (len(resources),) * 3


def test_a_failed_batch_is_raised_leaves_nothing_half_written_and_the_next_pass_completes(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "WRITE_BATCH", 40)
    resources = _upstream(12)
    assert len(resources) > 120
    record = SqliteStore.record_imports_in_tx
    calls = {"n": 0}

    def failing_second_batch(self: SqliteStore, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the patients' batch, one batch of records, then this one
            raise DatabaseFailure("database_unavailable")
        record(self, *args, **kwargs)

    monkeypatch.setattr(SqliteStore, "record_imports_in_tx", failing_second_batch)
    writer = ImportWriter(store, dt.datetime.now(dt.UTC))
    with pytest.raises(DatabaseFailure):
        _offer_all(writer, resources)
        writer.flush()
    live, history, imported = _rows(tmp_path / "gateway.sqlite3")
    assert live == history == imported  # each committed batch whole, the failed one not at all
    assert 0 < live < len(resources)

    monkeypatch.setattr(SqliteStore, "record_imports_in_tx", record)
    again = ImportWriter(store, dt.datetime.now(dt.UTC))
    _offer_all(again, resources)
    again.flush()
    assert again.counts["written"] == len(resources) - live
    assert again.counts["unchanged"] == live
    assert _rows(tmp_path / "gateway.sqlite3") == (len(resources),) * 3  # one version each


def test_a_batch_commits_on_the_committer_thread_only_where_the_store_says_it_pays(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "WRITE_BATCH", 40)
    record = SqliteStore.record_imports_in_tx
    threads: set[str] = set()

    def noting_the_thread(self: SqliteStore, *args: Any, **kwargs: Any) -> None:
        threads.add(threading.current_thread().name)
        record(self, *args, **kwargs)

    monkeypatch.setattr(SqliteStore, "record_imports_in_tx", noting_the_thread)
    writer = ImportWriter(store, dt.datetime.now(dt.UTC))
    _offer_all(writer, _upstream(4))
    writer.flush()
    assert threads, "no batch was committed"
    if store.bulk_commits_overlap:
        assert all(name.startswith("import-commit") for name in threads)
    else:
        assert threads == {threading.current_thread().name}


def test_sqlite_commits_here_and_postgresql_overlaps() -> None:
    from sync.gateway.store import postgres, sqlite

    assert sqlite.DIALECT.bulk_commits_overlap is False
    assert postgres.DIALECT.bulk_commits_overlap is True


def test_a_batch_of_imported_versions_is_recorded_in_order_the_last_of_a_key_winning(
    tmp_path: Path,
) -> None:
    """On either store (``GATEHOUSE_TEST_STORE``; PostgreSQL sends the batch as one statement
    of arrays): new keys added, a held key updated, a key twice in one batch kept as its last."""
    store = make_store(tmp_path)
    now = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)
    try:
        with store.write():
            store.record_imports_in_tx([("Observation", "o1", "1", SITE, "p1")], now)
        with store.write():
            store.record_imports_in_tx(
                [
                    ("Observation", "o1", "2", SITE, "p1"),
                    ("Observation", "o2", "1", SITE, "p2"),
                    ("Observation", "o2", "3", "hmp-other", "p2"),
                ],
                now + dt.timedelta(hours=1),
            )
        held = store.imported("Observation")
        assert {rid: (i.upstream_version, i.site, i.patient_id) for rid, i in held.items()} == {
            "o1": ("2", SITE, "p1"),
            "o2": ("3", "hmp-other", "p2"),
        }
    finally:
        store.close()
