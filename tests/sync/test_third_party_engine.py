"""The engine suites that run against our gateway (tests/sync/test_sync_convergence.py, the
update path; test_sync_crash.py for CR-1/CR-2), here against a real third-party FHIR R4 server:
Medplum's FHIR router (in-memory repository) at ``/fhir/R4`` over mutual TLS, which has no
type-level ``_history``, stamps UUID versions and filters nothing by site.

- an incremental pull brings exactly the server's new and changed records;
- an edit goes up as a versioned update (If-Match) and the laptop holds the server's version;
- an edit concurrent with another client's is a 412, kept as a conflict for the clinician, and
  "keep mine" then goes on top; "keep theirs" sends nothing;
- an edit of a record the server deleted is a conflict, never a silent re-creation;
- an update whose reply was lost (the laptop died after the server committed) is not a conflict
  with itself at the next sync (CR-2 for updates).

One server for the module (its data only grows: each test has its own patient at its own site).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.core import conflicts, consultation, outbox, records
from tests.support.crashing_replica import Crash, CrashingReplica
from tests.support.gateway import observation, patient
from tests.support.medplum_server import MedplumServer, running_medplum
from tests.support.sync import (
    DeviceVault,
    device_view,
    new_observation,
    now_utc,
    sync_once,
    transport_config,
)

_counter = itertools.count(1)


@pytest.fixture(scope="module")
def medplum(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedplumServer]:
    with running_medplum(tmp_path_factory.mktemp("medplum")) as server:
        yield server


class Device:
    """One laptop of its own site, with one patient and one Observation on the server."""

    def __init__(self, server: MedplumServer, tmp: Path) -> None:
        n = next(_counter)
        self.server_, self.site = server, f"hmp-mp{n}"
        creds = server.pki.device(f"dev-mp{n}", self.site)
        self.config = transport_config(server.origin, server.pki.server_pin, creds)
        self.pid, self.oid = f"mp{n}-p", f"mp{n}-o"
        server.seed([patient(self.pid, self.site), observation(self.oid, self.pid, 70.0)])
        self.device = DeviceVault.create(tmp / f"mp{n}.db", f"dev-mp{n}")
        self.vault = self.device.open()
        assert self.sync().ok

    def sync(self, replica: Any = None) -> Any:
        return sync_once(
            self.vault, self.config, site=self.site, fhir_base=self.server_.base, replica=replica
        )

    def edit(self, text: str) -> int:
        with self.vault.transaction() as conn:
            resource = records.get(conn, "Observation", self.oid)
            assert resource is not None
            return consultation.queue_update(
                conn, resource | {"note": [{"text": text}]}, now=now_utc()
            )

    def server(self) -> dict[str, Any]:
        current = self.server_.read("Observation", self.oid)
        assert current is not None
        return current

    def server_edit(self, text: str) -> None:
        body = self.server()
        body.pop("meta")
        self.server_.put(body | {"note": [{"text": text}]})

    def stored(self) -> dict[str, Any] | None:
        return records.get(self.vault.connection, "Observation", self.oid)

    def state(self, seq: int) -> str:
        row = self.vault.connection.execute("SELECT state FROM outbox WHERE seq = ?", (seq,))
        return str(row.fetchone()[0])

    def converged(self) -> bool:
        return device_view(self.vault.connection) == self.server_.site_view(self.site)


@pytest.fixture
def dev(medplum: MedplumServer, tmp_path: Path) -> Iterator[Device]:
    device = Device(medplum, tmp_path)
    try:
        yield device
    finally:
        device.vault.close()


def test_an_incremental_pull_brings_exactly_the_new_and_changed_records(dev: Device) -> None:
    assert dev.converged()
    dev.server_edit("seen by another clinician")
    dev.server_.put(new_observation(dev.pid, 88))
    result = dev.sync()
    assert result.ok and result.pulled == 2, result
    assert dev.converged()
    assert dev.stored()["note"] == [{"text": "seen by another clinician"}]  # type: ignore[index]
    assert dev.sync().pulled == 0  # the overlap is read again, nothing applied twice


def test_an_edit_goes_up_as_a_versioned_update(dev: Device) -> None:
    before = dev.server()["meta"]["versionId"]
    seq = dev.edit("device edit")
    result = dev.sync()
    assert result.ok and result.pushed == 1 and result.conflicts == 0, result
    assert dev.state(seq) == "sent"
    on_server = dev.server()
    assert on_server["note"] == [{"text": "device edit"}]
    assert on_server["meta"]["versionId"] != before
    assert dev.stored()["meta"]["versionId"] == on_server["meta"]["versionId"]  # type: ignore[index]
    assert dev.converged()


def test_a_concurrent_edit_is_a_412_conflict_and_keep_mine_goes_on_top(dev: Device) -> None:
    seq = dev.edit("mine")
    dev.server_edit("theirs")
    result = dev.sync()
    assert result.ok and result.conflicts == 1 and result.pushed == 0, result
    assert dev.server()["note"] == [{"text": "theirs"}]  # never silently overwritten
    assert dev.state(seq) == "conflict"
    (conflict,) = conflicts.list_conflicts(dev.vault.connection)
    assert conflict.local_body["note"] == [{"text": "mine"}]
    assert conflict.server_body is not None and conflict.server_body["note"] == [{"text": "theirs"}]
    with dev.vault.transaction() as conn:
        new_seq = conflicts.resolve_conflict(conn, conflict.id, "mine", now=now_utc())
    assert new_seq is not None
    assert dev.sync().pushed == 1
    assert dev.server()["note"] == [{"text": "mine"}]
    assert dev.converged()
    assert outbox.unsent_count(dev.vault.connection) == 0


def test_keep_theirs_closes_the_conflict_and_sends_nothing(dev: Device) -> None:
    dev.edit("mine")
    dev.server_edit("theirs")
    assert dev.sync().conflicts == 1
    (conflict,) = conflicts.list_conflicts(dev.vault.connection)
    with dev.vault.transaction() as conn:
        assert conflicts.resolve_conflict(conn, conflict.id, "theirs", now=now_utc()) is None
    assert dev.sync().pushed == 0
    assert dev.server()["note"] == [{"text": "theirs"}]
    assert dev.stored()["note"] == [{"text": "theirs"}]  # type: ignore[index]
    assert dev.converged()


def test_an_edit_of_a_record_the_server_deleted_is_a_conflict(dev: Device) -> None:
    dev.edit("mine")
    dev.server_.delete("Observation", dev.oid)
    result = dev.sync()
    assert result.ok and result.conflicts == 1 and result.push_errors == 0, result
    assert dev.server_.read("Observation", dev.oid) is None  # not re-created by the update
    (conflict,) = conflicts.list_conflicts(dev.vault.connection)
    assert conflict.server_body is None and conflict.local_body["note"] == [{"text": "mine"}]
    with dev.vault.transaction() as conn:
        conflicts.resolve_conflict(conn, conflict.id, "theirs", now=now_utc())
    assert outbox.unsent_count(dev.vault.connection) == 0


def test_CR2_an_update_whose_reply_was_lost_is_not_a_conflict_with_itself(dev: Device) -> None:
    """The server takes the edit, the laptop dies before it records the reply: the next sync
    re-sends the update with the old If-Match, gets a 412, and sees the server already holds
    exactly this edit — settled as sent, no conflict for the clinician, no third version."""
    seq = dev.edit("mine")
    with contextlib.suppress(Crash):  # the server commits; the device dies before mark_sent
        dev.sync(replica=CrashingReplica(dev.vault, dev.site, crash_at=1))
    dev.vault = dev.device.open()
    committed = dev.server()
    assert dev.state(seq) == "pending" and committed["note"] == [{"text": "mine"}]
    result = dev.sync()
    assert result.ok, result
    assert conflicts.list_conflicts(dev.vault.connection) == []
    assert dev.state(seq) == "sent"
    assert dev.server()["meta"]["versionId"] == committed["meta"]["versionId"]
    assert dev.converged()
