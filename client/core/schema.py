"""The vault's schema as an ordered list of migrations.

Invariants:
- ``MIGRATIONS[i]`` moves a database from ``user_version == i`` to ``i + 1``. Entries are only
  ever appended; a shipped migration is never edited (devices in the field already ran it).
- Each entry is one SQL script of plain DDL/DML with no ``BEGIN``/``COMMIT`` of its own, so the
  vault decides how to run it (the vault sets ``user_version`` in the same step).
- Migration 1 holds the records store (docs/records.md): ``resources`` (every FHIR resource, one
  row per (type, id), JSON as orjson bytes), ``patient_index`` + ``patient_fts`` (patient search;
  FTS5 with ``secure-delete`` on, so a deleted patient's terms leave the index at once),
  ``outbox`` (offline writes waiting for the gateway) and ``conflicts`` (both versions kept).
- Migration 2 holds the audit chain; migration 3 the sync replica's cursors and quarantine;
  4 the gender column of the search index; 5 the consultation drafts; 6 what the laptop
  knows about the completeness of each patient's record.
"""

from __future__ import annotations

from client.core.audit_log import AUDIT_SCHEMA_SQL
from client.core.drafts import DRAFTS_SCHEMA_SQL

RECORDS_V1 = """
CREATE TABLE resources (
    type          TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version_id    TEXT    NOT NULL,           -- meta.versionId; 'local' until the server has it
    version_num   INTEGER,                    -- versionId as an integer when it is one
    last_updated  TEXT    NOT NULL,           -- meta.lastUpdated, UTC ISO 8601 (sortable)
    patient_id    TEXT,                       -- Patient id this resource belongs to
    site          TEXT,                       -- Organization id (Patient, Encounter)
    client_id     TEXT,                       -- client identifier (UUID) when made on a device
    active        INTEGER NOT NULL DEFAULT 0, -- clinically active (Flag, Condition, ...)
    json          BLOB    NOT NULL,           -- the resource, orjson bytes
    PRIMARY KEY (type, id)
);
CREATE INDEX resources_by_patient ON resources (patient_id, type, active);
CREATE INDEX resources_by_client_id ON resources (client_id) WHERE client_id IS NOT NULL;

CREATE TABLE patient_index (
    doc            INTEGER PRIMARY KEY,       -- rowid shared with patient_fts
    patient_id     TEXT NOT NULL UNIQUE,
    display_name   TEXT NOT NULL,
    sort_key       TEXT NOT NULL,
    birth_date     TEXT,                      -- YYYY-MM-DD
    nhs_number     TEXT,                      -- 10 digits
    prison_number  TEXT,                      -- upper case
    site           TEXT,
    refreshed_at   TEXT NOT NULL              -- last time sync or a local write touched it
);
CREATE INDEX patient_index_nhs ON patient_index (nhs_number);
CREATE INDEX patient_index_prison ON patient_index (prison_number);
CREATE INDEX patient_index_birth ON patient_index (birth_date);
CREATE INDEX patient_index_refreshed ON patient_index (refreshed_at);

CREATE VIRTUAL TABLE patient_fts USING fts5(
    terms,
    tokenize = 'unicode61 remove_diacritics 2',
    prefix = '1 2 3'
);
INSERT INTO patient_fts (patient_fts, rank) VALUES ('secure-delete', 1);

CREATE TABLE outbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id       TEXT    NOT NULL,          -- entries pushed together (one consultation)
    resource_type  TEXT    NOT NULL,
    local_id       TEXT    NOT NULL,
    client_id      TEXT    NOT NULL,
    patient_id     TEXT,
    operation      TEXT    NOT NULL CHECK (operation IN ('create', 'update')),
    body           BLOB    NOT NULL,          -- orjson bytes, as it goes on the wire
    base_version   TEXT,                      -- for ifMatch on updates
    state          TEXT    NOT NULL DEFAULT 'pending'
                           CHECK (state IN ('pending', 'sent', 'conflict')),
    created_at     TEXT    NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    server_id      TEXT,
    server_version TEXT,
    sent_at        TEXT
);
CREATE INDEX outbox_by_state ON outbox (state, seq);
CREATE INDEX outbox_by_patient ON outbox (patient_id, state);
CREATE INDEX outbox_by_client_id ON outbox (client_id);

CREATE TABLE conflicts (
    id             INTEGER PRIMARY KEY,
    outbox_seq     INTEGER NOT NULL REFERENCES outbox (seq),
    resource_type  TEXT    NOT NULL,
    local_id       TEXT    NOT NULL,
    patient_id     TEXT,
    local_body     BLOB    NOT NULL,
    server_body    BLOB,                      -- NULL when the server sent no body
    created_at     TEXT    NOT NULL,
    resolved_at    TEXT
);
CREATE INDEX conflicts_by_patient ON conflicts (patient_id);
"""

# Migration 2: the audit chain (client.core.audit_log) and the session's bookkeeping:
# ``imported_pending`` remembers which events queued in the header while the vault was locked
# (failed logins, lockouts, clock tamper) are already in the chain, so a crash between the
# commit and the header acknowledgement never duplicates one.
SESSION_V2 = (
    AUDIT_SCHEMA_SQL
    + """
CREATE TABLE imported_pending (
    eid TEXT PRIMARY KEY
) WITHOUT ROWID;
"""
)

# Migration 3: the sync replica (client.core.replica). ``sync_cursors`` holds, per stream, the
# cursor committed with the last applied page (same transaction as the page). ``quarantine``
# keeps inbound items that failed validation, with the reason, the JSON path and the raw bytes
# (inside the encrypted vault, never in a file); ``raw_sha256`` + UNIQUE makes re-applying a page
# add no duplicate; ``raw_bytes`` is the original size (``raw`` is capped, see the replica).
SYNC_V3 = """
CREATE TABLE sync_cursors (
    stream      TEXT PRIMARY KEY,
    cursor      TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE quarantine (
    id             INTEGER PRIMARY KEY,
    stream         TEXT    NOT NULL,
    resource_type  TEXT,
    resource_id    TEXT,
    reason         TEXT    NOT NULL,          -- a stable code from the validator or the store
    path           TEXT    NOT NULL,          -- where in the item it failed ('' when unknown)
    raw            BLOB    NOT NULL,          -- the inbound bytes (capped)
    raw_sha256     TEXT    NOT NULL,          -- of the full inbound bytes
    raw_bytes      INTEGER NOT NULL,          -- size of the full inbound bytes
    received_at    TEXT    NOT NULL,
    UNIQUE (stream, raw_sha256, reason, path)
);
CREATE INDEX quarantine_by_resource ON quarantine (resource_type, resource_id);
"""

# Migration 4: the patient's administrative gender in the search index, so search results can
# show it beside the date of birth (telling two patients of the same name apart). Existing rows
# take it from the stored Patient; NULL means the record does not say.
GENDER_V4 = """
ALTER TABLE patient_index ADD COLUMN gender TEXT;
UPDATE patient_index SET gender = (
    SELECT json_extract(CAST(r.json AS TEXT), '$.gender') FROM resources r
    WHERE r.type = 'Patient' AND r.id = patient_index.patient_id
);
"""

# Migration 5: consultation drafts (client.core.drafts), what a clinician typed but did not yet
# save, kept encrypted in the vault across a lock, a sign-out or a crash (CR-4).
DRAFTS_V5 = DRAFTS_SCHEMA_SQL

# Migration 6: what the laptop knows about the completeness of each patient's record (UI-5,
# client.core.completeness). ``complete_at`` is the end of the last successful sync while the
# patient was in scope (NULL: never, e.g. a laptop upgraded before its next sync, or a pull that
# stopped part-way); ``quarantine.patient_id`` names whose record a held-back item belongs to
# (filled from the kept bytes for rows quarantined before this migration, where they parse).
COMPLETENESS_V6 = """
ALTER TABLE patient_index ADD COLUMN complete_at TEXT;
ALTER TABLE quarantine ADD COLUMN patient_id TEXT;
UPDATE quarantine SET patient_id = (
    SELECT CASE
        WHEN j.type = 'Patient' THEN j.id
        WHEN j.ref LIKE 'Patient/%' THEN substr(j.ref, 9)
    END
    FROM (
        SELECT
            coalesce(json_extract(CAST(raw AS TEXT), '$.resource.resourceType'),
                     json_extract(CAST(raw AS TEXT), '$.resourceType')) AS type,
            coalesce(json_extract(CAST(raw AS TEXT), '$.resource.id'),
                     json_extract(CAST(raw AS TEXT), '$.id')) AS id,
            coalesce(json_extract(CAST(raw AS TEXT), '$.resource.subject.reference'),
                     json_extract(CAST(raw AS TEXT), '$.resource.patient.reference'),
                     json_extract(CAST(raw AS TEXT), '$.subject.reference'),
                     json_extract(CAST(raw AS TEXT), '$.patient.reference')) AS ref
    ) AS j
) WHERE json_valid(CAST(raw AS TEXT));
CREATE INDEX quarantine_by_patient ON quarantine (patient_id);
"""

MIGRATIONS: tuple[str, ...] = (
    RECORDS_V1,
    SESSION_V2,
    SYNC_V3,
    GENDER_V4,
    DRAFTS_V5,
    COMPLETENESS_V6,
)

SCHEMA_VERSION = len(MIGRATIONS)
