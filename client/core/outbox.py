"""The outbox: local writes waiting for the server, in the order they were made (docs/records.md).

Invariants:
- Entries are queued only inside the caller's transaction, together with the local change they
  carry; nothing here commits, so a rollback (or a crash before the caller's COMMIT) leaves
  neither the change nor its outbox row.
- Outbox bodies carry no id; a create carries no meta; an update carries only the labels the
  server had set (``meta.profile``, ``meta.security``, ``meta.tag``: ``SERVER_LABELS``), so an
  update never strips them (issue 13 item 2); the local copy keeps them too. The gateway's
  filing tags are not carried: an edit is not filed until the gateway says so again. References
  between resources of one group (a consultation) are ``urn:uuid:<client id>`` (the bundle
  entry's fullUrl), rewritten to ``Type/<server id>`` once the target is sent.
- ``list_outbox`` hands out pending entries in order and never splits a group.
- ``mark_sent`` checks the server's reply before anything changes, re-keys the local copy to the
  server's id and version and fixes references to it; it is idempotent for the same server id.
  For an update it stores the body that went on the wire under the server's new version.
- An impossible transition (unknown entry, not pending, sent twice under two ids) raises
  ``OutboxStateError``: a bug in the caller, never a silent change.
- Unsent work = entries pending or in conflict; a patient with unsent work must not be purged
  (the caller checks ``has_unsent_work``).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from client.core.records import (
    LOCAL_VERSION,
    apply_resources,
    client_id_of,
    get,
    is_fhir_id,
    parse_fhir_datetime,
    require_transaction,
    store_local,
    touch_patients,
    utc_iso,
)
from sync.protocol.fhir.filing import without_filing_tags
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM


class OutboxStateError(Exception):
    """The sync engine asked for an impossible outbox transition (a bug); ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    group_id: str
    resource_type: str
    local_id: str
    client_id: str
    patient_id: str | None
    operation: str
    body: dict[str, Any]
    base_version: str | None
    state: str
    created_at: str
    attempts: int
    last_error: str | None

    @property
    def full_url(self) -> str:
        return f"urn:uuid:{self.client_id}"

    @property
    def if_none_exist(self) -> str:
        return f"identifier={CLIENT_ID_SYSTEM}|{self.client_id}"


_OUTBOX_COLUMNS = (
    "seq, group_id, resource_type, local_id, client_id, patient_id, operation, body,"
    " base_version, state, created_at, attempts, last_error"
)


def rewrite_refs(node: Any, old: str, new: str) -> Any:
    """``node`` with every ``reference`` equal to ``old`` replaced by ``new`` (a copy)."""
    if isinstance(node, dict):
        return {
            k: (new if k == "reference" and v == old else rewrite_refs(v, old, new))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [rewrite_refs(v, old, new) for v in node]
    return node


# The parts of ``meta`` a server sets that an update must carry back (versionId and
# lastUpdated are the server's to assign; these are clinical and security labels).
SERVER_LABELS = ("profile", "security", "tag")


def server_labels(conn: sqlite3.Connection, resource_type: str, resource_id: str) -> dict[str, Any]:
    """``meta.profile``/``security``/``tag`` of the stored copy of a resource ({}: none), less
    the gateway's filing tags (``sync.protocol.fhir.filing``): an edit is not filed yet."""
    stored = get(conn, resource_type, resource_id)
    meta = stored.get("meta") if stored is not None else None
    if not isinstance(meta, dict):
        return {}
    meta = without_filing_tags({"meta": meta}).get("meta") or {}
    return {key: meta[key] for key in SERVER_LABELS if isinstance(meta.get(key), list)}


def wire_body(
    resource: Mapping[str, Any], labels: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What an update carries: the resource without its (local) ``meta``, but with the server's
    ``labels`` (``server_labels``) as its ``meta`` when there are any."""
    body = {k: v for k, v in resource.items() if k != "meta"}
    if labels:
        body["meta"] = dict(labels)
    return body


def local_meta(labels: Mapping[str, Any], stamp: str) -> dict[str, Any]:
    """The ``meta`` of a local copy: the server's labels kept, version ``local``."""
    return {**labels, "versionId": LOCAL_VERSION, "lastUpdated": stamp}


def rowid(value: int | None) -> int:
    """The ``lastrowid`` of an INSERT (``RETURNING`` costs ~0.3 ms under cipher_memory_security)."""
    if value is None:
        raise RuntimeError("an INSERT reported no rowid")
    return value


def enqueue_create(
    conn: sqlite3.Connection, resource: dict[str, Any], group_id: str, patient_id: str, now: str
) -> int:
    """Store ``resource`` locally and queue its create in ``group_id``; returns the outbox seq."""
    store_local(conn, resource)
    local_id = str(resource["id"])
    body = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    body = rewrite_refs(body, f"Encounter/{group_id}", f"urn:uuid:{group_id}")
    seq = conn.execute(
        "INSERT INTO outbox (group_id, resource_type, local_id, client_id, patient_id, operation,"
        " body, created_at) VALUES (?, ?, ?, ?, ?, 'create', ?, ?)",
        (group_id, resource["resourceType"], local_id, local_id, patient_id,
         orjson.dumps(body), now),
    ).lastrowid  # fmt: skip
    return rowid(seq)


def enqueue_update(
    conn: sqlite3.Connection,
    edit: Mapping[str, Any],
    patient_id: str,
    base_version: str,
    stamp: str,
) -> int:
    """Store ``edit`` locally and queue ONE ``update`` (its own group) based on ``base_version``."""
    rid = str(edit["id"])
    labels = server_labels(conn, str(edit["resourceType"]), rid)
    body = wire_body(edit, labels)
    store_local(conn, body | {"meta": local_meta(labels, stamp)})
    seq = conn.execute(
        "INSERT INTO outbox (group_id, resource_type, local_id, client_id, patient_id, operation,"
        " body, base_version, created_at) VALUES (?, ?, ?, ?, ?, 'update', ?, ?, ?)",
        (str(uuid.uuid4()), edit["resourceType"], rid, client_id_of(edit) or rid, patient_id,
         orjson.dumps(body), base_version, stamp),
    ).lastrowid  # fmt: skip
    touch_patients(conn, [patient_id], stamp)
    return rowid(seq)


def replace_pending_body(
    conn: sqlite3.Connection, rtype: str, rid: str, body: Mapping[str, Any]
) -> int | None:
    """Put ``body`` into the resource's newest pending entry and return its seq (None: none).

    An unsent create keeps the shape ``enqueue_create`` gave it (no id, references to its group
    as ``urn:uuid:``); a pending update keeps its base version."""
    pending = conn.execute(
        "SELECT seq, operation, group_id FROM outbox WHERE state = 'pending'"
        " AND resource_type = ? AND local_id = ? ORDER BY seq DESC LIMIT 1",
        (rtype, rid),
    ).fetchone()
    if pending is None:
        return None
    seq, operation, group_id = pending
    wire: Any = dict(body)
    if operation == "create":
        wire = {k: v for k, v in body.items() if k != "id"}
        for other_type, other_id in conn.execute(
            "SELECT resource_type, local_id FROM outbox WHERE state = 'pending'"
            " AND operation = 'create' AND group_id = ?",
            (group_id,),
        ).fetchall():
            wire = rewrite_refs(wire, f"{other_type}/{other_id}", f"urn:uuid:{other_id}")
    conn.execute("UPDATE outbox SET body = ? WHERE seq = ?", (orjson.dumps(wire), seq))
    return int(seq)


def _entry(row: Sequence[Any]) -> OutboxEntry:
    values = list(row)
    values[7] = orjson.loads(values[7])
    return OutboxEntry(*values)


def list_outbox(conn: sqlite3.Connection, limit: int = 100) -> list[OutboxEntry]:
    """Pending entries in seq order: whole groups, at least one, until ``limit`` is reached."""
    groups = conn.execute(
        "SELECT group_id, count(*) FROM outbox WHERE state = 'pending' GROUP BY group_id"
        " ORDER BY min(seq)"
    ).fetchall()
    chosen: list[str] = []
    total = 0
    for group_id, count in groups:
        if chosen and total + count > limit:
            break
        chosen.append(group_id)
        total += count
    rows = conn.execute(
        f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending'"  # noqa: S608 (constant)
        " AND group_id IN (SELECT value FROM json_each(?)) ORDER BY seq",
        (orjson.dumps(chosen).decode(),),
    ).fetchall()
    return [_entry(r) for r in rows]


def outbox_entry(conn: sqlite3.Connection, seq: int) -> OutboxEntry:
    """The entry ``seq`` in any state (``OutboxStateError("unknown_entry")`` if there is none)."""
    row = conn.execute(
        f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE seq = ?",  # noqa: S608 (constant)
        (seq,),
    ).fetchone()
    if row is None:
        raise OutboxStateError("unknown_entry")
    return _entry(row)


def mark_sent(
    conn: sqlite3.Connection,
    seq: int,
    server_id: str,
    server_version: str,
    *,
    now: datetime | None = None,
    server_last_updated: str | None = None,
) -> None:
    """The server has the entry as ``Type/server_id`` at ``server_version`` (caller's txn);
    ``server_last_updated`` is the server's ``meta.lastUpdated`` for it when the reply said."""
    require_transaction(conn)
    if (
        not (is_fhir_id(server_id) and is_fhir_id(server_version))
        or server_version == LOCAL_VERSION
    ):
        raise OutboxStateError("bad_server_reply")  # before anything changes
    entry = outbox_entry(conn, seq)
    if entry.state == "sent":
        (known,) = conn.execute("SELECT server_id FROM outbox WHERE seq = ?", (seq,)).fetchone()
        if known == server_id:
            return
        raise OutboxStateError("already_sent")
    if entry.state != "pending":
        raise OutboxStateError("not_pending")
    stamp = utc_iso(now or datetime.now(UTC))
    conn.execute(
        "UPDATE outbox SET state = 'sent', server_id = ?, server_version = ?, sent_at = ?"
        " WHERE seq = ?",
        (server_id, server_version, stamp, seq),
    )
    if entry.operation == "update":
        # The body that went on the wire is what the server now holds at ``server_version``
        # (the local row may meanwhile show an older server version a pull brought in).
        # Its labels stay; its lastUpdated is the server's when known (versions that are not
        # numbers are ordered by it, so a local stamp would hide the server's copy).
        updated = parse_fhir_datetime(server_last_updated)
        labels = entry.body.get("meta")
        meta = {**(labels if isinstance(labels, dict) else {}), "versionId": server_version}
        meta["lastUpdated"] = utc_iso(updated) if updated is not None else stamp
        sent = dict(entry.body) | {"meta": meta}
        apply_resources(conn, [sent], received_at=now)
        return
    rtype = entry.resource_type
    old_ref, new_ref = f"{rtype}/{entry.local_id}", f"{rtype}/{server_id}"
    local = get(conn, rtype, entry.local_id)
    if local is not None and server_id != entry.local_id:
        conn.execute("DELETE FROM resources WHERE type = ? AND id = ?", (rtype, entry.local_id))
        if get(conn, rtype, server_id) is None:
            local["id"] = server_id
            local["meta"] = dict(local.get("meta") or {}) | {"versionId": server_version}
            apply_resources(conn, [local], received_at=now)
    elif local is not None:
        local["meta"] = dict(local.get("meta") or {}) | {"versionId": server_version}
        apply_resources(conn, [local], received_at=now)
    # References to the sent resource: local copies of the patient, and unsent bodies.
    for rt, rid, body in conn.execute(
        "SELECT type, id, json FROM resources WHERE patient_id = ? AND instr(json, ?) > 0",
        (entry.patient_id, old_ref.encode()),
    ).fetchall():
        fixed = orjson.dumps(rewrite_refs(orjson.loads(body), old_ref, new_ref))
        conn.execute("UPDATE resources SET json = ? WHERE type = ? AND id = ?", (fixed, rt, rid))
    for other_seq, body in conn.execute(
        "SELECT seq, body FROM outbox WHERE state = 'pending' AND group_id = ?", (entry.group_id,)
    ).fetchall():
        fixed = orjson.dumps(rewrite_refs(orjson.loads(body), entry.full_url, new_ref))
        conn.execute("UPDATE outbox SET body = ? WHERE seq = ?", (fixed, other_seq))


def record_push_error(conn: sqlite3.Connection, seq: int, reason: str) -> None:
    """Count a refused push; the entry stays pending. ``reason`` is a stable code, never data."""
    require_transaction(conn)
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
        (reason[:200], seq),
    )


def unsent_count(conn: sqlite3.Connection) -> int:
    """Outbox entries not yet on the server (pending or in conflict)."""
    (count,) = conn.execute(
        "SELECT count(*) FROM outbox WHERE state IN ('pending', 'conflict')"
    ).fetchone()
    return int(count)


def has_unsent_work(conn: sqlite3.Connection, patient_id: str) -> bool:
    """True while any of the patient's outbox entries is pending or in conflict, or someone's
    consultation draft for them is kept (``client.core.drafts``): typed words hold a patient on
    the laptop until they are saved and sent, or discarded."""
    row = conn.execute(
        "SELECT 1 FROM outbox WHERE patient_id = ? AND state IN ('pending', 'conflict')"
        " UNION ALL SELECT 1 FROM drafts WHERE patient_id = ? LIMIT 1",
        (patient_id, patient_id),
    ).fetchone()
    return row is not None
