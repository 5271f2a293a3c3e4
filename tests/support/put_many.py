"""Writing batches both ways, ``put`` one by one and ``put_many``, for the tests that hold
the two to the same rows (``tests/gateway/test_store_put_many.py`` on SQLite,
``tests/gateway/test_pg_put_many.py`` on PostgreSQL): the Hypothesis strategies of batches, a
clock both stores share, the batch writer and SQLite's rows."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from hypothesis import strategies as st

from sync.gateway.store.base import StoreError
from sync.gateway.store.serialised import serialise
from sync.gateway.store.sql import SqlStore
from tests.support.gateway import SITE_A, SITE_B, observation, patient

PATIENTS = ("p1", "p2", "p3")
TABLES = {
    "resources": "type, id",
    "resource_history": "type, id, version_id",
    "changes": "seq",
    "resource_identifiers": "type, id, system, value",
    "patient_sites": "patient_id, from_us, site",
}


def flagged(oid: str, pid: str, code: str) -> dict[str, Any]:
    resource = observation(oid, pid)
    resource["identifier"] = [{"system": "urn:test", "value": code}]
    return resource


items = st.one_of(
    st.builds(
        lambda pid, site: ("Patient", pid, patient(pid, site)),
        st.sampled_from(PATIENTS),
        st.sampled_from((SITE_A, SITE_B)),
    ),
    st.builds(
        lambda oid, pid, code: ("Observation", oid, flagged(oid, pid, code)),
        st.sampled_from(("o1", "o2", "o3", "o4")),
        st.sampled_from((*PATIENTS, "p-unknown")),
        st.sampled_from(("a", "b")),
    ),
)
deletes = st.builds(
    lambda rtype, rid: ("delete", rtype, rid),
    st.just("Patient") | st.just("Observation"),
    st.sampled_from(("p1", "p2", "o1", "o2")),
)
batches = st.lists(
    st.lists(st.one_of(items, items, deletes), min_size=1, max_size=8), min_size=1, max_size=5
)


# A patient deleted, then back at another site (a new stay), then a note for them.
BACK_ELSEWHERE = [
    [("Patient", "p1", patient("p1", SITE_A))],
    [("delete", "Patient", "p1")],
    [("Patient", "p1", patient("p1", SITE_B))],
    [("Observation", "o1", flagged("o1", "p1", "a"))],
]


class Clock:
    """The same instants for both stores: one per call, a minute apart."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(minutes=1)
        return self.now


def apply_batch(
    store: SqlStore,
    batch: list[Any],
    many: bool,
    serialised: bool = False,
    sites: Sequence[str] = (),
) -> str:
    """Write ``batch`` (puts and deletes) in one transaction, the puts between two deletes
    with one ``put_many`` when ``many`` (its clinical resources ``Serialised`` when
    ``serialised``; told ``sites``); return the error reason ('' when written)."""
    try:
        with store.write() as tx:
            tx.put("Organization", SITE_A, {"resourceType": "Organization", "id": SITE_A})
            puts: list[tuple[str, str, Any]] = []
            for item in [*batch, None]:
                if many and item is not None and item[0] != "delete":
                    rtype, rid, resource = item
                    ready = serialise(resource) if serialised else None
                    puts.append((rtype, rid, ready or resource))
                    continue
                tx.put_many(puts, sites=sites if puts else ())
                puts = []
                if item is None:
                    break
                if item[0] == "delete":
                    tx.delete(item[1], item[2])
                else:
                    tx.put(*item)
    except StoreError as refused:
        return refused.reason
    return ""


def sqlite_tables(path: Path, parsed: bool = False) -> dict[str, list[tuple[Any, ...]]]:
    """Every row; with ``parsed``, each stored JSON body as the value it holds."""
    with sqlite3.connect(path) as db:
        tables = {
            table: db.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            for table, order in TABLES.items()
        }
    if parsed:
        for table in ("resources", "resource_history"):
            tables[table] = [
                (*row[:-1], row[-1] and orjson.loads(row[-1])) for row in tables[table]
            ]
    return tables
