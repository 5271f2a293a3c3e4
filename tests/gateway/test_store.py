"""The SQLite store: change sequence = commit order, monotonic lastUpdated, atomicity, and
database failures as ``StoreError`` (busy, unreadable, closed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sync.gateway.store import sqlite as sqlite_store
from sync.gateway.store.base import HistoryQuery, SearchQuery, StoreError
from sync.gateway.store.loader import load_resources
from sync.gateway.store.sqlite import SqliteStore
from tests.support.gateway import SITE_A, SITE_B, observation, patient
from tests.support.store_checks import (
    assert_a_failed_write_leaves_nothing,
    assert_a_writer_waiting_too_long_gives_up_busy,
    assert_commit_order_is_seq_order,
)


def test_a_later_commit_never_gets_a_smaller_seq(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    load_resources(store, [patient("p1", SITE_A)])
    assert_commit_order_is_seq_order(store, store, wait=5)
    store.close()


def test_last_updated_is_monotonic_even_when_the_clock_goes_back(tmp_path: Path) -> None:
    times = iter(dt.datetime(2026, 1, 1, tzinfo=dt.UTC) - dt.timedelta(hours=h) for h in range(100))
    store = SqliteStore(tmp_path / "db.sqlite3", clock=lambda: next(times))
    load_resources(store, [patient("p1", SITE_A)])
    for i in range(5):
        load_resources(store, [observation(f"o{i}", "p1")])
    stamps = [c.last_updated for c in store.history(HistoryQuery(site=SITE_A, count=100))]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    store.close()


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    load_resources(store, [patient("p1", SITE_A)])
    assert_a_failed_write_leaves_nothing(store, store)
    store.close()


def test_a_writer_waiting_past_the_busy_timeout_gets_database_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = SqliteStore(tmp_path / "db.sqlite3")
    monkeypatch.setattr(sqlite_store, "DIALECT", sqlite_store.sqlite_dialect(busy_timeout_ms=100))
    second = SqliteStore(tmp_path / "db.sqlite3")
    load_resources(first, [patient("p1", SITE_A)])
    assert_a_writer_waiting_too_long_gives_up_busy(first, second)
    first.close()
    second.close()


def test_an_unreadable_database_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    path.write_bytes(b"this is not a database" * 512)
    with pytest.raises(StoreError) as err:
        SqliteStore(path)
    assert err.value.reason == "database_unavailable"


def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    store.close()
    with pytest.raises(StoreError) as err:
        store.head_seq()
    assert err.value.reason == "closed"


def test_delete_is_a_version_and_vread_keeps_the_past(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    load_resources(store, [patient("p1", SITE_A), observation("o1", "p1")])
    with store.write() as tx:
        gone = tx.delete("Observation", "o1")
    assert gone.version_id == 2 and gone.deleted
    current = store.read("Observation", "o1")
    assert current is not None and current.deleted
    first = store.vread("Observation", "o1", 1)
    assert first is not None and not first.deleted and b'"versionId":"1"' in first.body
    ops = [(c.rid, c.op) for c in store.history(HistoryQuery(site=SITE_A, count=10))]
    assert ops == [("p1", "put"), ("o1", "put"), ("o1", "delete")]
    with pytest.raises(StoreError), store.write() as tx:
        tx.delete("Observation", "o1")
    store.close()


def test_transfer_writes_leave_and_put_rows_for_every_resource(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    load_resources(store, [patient("p1", SITE_A), observation("o1", "p1")])
    head = store.head_seq()
    load_resources(store, [patient("p1", SITE_B)])
    old = store.history(HistoryQuery(site=SITE_A, count=10, after_seq=head))
    new = store.history(HistoryQuery(site=SITE_B, count=10, after_seq=head))
    assert sorted((c.rid, c.op) for c in old) == [("o1", "leave"), ("p1", "leave")]
    assert sorted((c.rid, c.op, c.version_id) for c in new) == [("o1", "put", 1), ("p1", "put", 2)]
    moved = store.read("Observation", "o1")
    assert moved is not None and moved.site == SITE_B
    store.close()


def test_loader_writes_in_batches(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    items = [patient(f"p{i}", SITE_A) for i in range(7)]
    assert load_resources(store, items, batch=3) == 7
    assert store.head_seq() == 7
    assert len(store.search(SearchQuery(rtype="Patient", site=SITE_A, count=100))) == 7
    store.close()
