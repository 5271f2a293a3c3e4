"""The local records store: FHIR R4 resources in the vault (docs/records.md).

Invariants:
- One row per (type, id). A resource is stored only after a structural check (known type, FHIR
  id, ``meta.versionId`` and an offset-aware ``meta.lastUpdated``, a ``Patient/<id>`` subject for
  clinical types, bounded size); a failing one is reported in ``ApplyStats.rejected``, never
  stored.
- Versions never go backwards: an incoming resource whose version is older than or equal to the
  stored one is ignored (integers compare as numbers; opaque version ids by ``lastUpdated``). A
  local, unsent version (``"local"``) always yields to the server's.
- A server resource carrying a device's client identifier replaces the local copy made under
  that identifier, so a consultation is never shown twice once the server has it.
- The patient search index changes in the same transaction as the Patient it describes.
- Functions that write (``apply_resources``, ``store_local``, ``delete_resource``,
  ``purge_patient``) run inside the caller's open transaction and never commit or roll back: the
  session wraps each act and its audit entry in one ``BEGIN IMMEDIATE … COMMIT``. Calling them
  outside a transaction is a bug and raises ``TransactionRequired`` before anything is written.
- ``purge_patient`` leaves no row of the patient in resources, the search index (including the
  FTS5 shadow tables), the outbox or the conflicts table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from client.core.search import index_patient, site_of, unindex_patient
from sync.protocol.fhir.vocabulary import (
    CLIENT_ID_SYSTEM,
    CLINICAL_TYPES,
    ID_RE,
    PATIENT_REFERENCE_PREFIX,
    STORED_TYPES,
)

LOCAL_VERSION = "local"
MAX_RESOURCE_BYTES = 2 * 1024 * 1024  # a note with a long letter fits; a hostile blob does not


class TransactionRequired(RuntimeError):
    """A write was attempted outside the caller's transaction (a bug in the caller)."""

    reason = "transaction_required"


@dataclass(frozen=True)
class Rejected:
    """A resource that failed the structural check; ``reason`` is a stable code; ``index`` is
    its position in the input of ``apply_resources`` (so a caller can quarantine its bytes)."""

    resource_type: str
    resource_id: str
    reason: str
    index: int = -1


@dataclass(frozen=True)
class ApplyStats:
    """``applied``: stored (new or newer); ``ignored``: older or equal version already held;
    ``replaced_local``: device-made copies superseded by the server's; ``rejected``: not stored.
    """

    applied: int = 0
    ignored: int = 0
    replaced_local: int = 0
    rejected: tuple[Rejected, ...] = ()


@dataclass(frozen=True)
class PurgeCandidate:
    """A patient who should leave the device, why, and whether unsent work holds it back."""

    patient_id: str
    reason: str  # "out_of_scope" | "retention_expired" | "orphaned"
    has_unsent_work: bool


def require_transaction(conn: sqlite3.Connection) -> None:
    if not conn.in_transaction:
        raise TransactionRequired("records writes run inside the caller's transaction")


def is_fhir_id(value: object) -> bool:
    """A FHIR id (also used for version ids): 1-64 of ``A-Z a-z 0-9 - .``."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def utc_iso(moment: datetime) -> str:
    """The one stored timestamp form: UTC, microseconds, ``+00:00`` (sorts as text)."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_fhir_datetime(value: Any) -> datetime | None:
    """A FHIR date/dateTime/instant as aware UTC; partial dates start at midnight UTC."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    try:
        if len(text) == 4:
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if len(text) == 7:
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        if len(text) > 10:  # a time without an offset is not a valid FHIR dateTime
            return None
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def reference_id(holder: Any, prefix: str) -> str | None:
    """The id in ``{"reference": "<prefix><id>"}``, or None."""
    if isinstance(holder, dict):
        ref = holder.get("reference")
        if isinstance(ref, str) and ref.startswith(prefix):
            rid = ref[len(prefix) :]
            return rid if ID_RE.fullmatch(rid) else None
    return None


def patient_of(resource: Mapping[str, Any]) -> str | None:
    """The Patient id a resource belongs to (itself for a Patient)."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    key = "patient" if resource.get("resourceType") == "AllergyIntolerance" else "subject"
    return reference_id(resource.get(key), PATIENT_REFERENCE_PREFIX)


def client_id_of(resource: Mapping[str, Any]) -> str | None:
    identifiers = resource.get("identifier")
    for ident in identifiers if isinstance(identifiers, list) else []:
        if isinstance(ident, dict) and ident.get("system") == CLIENT_ID_SYSTEM:
            value = ident.get("value")
            if isinstance(value, str) and value:
                return value
    return None


def coding_code(concept: Any) -> str | None:
    """The first ``code`` of a CodeableConcept."""
    if isinstance(concept, dict):
        codings = concept.get("coding")
        for coding in codings if isinstance(codings, list) else []:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                return str(coding["code"])
    return None


def is_active(resource: Mapping[str, Any]) -> bool:
    """Clinically current: an active Flag, problem, medication or allergy."""
    rtype = resource.get("resourceType")
    if rtype in ("Flag", "MedicationStatement"):
        return resource.get("status") == "active"
    if rtype == "Condition":
        return coding_code(resource.get("clinicalStatus")) in ("active", "recurrence", "relapse")
    if rtype == "AllergyIntolerance":
        clinical = coding_code(resource.get("clinicalStatus"))
        verification = coding_code(resource.get("verificationStatus"))
        return clinical not in ("inactive", "resolved") and verification not in (
            "entered-in-error",
            "refuted",
        )
    return False


def _site(resource: Mapping[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        return site_of(resource.get("managingOrganization"))
    if resource.get("resourceType") == "Encounter":
        return site_of(resource.get("serviceProvider"))
    return None


def _version_num(version_id: str) -> int | None:
    return int(version_id) if version_id.isascii() and version_id.isdigit() else None


@dataclass(frozen=True)
class _Checked:
    rtype: str
    rid: str
    version_id: str
    last_updated: str
    patient_id: str


def _check(resource: Any) -> _Checked | Rejected:
    if not isinstance(resource, dict):
        return Rejected("?", "?", "not_an_object")
    rtype, rid = resource.get("resourceType"), resource.get("id")
    shown_type = rtype if isinstance(rtype, str) and rtype in STORED_TYPES else "?"
    shown_id = rid if isinstance(rid, str) and ID_RE.fullmatch(rid) else "?"
    if shown_type == "?":
        return Rejected(shown_type, shown_id, "unknown_type")
    if shown_id == "?":
        return Rejected(shown_type, shown_id, "bad_id")
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    updated = parse_fhir_datetime(meta.get("lastUpdated")) if isinstance(meta, dict) else None
    if not isinstance(version, str) or not ID_RE.fullmatch(version) or version == LOCAL_VERSION:
        return Rejected(shown_type, shown_id, "bad_version")
    if updated is None:
        return Rejected(shown_type, shown_id, "bad_last_updated")
    patient_id = patient_of(resource)
    if patient_id is None:
        return Rejected(shown_type, shown_id, "no_patient")
    return _Checked(shown_type, shown_id, version, utc_iso(updated), patient_id)


# The version rule (module docstring) in SQL, so a whole batch is one executemany: the stored
# row is replaced only by a newer version; a local ("local") row always yields.
_UPSERT = (
    "INSERT INTO resources (type, id, version_id, version_num, last_updated, patient_id,"
    " site, client_id, active, json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (type, id) DO UPDATE SET version_id = excluded.version_id,"
    " version_num = excluded.version_num, last_updated = excluded.last_updated,"
    " patient_id = excluded.patient_id, site = excluded.site, client_id = excluded.client_id,"
    " active = excluded.active, json = excluded.json"
    " WHERE resources.version_id = 'local' OR CASE"
    " WHEN excluded.version_num IS NOT NULL AND resources.version_num IS NOT NULL"
    " THEN excluded.version_num > resources.version_num"
    " ELSE excluded.version_id != resources.version_id"
    " AND excluded.last_updated > resources.last_updated END"
)
_BATCH = 1000

_Row = tuple[str, str, str, int | None, str, str, str | None, str | None, int, bytes]


def _row(chk: _Checked, resource: Mapping[str, Any], body: bytes) -> _Row:
    return (
        chk.rtype,
        chk.rid,
        chk.version_id,
        _version_num(chk.version_id),
        chk.last_updated,
        chk.patient_id,
        _site(resource),
        client_id_of(resource),
        int(is_active(resource)),
        body,
    )


def apply_resources(
    conn: sqlite3.Connection,
    resources: Iterable[Mapping[str, Any]],
    *,
    received_at: datetime | None = None,
) -> ApplyStats:
    """Upsert server resources, deduped by version (caller's transaction; never commits).

    ``received_at`` (default: now) is the ``refreshed_at`` of each Patient indexed here; the
    rest of the caseload is marked fresh once per complete sync (``refresh_caseload``), not
    once per page, so an unchanged patient is no less current than a changed one.
    Clinical resources go in batches (one executemany); Patients and resources carrying a
    client identifier go one by one, in order, because each needs follow-up work.
    """
    require_transaction(conn)
    refreshed = utc_iso(received_at or datetime.now(UTC))
    applied = ignored = replaced = 0
    rejected: list[Rejected] = []
    batch: list[_Row] = []

    def flush() -> None:
        nonlocal applied, ignored
        if batch:
            before = conn.total_changes
            conn.executemany(_UPSERT, batch)
            done = conn.total_changes - before
            applied, ignored = applied + done, ignored + len(batch) - done
            batch.clear()

    for index, resource in enumerate(resources):
        chk = _check(resource)
        if isinstance(chk, Rejected):
            rejected.append(replace(chk, index=index))
            continue
        body = orjson.dumps(resource)
        if len(body) > MAX_RESOURCE_BYTES:
            rejected.append(Rejected(chk.rtype, chk.rid, "too_large", index))
            continue
        row = _row(chk, resource, body)
        cid = row[7]
        if chk.rtype != "Patient" and cid is None:
            batch.append(row)
            if len(batch) >= _BATCH:
                flush()
            continue
        flush()
        if cid is not None:
            replaced += conn.execute(
                "DELETE FROM resources WHERE client_id = ? AND type = ? AND id != ?"
                " AND version_id = ?",
                (cid, chk.rtype, chk.rid, LOCAL_VERSION),
            ).rowcount
        before = conn.total_changes
        conn.execute(_UPSERT, row)
        if conn.total_changes == before:
            ignored += 1
            continue
        applied += 1
        if chk.rtype == "Patient":
            index_patient(conn, chk.rid, resource, refreshed)
    flush()
    return ApplyStats(applied, ignored, replaced, tuple(rejected))


def touch_patients(conn: sqlite3.Connection, patient_ids: Collection[str], refreshed: str) -> None:
    """Mark patients as refreshed at ``refreshed`` (UTC ISO); never moves the mark back."""
    conn.executemany(
        "UPDATE patient_index SET refreshed_at = ? WHERE patient_id = ? AND refreshed_at < ?",
        [(refreshed, pid, refreshed) for pid in patient_ids],
    )


def refresh_caseload(conn: sqlite3.Connection, site_scope: Collection[str], now: datetime) -> int:
    """Mark every patient of ``site_scope`` as refreshed at ``now``; returns how many changed.

    Call it after a sync that pulled every stream to its end through ``_history``: the device
    then holds the server's current view of its whole caseload, changed or not (a patient who
    left would have arrived as a transfer or a deletion; a search cannot show that, so a sync
    that fell back to one must not call this). Never moves a mark back. One statement.
    """
    require_transaction(conn)
    stamp = utc_iso(now)
    return int(
        conn.execute(
            "UPDATE patient_index SET refreshed_at = ? WHERE refreshed_at < ?"
            " AND site IN (SELECT value FROM json_each(?))",
            (stamp, stamp, orjson.dumps(sorted(site_scope)).decode()),
        ).rowcount
    )


def mark_caseload_complete(
    conn: sqlite3.Connection, site_scope: Collection[str], now: datetime
) -> int:
    """A sync completed (every stream pulled to its end): the laptop holds the whole record of
    every patient now in ``site_scope`` as of ``now`` (``client.core.completeness``). Patients
    outside the scope keep the mark from when they were inside. Never moves a mark back."""
    require_transaction(conn)
    stamp = utc_iso(now)
    return int(
        conn.execute(
            "UPDATE patient_index SET complete_at = ?"
            " WHERE (complete_at IS NULL OR complete_at < ?)"
            " AND site IN (SELECT value FROM json_each(?))",
            (stamp, stamp, orjson.dumps(sorted(site_scope)).decode()),
        ).rowcount
    )


def store_local(conn: sqlite3.Connection, resource: Mapping[str, Any]) -> None:
    """Store a resource made on this device (``meta.versionId == "local"``; caller's txn)."""
    require_transaction(conn)
    meta = resource.get("meta")
    updated = parse_fhir_datetime(meta.get("lastUpdated")) if isinstance(meta, dict) else None
    patient_id = patient_of(resource)
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if (
        not isinstance(meta, dict)
        or meta.get("versionId") != LOCAL_VERSION
        or updated is None
        or patient_id is None
        or rtype not in CLINICAL_TYPES
        or not isinstance(rid, str)
        or not ID_RE.fullmatch(rid)
    ):
        raise ValueError("a local resource needs a clinical type, an id, a patient, local meta")
    chk = _Checked(str(rtype), rid, LOCAL_VERSION, utc_iso(updated), patient_id)
    conn.execute(
        "INSERT OR REPLACE INTO resources (type, id, version_id, version_num, last_updated,"
        " patient_id, site, client_id, active, json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        _row(chk, resource, orjson.dumps(resource)),
    )


def get(conn: sqlite3.Connection, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    """The stored resource, or None. Read-only."""
    row = conn.execute(
        "SELECT json FROM resources WHERE type = ? AND id = ?", (resource_type, resource_id)
    ).fetchone()
    if row is None:
        return None
    loaded: dict[str, Any] = orjson.loads(row[0])
    return loaded


def patient_resources(conn: sqlite3.Connection, patient_id: str) -> list[dict[str, Any]]:
    """Every stored resource of one patient (one indexed read). Read-only."""
    rows = conn.execute("SELECT json FROM resources WHERE patient_id = ?", (patient_id,))
    return [orjson.loads(body) for (body,) in rows]


def delete_resource(conn: sqlite3.Connection, resource_type: str, resource_id: str) -> bool:
    """Remove one resource (and, for a Patient, its search row). Caller's transaction."""
    require_transaction(conn)
    deleted = conn.execute(
        "DELETE FROM resources WHERE type = ? AND id = ?", (resource_type, resource_id)
    ).rowcount
    if resource_type == "Patient":
        unindex_patient(conn, resource_id)
    return deleted > 0


def purge_patient(conn: sqlite3.Connection, patient_id: str) -> int:
    """Remove a patient and everything of theirs; returns the number of resources removed.

    Runs in the caller's transaction. The caller audits the purge and decides what to do about
    unsent work first (``outbox.has_unsent_work``): this removes outbox rows too.
    """
    require_transaction(conn)
    removed = conn.execute("DELETE FROM resources WHERE patient_id = ?", (patient_id,)).rowcount
    unindex_patient(conn, patient_id)
    conn.execute("DELETE FROM conflicts WHERE patient_id = ?", (patient_id,))
    conn.execute("DELETE FROM outbox WHERE patient_id = ?", (patient_id,))
    conn.execute("DELETE FROM drafts WHERE patient_id = ?", (patient_id,))
    return int(removed)


def patients_past_retention(
    conn: sqlite3.Connection,
    now: datetime,
    retention_days: int,
    site_scope: Collection[str] | None,
) -> list[PurgeCandidate]:
    """Patients to purge: out of scope, not refreshed within ``retention_days``, or orphaned.

    ``site_scope=None`` means no scope is known: every patient is out of scope (fail closed).
    Read-only; the caller purges, after sending their unsent work. A consultation draft
    (``client.core.drafts``) counts as unsent work: the clinician saves or discards it first.
    """
    cutoff = utc_iso(now - timedelta(days=retention_days))
    scope = orjson.dumps(sorted(site_scope or ())).decode()
    rows = conn.execute(
        "SELECT p.patient_id, CASE WHEN p.site IS NULL OR p.site NOT IN"
        " (SELECT value FROM json_each(:scope)) THEN 'out_of_scope' ELSE 'retention_expired' END,"
        " EXISTS (SELECT 1 FROM outbox o WHERE o.patient_id = p.patient_id"
        " AND o.state IN ('pending', 'conflict'))"
        " OR EXISTS (SELECT 1 FROM drafts d WHERE d.patient_id = p.patient_id)"
        " FROM patient_index p WHERE p.site IS NULL"
        " OR p.site NOT IN (SELECT value FROM json_each(:scope)) OR p.refreshed_at < :cutoff"
        " UNION ALL"
        " SELECT DISTINCT r.patient_id, 'orphaned', EXISTS (SELECT 1 FROM outbox o"
        " WHERE o.patient_id = r.patient_id AND o.state IN ('pending', 'conflict'))"
        " OR EXISTS (SELECT 1 FROM drafts d WHERE d.patient_id = r.patient_id)"
        " FROM resources r WHERE r.patient_id IS NOT NULL AND NOT EXISTS"
        " (SELECT 1 FROM patient_index p2 WHERE p2.patient_id = r.patient_id)"
        " ORDER BY 1",
        {"scope": scope, "cutoff": cutoff},
    ).fetchall()
    return [PurgeCandidate(pid, reason, bool(unsent_work)) for pid, reason, unsent_work in rows]
