"""Issue 14: each note written on a laptop says where it has got to, read from the stored
resource (the gateway's filing tag) and the outbox: saved on this laptop, at the gateway, filed
in the health record (UK local time), or held with the reason in words."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

from client.core import records
from client.core.chart import open_chart
from client.core.consultation import queue_update
from client.core.note_filing import HELD_OTHERWISE, note_filing
from client.core.outbox import server_labels
from sync.protocol.fhir.filing import FILED, HELD, FilingTag, with_filing_tag
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM
from tests.support.fhir import encounter, note, open_db, patient

SCOPE = ("hmp-brixton",)
SUMMER = "2026-07-01T12:00:00+00:00"  # 13:00 BST
WINTER = "2026-12-01T12:00:00+00:00"  # 12:00 GMT
FILED_TAG = FilingTag(FILED)


def _written_here(resource: dict[str, Any], cid: str) -> dict[str, Any]:
    return resource | {"identifier": [{"system": CLIENT_ID_SYSTEM, "value": cid}]}


def _stamped(resource: dict[str, Any], tag: FilingTag, updated: str) -> dict[str, Any]:
    stamped = with_filing_tag(resource, tag)
    stamped["meta"] |= {"versionId": "2", "lastUpdated": updated}
    return stamped


def _db(tmp_path: Path, *resources: dict[str, Any]) -> sqlite3.Connection:
    conn = open_db(tmp_path / "v.db")
    conn.execute("BEGIN")
    records.apply_resources(conn, [patient("p1", "Okafor", ["Grace"]), *resources])
    conn.execute("COMMIT")
    return conn


def _filing(conn: sqlite3.Connection) -> dict[str, Any]:
    chart = open_chart(conn, "p1", today=dt.date(2026, 12, 6), site_scope=SCOPE)
    return {e.id: e.filing for e in chart.timeline}


def test_states_come_from_the_stored_version_in_plain_words_and_uk_time(tmp_path: Path) -> None:
    doc = _written_here(note("n1", "p1", "2026-06-30T10:00:00Z", "Seen"), "c1")
    conn = _db(
        tmp_path,
        doc,
        _stamped(_written_here(note("n2", "p1", "2026-06-30", "x"), "c2"), FILED_TAG, SUMMER),
        _stamped(_written_here(note("n3", "p1", "2026-11-30", "y"), "c3"), FILED_TAG, WINTER),
        _stamped(
            _written_here(note("n4", "p1", "2026-11-29", "z"), "c4"),
            FilingTag(HELD, "upstream_refused"),
            WINTER,
        ),
        _stamped(
            _written_here(note("n5", "p1", "2026-11-28", "w"), "c5"),
            FilingTag(HELD, "something_new"),
            WINTER,
        ),
        note("n6", "p1", "2026-11-27", "from the health record"),
        encounter("e1", "p1", "2026-11-27"),
    )
    states = _filing(conn)
    assert states["n1"].kind == "gateway"
    assert states["n1"].words == "At the gateway (not yet filed in the health record)"
    assert states["n2"].words == "Filed in the health record on 01-Jul-2026 13:00"
    assert states["n3"].words == "Filed in the health record on 01-Dec-2026 12:00"
    assert states["n3"].since == dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
    assert states["n4"].kind == "held"
    assert states["n4"].words == (
        "Held at the gateway: the health record refused it. IT has been told."
    )
    assert "something_new" not in states["n5"].words  # a code is never shown raw
    assert HELD_OTHERWISE in states["n5"].words
    assert states["n6"] is None and states["e1"] is None  # from the health record: no state


def test_unsent_work_wins_over_any_stored_stamp(tmp_path: Path) -> None:
    filed = _stamped(
        _written_here(note("n1", "p1", "2026-11-30", "Seen"), "c1"), FilingTag(FILED), WINTER
    )
    conn = _db(tmp_path, filed)
    assert _filing(conn)["n1"].kind == "filed"
    conn.execute("BEGIN")
    queue_update(conn, filed | {"description": "Corrected"}, now=dt.datetime.now(dt.UTC))
    conn.execute("COMMIT")
    state = _filing(conn)["n1"]
    assert state.kind == "laptop" and state.words == "Saved on this laptop (not yet sent)"
    # The edit carries no filing tag back (it is not filed): on the wire nor in the local copy.
    (body,) = conn.execute("SELECT body FROM outbox").fetchone()
    assert b"gatehouse.example/fhir/filing" not in body
    stored = records.get(conn, "DocumentReference", "n1")
    assert stored is not None and "tag" not in stored["meta"]
    # A server version pulled over the local copy while the edit waits: still unsent.
    conn.execute("BEGIN")
    newer = _stamped(filed, FilingTag(FILED), WINTER)
    newer["meta"]["versionId"] = "3"
    records.apply_resources(conn, [newer])
    conn.execute("COMMIT")
    assert _filing(conn)["n1"].kind == "laptop"


def test_an_outbox_conflict_says_so(tmp_path: Path) -> None:
    doc = _written_here(note("n1", "p1", "2026-11-30", "Seen"), "c1")
    conn = _db(tmp_path, doc)
    conn.execute("BEGIN")
    seq = queue_update(conn, doc | {"description": "Mine"}, now=dt.datetime.now(dt.UTC))
    conn.execute("UPDATE outbox SET state = 'conflict' WHERE seq = ?", (seq,))
    conn.execute("COMMIT")
    assert _filing(conn)["n1"].kind == "conflict"


def test_server_labels_keep_other_tags_but_never_the_filing_ones(tmp_path: Path) -> None:
    doc = _written_here(note("n1", "p1", "2026-11-30", "Seen"), "c1")
    doc["meta"]["tag"] = [{"system": "https://board.example/tags", "code": "reviewed"}]
    conn = _db(tmp_path, _stamped(doc, FilingTag(FILED), WINTER))
    labels = server_labels(conn, "DocumentReference", "n1")
    assert labels == {"tag": [{"system": "https://board.example/tags", "code": "reviewed"}]}
    assert note_filing(records.get(conn, "DocumentReference", "n1") or {}) is not None
