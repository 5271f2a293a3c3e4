"""A version's JSON is stored once: the current live version's history row holds none (its JSON
is the ``resources`` row's), and the write that replaces that version moves the JSON into its
history row. Whatever mix of puts, batched puts, deletes, re-creations and transfers ran,
``vread`` of every version and the change feed's every ``put`` give exactly the JSON that
version was written with; and a store written before (every history body in full) reads the
same and keeps its rows."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.gateway.store.base import HistoryQuery, StoredResource, StoreError
from sync.gateway.store.sql import SqlStore
from sync.gateway.store.sqlite import SqliteStore
from tests.support.gateway import SITE_A, SITE_B, make_store, observation, patient

SITES = (SITE_A, SITE_B)
# (type, id, version) -> (deleted, the JSON as a value)
Written = dict[tuple[str, str, int], tuple[bool, Any]]

puts = st.one_of(
    st.builds(
        lambda pid, site: ("Patient", pid, patient(pid, site)),
        st.sampled_from(("p1", "p2")),
        st.sampled_from(SITES),
    ),
    st.builds(
        lambda oid, pid, value: ("Observation", oid, observation(oid, pid, value)),
        st.sampled_from(("o1", "o2", "o3")),
        st.sampled_from(("p1", "p2")),
        st.floats(min_value=30, max_value=200, allow_nan=False),
    ),
)
deletes = st.builds(
    lambda rtype, rid: ("delete", rtype, rid),
    st.sampled_from(("Patient", "Observation")),
    st.sampled_from(("p1", "o1", "o2")),
)
# each step: ("one", [items]) one put or delete at a time, or ("many", [puts]) one put_many
steps = st.lists(
    st.one_of(
        st.tuples(st.just("one"), st.lists(st.one_of(puts, deletes), min_size=1, max_size=4)),
        st.tuples(st.just("many"), st.lists(puts, min_size=1, max_size=6)),
    ),
    min_size=1,
    max_size=8,
)


def _note(written: Written, stored: list[StoredResource]) -> None:
    for one in stored:
        value = None if one.deleted else orjson.loads(one.body)
        written[(one.rtype, one.rid, one.version_id)] = (one.deleted, value)


def _run(store: SqlStore, step: tuple[str, list[tuple[str, str, Any]]], written: Written) -> None:
    """One step, each write in its own transaction; a refused one (unknown patient, nothing
    to delete) writes nothing, so the record of what was written stays exact."""
    kind, items = step
    groups = [items] if kind == "many" else [[item] for item in items]
    for group in groups:
        try:
            with store.write() as tx:
                if group[0][0] == "delete":
                    stored = [tx.delete(group[0][1], group[0][2])]
                else:
                    stored = tx.put_many(group)
        except StoreError:
            continue
        _note(written, stored)


def _assert_every_version_reads_as_written(store: SqlStore, written: Written) -> None:
    for (rtype, rid, version), (deleted, value) in written.items():
        got = store.vread(rtype, rid, version)
        assert got is not None and got.deleted == deleted, (rtype, rid, version)
        if not deleted:
            assert orjson.loads(got.body) == value, (rtype, rid, version)
    fed = 0
    for site in SITES:
        for change in store.history(HistoryQuery(site=site, count=10_000)):
            if change.op == "put":
                deleted, value = written[(change.rtype, change.rid, change.version_id)]
                assert change.body is not None and orjson.loads(change.body) == value
                fed += 1
    assert fed >= sum(1 for deleted, _ in written.values() if not deleted)


def _empty_history_bodies(path: Path) -> tuple[set[Any], set[Any]]:
    """(the live history rows with an empty body, the current live versions) of the SQLite
    store at ``path``."""
    db = sqlite3.connect(path)
    try:
        empty = db.execute(
            "SELECT type, id, version_id FROM resource_history"
            " WHERE deleted = 0 AND length(body) = 0"
        ).fetchall()
        live = db.execute("SELECT type, id, version_id FROM resources WHERE deleted = 0").fetchall()
    finally:
        db.close()
    return set(empty), set(live)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_every_version_reads_as_written_and_only_the_current_one_lives_in_resources(
    plan: list[tuple[str, list[tuple[str, str, Any]]]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.sqlite3"
        store = SqliteStore(path)
        written: Written = {}
        for step in plan:
            _run(store, step, written)
        _assert_every_version_reads_as_written(store, written)
        empty, live = _empty_history_bodies(path)
        assert empty == live  # stored once: every current version, and nothing else
        store.close()


def test_a_replaced_and_a_deleted_version_keep_their_json(tmp_path: Path) -> None:
    """On either store (``GATEHOUSE_TEST_STORE``): v1 replaced by v2, then deleted."""
    store = make_store(tmp_path)
    written: Written = {}
    _run(store, ("many", [("Patient", "p1", patient("p1", SITE_A))]), written)
    _run(store, ("many", [("Observation", "o1", observation("o1", "p1", 70.0))]), written)
    _run(store, ("one", [("Observation", "o1", observation("o1", "p1", 90.0))]), written)
    _run(store, ("one", [("delete", "Observation", "o1")]), written)
    _run(store, ("one", [("Patient", "p1", patient("p1", SITE_B))]), written)  # a transfer
    assert {key for key in written if key[0] == "Observation"} == {
        ("Observation", "o1", 1),
        ("Observation", "o1", 2),
        ("Observation", "o1", 3),
    }
    _assert_every_version_reads_as_written(store, written)
    first = store.vread("Observation", "o1", 1)
    assert first is not None and orjson.loads(first.body)["valueQuantity"]["value"] == 70.0
    store.close()


def test_a_store_with_full_history_bodies_reads_the_same_and_keeps_them(tmp_path: Path) -> None:
    """A store written before bodies were stored once: its rows are read as they are, and a
    later version leaves them untouched."""
    path = tmp_path / "gateway.sqlite3"
    store = SqliteStore(path)
    written: Written = {}
    _run(store, ("many", [("Patient", "p1", patient("p1", SITE_A))]), written)
    _run(store, ("many", [("Observation", "o1", observation("o1", "p1", 70.0))]), written)
    with sqlite3.connect(path) as db:  # as the earlier version wrote it
        db.execute(
            "UPDATE resource_history SET body = (SELECT r.body FROM resources r"
            " WHERE r.type = resource_history.type AND r.id = resource_history.id)"
            " WHERE deleted = 0 AND length(body) = 0"
        )
    db.close()
    assert _empty_history_bodies(path)[0] == set()
    _assert_every_version_reads_as_written(store, written)
    _run(store, ("one", [("Observation", "o1", observation("o1", "p1", 90.0))]), written)
    _assert_every_version_reads_as_written(store, written)
    empty, _live = _empty_history_bodies(path)
    assert empty == {("Observation", "o1", 2)}
    store.close()
