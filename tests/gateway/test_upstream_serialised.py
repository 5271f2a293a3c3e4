"""The import's serialised path (``store.serialised``, ``screening.ReadyLine``,
``ImportWriter.offer_ready``): a resource a worker validated, checked and serialised is stored
as the very resource the dict path stores, refused for the same reasons, and a reference to a
note filed from here is still rewritten to the gateway's id."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.gateway.store.resources import ResourceError, check_resource
from sync.gateway.store.serialised import serialise
from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.upstream.references import references_in_json, rewrite
from sync.gateway.upstream.screening import ReadyLine, ready_line, screen_and_serialise
from sync.gateway.upstream.writer import ImportWriter
from tests.support.gateway import observation, patient

SITE = "hmp-brixton"
STAMP = "2026-03-01T09:00:00.000000+00:00"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["reference", "display", "value", "x", 'é"/\\']), inner)
    ),
    max_leaves=10,
)
references = st.sampled_from(
    [
        "Encounter/e1",
        "Patient/p1",
        "Observation/o-2.x",
        "urn:uuid:0b8f4c1e-9a43-4c2b-8f53-1c3e2b7d9a10",
        'Enc"ounter/e1',
        "Encounter/e\\1",
        "Encounter\\/e1",
        "Éncounter/e1",
        "Encounter/e1/_history/2",
        "Encounter/",
        "/e1",
        "",
    ]
)
with_references = st.recursive(
    st.builds(lambda ref: {"reference": ref}, references) | json_values,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["reference", "encounter", "partOf", "x"]), inner)
    ),
    max_leaves=12,
)


def _upstream(resource: dict[str, Any], version: str = "1") -> dict[str, Any]:
    return {**resource, "meta": {"versionId": version, "lastUpdated": "2026-03-01T09:00:00Z"}}


def _dict_path_body(resource: dict[str, Any], rid: str, version_id: int) -> dict[str, Any]:
    """What ``_write_run`` stores for a dict (``resource_tables``), as a value."""
    body = dict(resource)
    body["id"] = rid
    body["meta"] = {**(body.get("meta") or {}), "versionId": str(version_id), "lastUpdated": STAMP}
    return body


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["source", "profile", "tag", "versionId"]), json_values),
    st.dictionaries(st.sampled_from(["status", "note", "valueString", "é", 'x"y']), json_values),
    st.integers(1, 10**6),
)
def test_a_serialised_body_holds_exactly_what_the_dict_path_stores(
    meta: dict[str, Any], members: dict[str, Any], version_id: int
) -> None:
    resource = {**observation("o1", "p1"), **members, "meta": meta}
    serialised = serialise(resource)
    assert serialised is not None
    assert (serialised.rtype, serialised.patient) == ("Observation", "p1")
    stored = orjson.loads(serialised.body("gw-7", version_id, STAMP))
    assert stored == _dict_path_body(resource, "gw-7", version_id)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(identifier=[{"system": "urn:" + "x" * 300, "value": "v"}]),
        lambda r: r.update(subject={"reference": "Group/g1"}),
        lambda r: r.update(meta=["not", "a", "dict"]),
        lambda r: r.update(id="bad id"),
    ],
)
def test_serialise_refuses_what_the_stores_check_refuses_for_the_same_reason(change: Any) -> None:
    resource = observation("o1", "p1")
    change(resource)
    with pytest.raises(ResourceError) as checked:
        check_resource(resource, "Observation")
    with pytest.raises(ResourceError) as serialising:
        serialise(resource)
    assert serialising.value.reason == checked.value.reason


def test_only_clinical_resources_with_an_id_are_serialised() -> None:
    assert serialise(patient("p1", SITE)) is None
    assert serialise({"resourceType": "Organization", "id": SITE}) is None
    assert serialise({k: v for k, v in observation("o1", "p1").items() if k != "id"}) is None
    serialised = serialise(observation("o1", "p1"))
    assert serialised is not None
    with pytest.raises(ResourceError):
        serialised.body('x","evil":"1', 1, STAMP)  # an id is spliced only when it is one


@settings(max_examples=300, deadline=None)
@given(with_references)
def test_references_in_json_finds_exactly_what_rewrite_looks_up(value: Any) -> None:
    looked_up: list[tuple[str, str]] = []

    def lookup(rtype: str, rid: str) -> None:
        looked_up.append((rtype, rid))

    rewrite(value, lookup)
    assert sorted(references_in_json(orjson.dumps(value))) == sorted(looked_up)


# -- the writer: offer_ready against offer


def _ready(resource: dict[str, Any]) -> ReadyLine:
    raw = orjson.dumps(resource)
    ((reason, _, valid, ready),) = screen_and_serialise([raw])
    assert (reason, valid) == ("", True) and ready is not None
    return ready_line(raw, ready)


def _store(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    now = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
    store.add_site(SITE, "HMP Brixton", now)
    return store


def _rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The resources, their history and identifiers, and what was imported (bodies as values,
    times left out: two stores write at two instants)."""
    with sqlite3.connect(path) as db:
        return {
            "resources": [
                (*row[:3], orjson.loads(row[3]))
                for row in db.execute(
                    "SELECT type, id, version_id, body FROM resources ORDER BY type, id"
                )
            ],
            "history": db.execute(
                "SELECT type, id, version_id, site FROM resource_history ORDER BY type, id"
            ).fetchall(),
            "identifiers": db.execute(
                "SELECT * FROM resource_identifiers ORDER BY type, id, system"
            ).fetchall(),
            "imported": db.execute(
                "SELECT type, id, upstream_version, site FROM upstream_imported ORDER BY type, id"
            ).fetchall(),
        }


def _without_stamps(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    for index, row in enumerate(rows["resources"]):
        row[3]["meta"].pop("lastUpdated")
        rows["resources"][index] = row
    return rows


def _records() -> list[dict[str, Any]]:
    flagged = _upstream(observation("o2", "p1", 80.0))
    flagged["identifier"] = [{"system": "urn:lab", "value": "L-1"}]
    flagged["meta"]["source"] = "lab-7"
    return [_upstream(observation("o1", "p1")), flagged, _upstream(observation("o3", "p2"))]


def test_a_ready_line_is_stored_as_the_same_resource_offered_as_a_dict(tmp_path: Path) -> None:
    stores = {}
    for way in ("dict", "ready"):
        store = _store(tmp_path / f"{way}.sqlite3")
        writer = ImportWriter(store, dt.datetime.now(dt.UTC))
        for pid in ("p1", "p2"):
            writer.offer(_upstream(patient(pid, SITE)), SITE, pid)
        writer.flush()
        for record in _records():
            pid = record["subject"]["reference"].split("/")[1]
            if way == "dict":
                writer.offer(record, SITE, pid)
            else:
                assert writer.offer_ready(_ready(record), SITE, pid) == record["id"]
        again = _ready(_records()[0])  # the same upstream version again: nothing new
        assert writer.offer_ready(again, SITE, "p1") == "o1"
        writer.flush()
        stores[way] = writer.counts
        store.close()
    assert stores["ready"]["written"] == stores["dict"]["written"] == 5
    assert stores["ready"]["unchanged"] == 1
    ready = _without_stamps(_rows(tmp_path / "ready.sqlite3"))
    assert ready == _without_stamps(_rows(tmp_path / "dict.sqlite3"))
    assert ("Observation", "o2", "urn:lab", "L-1") in ready["identifiers"]


def test_a_ready_line_naming_a_note_filed_from_here_names_it_by_the_gateways_id(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.sqlite3"
    store = _store(path)
    with sqlite3.connect(path) as db:  # a laptop's Encounter, filed upstream as "up-enc-1"
        db.execute(
            "INSERT INTO upstream_filed (upstream_id, upstream_version, type, id)"
            " VALUES ('up-enc-1', '1', 'Encounter', 'gw-enc-1')"
        )
    writer = ImportWriter(store, dt.datetime.now(dt.UTC))
    writer.offer(_upstream(patient("p1", SITE)), SITE, "p1")
    naming = _upstream(observation("o1", "p1"))
    naming["encounter"] = {"reference": "Encounter/up-enc-1"}
    other = _upstream(observation("o2", "p1"))
    other["encounter"] = {"reference": "Encounter/up-enc-2"}  # not filed from here
    assert writer.offer_ready(_ready(naming), SITE, "p1") == "o1"
    assert writer.offer_ready(_ready(other), SITE, "p1") == "o2"
    writer.flush()
    o1, o2 = writer.store.read("Observation", "o1"), writer.store.read("Observation", "o2")
    assert o1 is not None and o2 is not None
    assert orjson.loads(o1.body)["encounter"] == {"reference": "Encounter/gw-enc-1"}
    assert orjson.loads(o2.body)["encounter"] == {"reference": "Encounter/up-enc-2"}
    store.close()
