"""Schema migrations on a real SQLCipher vault: a laptop upgraded in the field keeps its data."""

from __future__ import annotations

import secrets
from pathlib import Path

import orjson

from client.core.completeness import patient_completeness
from client.core.records import apply_resources
from client.core.schema import MIGRATIONS
from client.core.search import search_patients
from client.core.vault import Vault
from tests.support.fhir import patient

# What each migration added, undone newest first, to turn a fresh vault into an older one.
_UNDO = {
    6: (
        "DROP INDEX quarantine_by_patient",
        "ALTER TABLE quarantine DROP COLUMN patient_id",
        "ALTER TABLE patient_index DROP COLUMN complete_at",
    ),
    5: ("DROP TABLE drafts",),
    4: ("ALTER TABLE patient_index DROP COLUMN gender",),
}


def _back_to(vault: Vault, version: int) -> None:
    for step in sorted(_UNDO, reverse=True):
        if step > version:
            for statement in _UNDO[step]:
                vault.connection.execute(statement)
    vault.connection.execute(f"PRAGMA user_version = {version}")


def test_every_migration_has_an_undo_here() -> None:
    assert sorted(_UNDO) == list(range(4, len(MIGRATIONS) + 1))


def test_migration_6_names_the_patient_of_items_quarantined_before_it(tmp_path: Path) -> None:
    """Held-back items from before the upgrade still mark their patient's chart incomplete
    (UI-5); no patient is claimed complete until a sync completes after the upgrade."""
    key = secrets.token_bytes(32)
    path = tmp_path / "vault.db"
    vault = Vault.open(path, key, MIGRATIONS)
    with vault.transaction() as conn:
        apply_resources(conn, [patient("p-ann", "Ashdown", ["Ann"], gender="female")])
    _back_to(vault, 5)
    flag = orjson.dumps(
        {
            "resource": {
                "resourceType": "Flag",
                "id": "f1",
                "subject": {"reference": "Patient/p-ann"},
            }
        }
    )
    for raw in (flag, b"not json {"):
        vault.connection.execute(
            "INSERT INTO quarantine (stream, resource_type, resource_id, reason, path, raw,"
            " raw_sha256, raw_bytes, received_at) VALUES ('Flag', 'Flag', 'f1', 'bad', '', ?,"
            " hex(?), 1, '2026-12-01T00:00:00+00:00')",
            (raw, raw),
        )
    vault.close()

    upgraded = Vault.open(path, key, MIGRATIONS)
    try:
        conn = upgraded.connection
        rows = conn.execute("SELECT patient_id FROM quarantine ORDER BY id").fetchall()
        assert [r[0] for r in rows] == ["p-ann", None]
        done = patient_completeness(conn, "p-ann", ["hmp-brixton"])
        assert done.last_complete is None and not done.alerts.complete
        assert done.alerts.held_back == 1 and done.allergies.held_back == 0  # a Flag only
    finally:
        upgraded.close()


def test_migration_4_gives_patients_indexed_before_it_their_gender(tmp_path: Path) -> None:
    """Patients indexed under schema 3 (no gender column) show their gender after upgrading,
    taken from the stored record; a record that does not say stays None (not known)."""
    key = secrets.token_bytes(32)
    path = tmp_path / "vault.db"
    vault = Vault.open(path, key, MIGRATIONS)
    silent = patient("p-kit", "Ashdown", ["Kit"])
    del silent["gender"]
    with vault.transaction() as conn:
        apply_resources(conn, [patient("p-ann", "Ashdown", ["Ann"], gender="female"), silent])
    # Turn the file back into what schema 3 wrote: no gender column, user_version 3.
    _back_to(vault, 3)
    vault.close()

    upgraded = Vault.open(path, key, MIGRATIONS)
    try:
        assert upgraded.user_version == len(MIGRATIONS)
        hits = search_patients(upgraded.connection, "ashdown", site_scope=["hmp-brixton"])
        assert {h.id: h.gender for h in hits} == {"p-ann": "female", "p-kit": None}
    finally:
        upgraded.close()
