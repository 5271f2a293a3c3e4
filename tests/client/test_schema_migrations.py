"""Schema migrations on a real SQLCipher vault: a laptop upgraded in the field keeps its data."""

from __future__ import annotations

import secrets
from pathlib import Path

from client.core.records import apply_resources
from client.core.schema import MIGRATIONS
from client.core.search import search_patients
from client.core.vault import Vault
from tests.support.fhir import patient


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
    vault.connection.execute("ALTER TABLE patient_index DROP COLUMN gender")
    vault.connection.execute("DROP TABLE drafts")  # and what later schemas added
    vault.connection.execute("PRAGMA user_version = 3")
    vault.close()

    upgraded = Vault.open(path, key, MIGRATIONS)
    try:
        assert upgraded.user_version == len(MIGRATIONS)
        hits = search_patients(upgraded.connection, "ashdown", site_scope=["hmp-brixton"])
        assert {h.id: h.gender for h in hits} == {"p-ann": "female", "p-kit": None}
    finally:
        upgraded.close()
