"""The store records the format it is written in, and a gateway refuses a store written in a
later format than its own (``store_too_new``) rather than misread it: at open, before anything
is read or written, with a sentence that tells IT what to do. A store from before the record
opens as this format."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from sync.gateway.cli import main
from sync.gateway.store.base import StoreError
from sync.gateway.store.sql import STORE_FORMAT, SqlStore
from sync.gateway.store.sqlite import SqliteStore
from tests.support.gateway import SITE_A, make_store, patient


def _format(store: SqlStore) -> int:
    row = store._one("SELECT version FROM store_format WHERE id = 1")
    assert row is not None
    return int(row[0])


def _set_format(store: SqlStore, version: int | None) -> None:
    """As a later (or an earlier, None: no record) gateway would have left it."""
    with store._write() as execute:
        if version is None:
            execute("DROP TABLE store_format")
        else:
            execute("UPDATE store_format SET version = ? WHERE id = 1", (version,))


def _has_index(store: SqlStore, name: str) -> bool:
    if isinstance(store, SqliteStore):
        query = "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?"
    else:
        query = "SELECT count(*) FROM pg_indexes WHERE indexname = ?"
    row = store._one(query, (name,))
    return row is not None and int(row[0]) > 0


@pytest.fixture
def opened(tmp_path: Path) -> Callable[[], SqlStore]:
    """Opens a store on one same database each call: SQLite in ``tmp_path``, or (with
    ``GATEHOUSE_TEST_STORE=postgres``) a fresh database of the session's PostgreSQL."""
    if os.environ.get("GATEHOUSE_TEST_STORE", "sqlite") != "postgres":
        return lambda: make_store(tmp_path)
    from sync.gateway.store.postgres import PgStore
    from tests.support.postgres import require_server

    dsn = require_server().new_database()
    return lambda: PgStore(dsn)


def test_a_new_store_records_this_format(opened: Callable[[], SqlStore]) -> None:
    store = opened()
    assert _format(store) == STORE_FORMAT
    store.close()


def test_a_store_of_a_later_format_is_refused_and_left_as_it_is(
    opened: Callable[[], SqlStore],
) -> None:
    store = opened()
    with store.write() as tx:
        tx.put("Patient", "p1", patient("p1", SITE_A))
    _set_format(store, STORE_FORMAT + 1)
    with store._write() as execute:  # as a later format might: this version's schema not run
        execute("DROP INDEX resources_patient")
    with pytest.raises(StoreError) as refused:
        opened()
    assert refused.value.reason == "store_too_new"
    assert _format(store) == STORE_FORMAT + 1  # not lowered, nothing rewritten
    assert not _has_index(store, "resources_patient")
    assert store.read("Patient", "p1") is not None
    store.close()


def test_a_store_from_before_the_record_opens_as_this_format(
    opened: Callable[[], SqlStore],
) -> None:
    store = opened()
    with store.write() as tx:
        tx.put("Patient", "p1", patient("p1", SITE_A))
    _set_format(store, None)
    again = opened()
    assert _format(again) == STORE_FORMAT
    assert again.read("Patient", "p1") is not None
    again.close()
    store.close()


def test_the_command_line_says_what_to_do_with_a_store_too_new(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert main(["init", "--data", str(data)]) == 0
    database = next(data.glob("*.sqlite3"))
    with sqlite3.connect(database) as db:
        db.execute("UPDATE store_format SET version = ?", (STORE_FORMAT + 1,))
    capsys.readouterr()
    assert main(["device", "list", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "store_too_new" in err and "later version of the gateway" in err
