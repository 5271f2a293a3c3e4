"""Consultation drafts: what a clinician has typed but not yet saved, kept in the vault (CR-4).

A draft is the consultation form exactly as typed (vital-sign fields as text, so a half-typed
"37," survives; the note; the plan). It lives in the encrypted vault, one per (user, patient):
only the clinician who typed it sees it again, when they reopen that patient.

Invariants:
- Drafts are never sent anywhere and never enter the outbox; they are not clinical records.
- Saving the consultation deletes the draft in the same transaction
  (``Session.write_consultation``), so a crash can leave the saved consultation or the
  draft, never both and never neither.
- A draft holds its patient on the laptop: retention does not purge a patient while someone's
  draft for them exists (``records.patients_past_retention`` counts it as unsent work); a purge
  or a wipe removes it with everything else.
- ``save_draft`` with an empty form removes the draft (an empty draft is no draft).
- Sizes are bounded like the consultation itself, so a draft can always become a consultation.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from client.core.errors import ConsultationError
from client.core.records import require_transaction, utc_iso

DRAFTS_SCHEMA_SQL = """
CREATE TABLE drafts (
    user_id     TEXT NOT NULL,
    patient_id  TEXT NOT NULL,
    body        BLOB NOT NULL,            -- orjson: {"vitals": {kind: text}, "note", "plan"}
    started_at  TEXT NOT NULL,            -- UTC ISO 8601, first autosave
    saved_at    TEXT NOT NULL,            -- UTC ISO 8601, last autosave
    PRIMARY KEY (user_id, patient_id)
) WITHOUT ROWID;
"""

MAX_FIELD_CHARS = 64_000  # above the consultation's own note and plan limits
MAX_VITAL_CHARS = 32


@dataclass(frozen=True)
class DraftFields:
    """The form as typed. ``vitals`` maps a vital-sign kind to its text (only non-empty ones)."""

    vitals: Mapping[str, str] = field(default_factory=dict)
    note: str = ""
    plan: str = ""

    @property
    def is_empty(self) -> bool:
        return (
            not self.note.strip()
            and not self.plan.strip()
            and not any(text.strip() for text in self.vitals.values())
        )


@dataclass(frozen=True)
class Draft:
    patient_id: str
    fields: DraftFields
    started_at: dt.datetime
    saved_at: dt.datetime


def _check(fields: DraftFields) -> None:
    for name, text in (("note", fields.note), ("plan", fields.plan)):
        if len(text) > MAX_FIELD_CHARS:
            raise ConsultationError(
                "draft_too_long", name, f"The {name} is too long to keep as a draft."
            )
    for kind, text in fields.vitals.items():
        if len(kind) > MAX_VITAL_CHARS or len(text) > MAX_VITAL_CHARS:
            raise ConsultationError(
                "draft_too_long", kind, "This vital sign is too long to keep as a draft."
            )


def save_draft(
    conn: sqlite3.Connection,
    user_id: str,
    patient_id: str,
    fields: DraftFields,
    now: dt.datetime,
) -> bool:
    """Store (or replace) the draft in the caller's transaction; True when one is now kept."""
    require_transaction(conn)
    if fields.is_empty:
        discard_draft(conn, user_id, patient_id)
        return False
    _check(fields)
    body = orjson.dumps(
        {
            "vitals": {k: v for k, v in fields.vitals.items() if v.strip()},
            "note": fields.note,
            "plan": fields.plan,
        }
    )
    stamp = utc_iso(now)
    conn.execute(
        "INSERT INTO drafts (user_id, patient_id, body, started_at, saved_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, patient_id)"
        " DO UPDATE SET body = excluded.body, saved_at = excluded.saved_at",
        (user_id, patient_id, body, stamp, stamp),
    )
    return True


def load_draft(conn: sqlite3.Connection, user_id: str, patient_id: str) -> Draft | None:
    row = conn.execute(
        "SELECT body, started_at, saved_at FROM drafts WHERE user_id = ? AND patient_id = ?",
        (user_id, patient_id),
    ).fetchone()
    if row is None:
        return None
    body = orjson.loads(row[0])
    vitals = body.get("vitals") or {}
    fields = DraftFields(
        vitals={str(k): str(v) for k, v in vitals.items()},
        note=str(body.get("note", "")),
        plan=str(body.get("plan", "")),
    )
    return Draft(
        patient_id,
        fields,
        dt.datetime.fromisoformat(row[1]),
        dt.datetime.fromisoformat(row[2]),
    )


def discard_draft(conn: sqlite3.Connection, user_id: str, patient_id: str) -> bool:
    """Remove the draft in the caller's transaction; True when there was one."""
    require_transaction(conn)
    cursor = conn.execute(
        "DELETE FROM drafts WHERE user_id = ? AND patient_id = ?", (user_id, patient_id)
    )
    return cursor.rowcount > 0


def patients_with_drafts(conn: sqlite3.Connection, user_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT patient_id FROM drafts WHERE user_id = ? ORDER BY saved_at DESC", (user_id,)
    ).fetchall()
    return [str(r[0]) for r in rows]
