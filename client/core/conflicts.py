"""The conflict store: an edit the server refused (412) or a create it holds otherwise.

Invariants:
- ``record_conflict`` keeps both versions, overwrites nothing and takes the outbox entry out of
  the pending queue (state ``conflict``), in the caller's transaction. For an update it keeps
  the body that was sent as "mine" and puts the server's version (or its absence) in the store:
  the store shows the server's truth, the edit lives in the conflict.
- ``record_upstream_conflict``: an edit the gateway accepted but the health record refused
  (its 412, learnt through the normal sync) opens a conflict the same way, on the sent entry.
- A resource with an open conflict cannot be edited again until it is resolved
  (``has_open_conflict``).
- ``resolve_conflict`` closes a conflict in the caller's transaction: ``theirs`` keeps the
  server's version; ``mine`` queues the clinician's edit again on top of the newest server
  version the device holds. Its outbox entry leaves the unsent work (state ``sent``,
  ``last_error`` ``conflict_resolved``: the schema has no ``resolved`` state). Refusals raise
  ``ConsultationError`` (field ``conflict``) before anything is written.
- Nothing here commits or rolls back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from client.core.errors import ConsultationError
from client.core.outbox import OutboxStateError, enqueue_update, outbox_entry, rowid
from client.core.records import (
    LOCAL_VERSION,
    apply_resources,
    delete_resource,
    get,
    require_transaction,
    utc_iso,
)


@dataclass(frozen=True)
class Conflict:
    id: int
    outbox_seq: int
    resource_type: str
    local_id: str
    patient_id: str | None
    local_body: dict[str, Any]
    server_body: dict[str, Any] | None
    created_at: str
    edited_at: str | None = None  # when the laptop's version was written (its outbox entry)


def record_conflict(
    conn: sqlite3.Connection,
    seq: int,
    server_resource: Mapping[str, Any] | None,
    *,
    now: datetime | None = None,
) -> int:
    """Keep both versions; the entry leaves the pending queue; nothing is overwritten."""
    require_transaction(conn)
    entry = outbox_entry(conn, seq)
    if entry.state != "pending":
        raise OutboxStateError("not_pending")
    conn.execute("UPDATE outbox SET state = 'conflict' WHERE seq = ?", (seq,))
    if entry.operation == "update":
        local: dict[str, Any] = dict(entry.body)  # the edit as sent: "mine"
        _show_server_version(conn, entry.resource_type, entry.local_id, server_resource, now)
    else:
        local = get(conn, entry.resource_type, entry.local_id) or entry.body
    server_body = None if server_resource is None else orjson.dumps(server_resource)
    cid = conn.execute(
        "INSERT INTO conflicts (outbox_seq, resource_type, local_id, patient_id, local_body,"
        " server_body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (seq, entry.resource_type, entry.local_id, entry.patient_id, orjson.dumps(local),
         server_body, utc_iso(now or datetime.now(UTC))),
    ).lastrowid  # fmt: skip
    return rowid(cid)


def record_upstream_conflict(
    conn: sqlite3.Connection,
    rtype: str,
    rid: str,
    refused_version: str,
    server_resource: Mapping[str, Any],
    *,
    now: datetime | None = None,
) -> int | None:
    """The health record changed ``rtype/rid`` while this laptop's edit of it (the server's
    version ``refused_version``) was on its way up, so the edit was not filed there: the
    gateway sent the health record's version down tagged ``conflict``
    (``sync.protocol.fhir.filing``), already applied to the store. Opens a conflict on this
    laptop's sent update (the existing conflict flow: keep mine queues the edit again on top of
    the health record's version) and returns its id; None when this laptop did not write that
    version, or its conflict was already opened or resolved (re-reading a page adds nothing)."""
    require_transaction(conn)
    row = conn.execute(
        "SELECT seq, patient_id, body FROM outbox WHERE resource_type = ? AND local_id = ?"
        " AND operation = 'update' AND state = 'sent' AND server_version = ?"
        " AND last_error IS NOT 'conflict_resolved' ORDER BY seq DESC LIMIT 1",
        (rtype, rid, refused_version),
    ).fetchone()
    if row is None or has_open_conflict(conn, rtype, rid):
        return None
    seq, patient_id, body = row
    conn.execute("UPDATE outbox SET state = 'conflict' WHERE seq = ?", (seq,))
    cid = conn.execute(
        "INSERT INTO conflicts (outbox_seq, resource_type, local_id, patient_id, local_body,"
        " server_body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (seq, rtype, rid, patient_id, body, orjson.dumps(server_resource),
         utc_iso(now or datetime.now(UTC))),
    ).lastrowid  # fmt: skip
    return rowid(cid)


def _show_server_version(
    conn: sqlite3.Connection,
    rtype: str,
    rid: str,
    server_resource: Mapping[str, Any] | None,
    now: datetime | None,
) -> None:
    """The store shows the server's version of a conflicted resource, or drops the local edit
    when the server no longer has it for this device (deleted, moved out of scope)."""
    if server_resource is not None:
        apply_resources(conn, [server_resource], received_at=now)  # a local row always yields
    row = conn.execute(
        "SELECT version_id FROM resources WHERE type = ? AND id = ?", (rtype, rid)
    ).fetchone()
    if row is not None and row[0] == LOCAL_VERSION:
        delete_resource(conn, rtype, rid)


def has_open_conflict(conn: sqlite3.Connection, rtype: str, rid: str) -> bool:
    """True while a conflict on ``rtype/rid`` is unresolved (the resource is not editable)."""
    row = conn.execute(
        "SELECT 1 FROM conflicts WHERE resource_type = ? AND local_id = ? AND resolved_at IS NULL"
        " LIMIT 1",
        (rtype, rid),
    ).fetchone()
    return row is not None


def resolve_conflict(
    conn: sqlite3.Connection, conflict_id: int, keep: str, *, now: datetime
) -> int | None:
    """Close a conflict (caller's transaction): ``keep="theirs"`` keeps the server's version;
    ``keep="mine"`` queues the clinician's edit again on top of the newest server version the
    device holds and returns the new outbox seq. Refusals raise ``ConsultationError`` before
    anything is written."""
    require_transaction(conn)
    if keep not in ("mine", "theirs"):
        raise ValueError("keep must be 'mine' or 'theirs'")
    row = conn.execute(
        "SELECT c.outbox_seq, c.resource_type, c.local_id, c.patient_id, c.local_body,"
        " c.server_body, c.resolved_at, o.operation FROM conflicts c"
        " JOIN outbox o ON o.seq = c.outbox_seq WHERE c.id = ?",
        (conflict_id,),
    ).fetchone()
    if row is None:
        raise ConsultationError("conflict_unknown", "conflict", "This conflict does not exist.")
    seq, rtype, rid, patient_id, local_body, server_body, resolved_at, operation = row
    if resolved_at is not None:
        raise ConsultationError("conflict_resolved", "conflict", "This conflict is resolved.")
    server = None if server_body is None else orjson.loads(server_body)
    mine: dict[str, Any] = orjson.loads(local_body)
    if keep == "mine" and (server is None or operation != "update" or patient_id is None):
        raise ConsultationError(
            "conflict_cannot_keep_mine",
            "conflict",
            "The server no longer holds this record; your version cannot replace it.",
        )
    stamp = utc_iso(now)
    conn.execute("UPDATE conflicts SET resolved_at = ? WHERE id = ?", (stamp, conflict_id))
    conn.execute(
        "UPDATE outbox SET state = 'sent', last_error = 'conflict_resolved' WHERE seq = ?"
        " AND state = 'conflict'",
        (seq,),
    )
    if operation == "update":
        _show_server_version(conn, rtype, rid, server, now)
    if keep == "theirs":
        return None
    stored = conn.execute(
        "SELECT version_id FROM resources WHERE type = ? AND id = ?", (rtype, rid)
    ).fetchone()
    fallback = (server or {}).get("meta", {}).get("versionId")
    base = str(stored[0]) if stored is not None else str(fallback)
    return enqueue_update(conn, mine | {"id": rid}, str(patient_id), base, stamp)


def list_conflicts(conn: sqlite3.Connection) -> list[Conflict]:
    """Unresolved conflicts, oldest first. Read-only."""
    rows = conn.execute(
        "SELECT c.id, c.outbox_seq, c.resource_type, c.local_id, c.patient_id, c.local_body,"
        " c.server_body, c.created_at, o.created_at FROM conflicts c"
        " LEFT JOIN outbox o ON o.seq = c.outbox_seq WHERE c.resolved_at IS NULL ORDER BY c.id"
    ).fetchall()
    return [
        Conflict(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            orjson.loads(r[5]),
            None if r[6] is None else orjson.loads(r[6]),
            r[7],
            r[8],
        )
        for r in rows
    ]
