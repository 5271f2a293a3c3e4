"""Sync convergence: a Hypothesis state machine over the real gateway (real TLS), a real
SQLCipher vault and the real engine.

Random interleavings of server edits (new resources, new versions, deletions, a patient
transferred out), device edits (new consultations, edits through ``queue_update``, conflict
resolutions), crashes (the vault's connection dropped in the middle of a replica transaction —
mid-pull, or after the server committed a push but before the device heard) and syncs.

Invariants:
- After every completed sync, every device edit that the server changed behind its back
  (server version != the edit's base, or the resource gone) is a conflict record, and every
  other edit reached the server unchanged: never a silent overwrite, never a lost edit.
- At the end, after syncs with no work left: the device's store equals the server's view of
  the site (same ids and versionIds for every type); nothing is pending except work for
  patients who left the site (visible push errors); every conflict is recorded; every device
  create exists exactly once on the server; the vault and its audit chain are intact.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from client.core import conflicts, consultation, outbox, records
from client.core.consultation import ConsultationError
from client.core.replica import VaultReplica
from tests.support.crashing_replica import Crash, CrashingReplica
from tests.support.gateway import Gateway, observation, patient, running_gateway
from tests.support.sync import (
    DeviceVault,
    device_client_ids,
    device_view,
    new_observation,
    now_utc,
    server_client_ids,
    server_resources,
    server_view,
    sync_once,
    transport_config,
    vault_health,
    write_consultations,
)

PAGE_SIZE = 4
_counter = itertools.count()


class SyncMachine(RuleBasedStateMachine):
    gw: Gateway
    tmp: Path
    seen: ClassVar[Counter[str]] = Counter()  # outcomes over all examples: the run's reach

    def __init__(self) -> None:
        super().__init__()
        n = next(_counter)
        self.site, self.away = f"hmp-ex{n}", f"hmp-away{n}"
        device_id = f"dev-ex{n}"
        creds = self.gw.pki.device(device_id, self.site)
        self.gw.store.set_device(device_id, self.site, "active")
        self.config = transport_config(self.gw.url, self.gw.pki.server_pin, creds)
        self.device = DeviceVault.create(self.tmp / f"ex{n}.db", device_id)
        self.vault = self.device.open()
        self.edits = 0
        seed: list[dict[str, Any]] = []
        for p in range(3):
            pid = f"ex{n}-p{p}"
            seed.append(patient(pid, self.site))
            seed.append(observation(f"ex{n}-o{p}", pid, 60.0 + p))
        self.gw.load(*seed)
        self.resolved_mine: set[int] = set()

    # -- helpers -------------------------------------------------------------------------------

    @property
    def conn(self) -> Any:
        return self.vault.connection

    # Every list a rule draws from is in a deterministic order (server change sequence, local
    # rowid), never by id: server and client ids are random UUIDs, and Hypothesis replays a
    # test case expecting the same choices.

    def _server_clinical(self) -> list[tuple[str, str]]:
        return [
            (r.rtype, r.rid) for r in server_resources(self.gw.store, self.site, ("Observation",))
        ]

    def _server_patients(self) -> list[str]:
        return [r.rid for r in server_resources(self.gw.store, self.site, ("Patient",))]

    def _device_patients(self) -> list[str]:
        rows = self.conn.execute(
            "SELECT patient_id FROM patient_index WHERE site = ? ORDER BY doc",
            (self.site,),
        ).fetchall()
        return [r[0] for r in rows]

    def _device_editable(self) -> list[tuple[str, str]]:
        rows = self.conn.execute(
            "SELECT r.type, r.id FROM resources r JOIN patient_index p"
            " ON p.patient_id = r.patient_id WHERE r.type = 'Observation' AND p.site = ?"
            " ORDER BY r.rowid",
            (self.site,),
        ).fetchall()
        return [(t, i) for t, i in rows]

    def _expectations(self) -> dict[int, str]:
        """For each pending update: ``conflict`` if the server moved on, else ``sent``."""
        expected: dict[int, str] = {}
        for seq, rtype, rid, base, body in self.conn.execute(
            "SELECT seq, resource_type, local_id, base_version, body FROM outbox"
            " WHERE state = 'pending' AND operation = 'update'"
        ).fetchall():
            current = self.gw.store.read(rtype, rid)
            if current is None or current.deleted or current.site != self.site:
                expected[seq] = "conflict"
                continue
            theirs = orjson.loads(current.body)
            theirs.pop("meta", None)
            if theirs == orjson.loads(body):
                expected[seq] = "sent"  # an earlier attempt landed; its reply was lost
            else:
                expected[seq] = "sent" if str(current.version_id) == base else "conflict"
        return expected

    def _check_outcomes(self, expected: dict[int, str]) -> None:
        for seq, outcome in expected.items():
            state, rtype, rid, body = self.conn.execute(
                "SELECT state, resource_type, local_id, body FROM outbox WHERE seq = ?", (seq,)
            ).fetchone()
            assert state == outcome, f"update {seq} ended {state}, expected {outcome}"
            self.seen[f"update_{outcome}"] += 1
            if outcome == "conflict":
                rows = self.conn.execute(
                    "SELECT local_body FROM conflicts WHERE outbox_seq = ? AND resolved_at IS NULL",
                    (seq,),
                ).fetchall()
                assert len(rows) == 1 and orjson.loads(rows[0][0]) == orjson.loads(body)
            else:
                current = self.gw.store.read(rtype, rid)
                assert current is not None
                theirs = orjson.loads(current.body)
                theirs.pop("meta", None)
                assert theirs == orjson.loads(body), "the server lost a device edit"

    # -- server edits --------------------------------------------------------------------------

    @rule(data=st.data())
    def server_new(self, data: st.DataObject) -> None:
        pids = self._server_patients()
        if pids:
            pid = data.draw(st.sampled_from(pids))
            resource = new_observation(pid, data.draw(st.integers(30, 200)))
            self.edits += 1
            self.gw.load(resource | {"id": f"{self.site}-srv{self.edits}"})

    @rule(data=st.data())
    def server_change(self, data: st.DataObject) -> None:
        keys = self._server_clinical()
        if keys:
            rtype, rid = data.draw(st.sampled_from(keys))
            self._server_change(rtype, rid, data.draw(st.integers(0, 10**6)))

    def _server_change(self, rtype: str, rid: str, mark: int) -> None:
        current = self.gw.store.read(rtype, rid)
        assert current is not None
        body = orjson.loads(current.body)
        body.pop("meta", None)
        body["note"] = [{"text": f"server edit {mark}"}]
        self.gw.load(body)

    @rule(data=st.data())
    def server_delete(self, data: st.DataObject) -> None:
        keys = self._server_clinical()
        if keys:
            rtype, rid = data.draw(st.sampled_from(keys))
            with self.gw.store.write() as tx:
                tx.delete(rtype, rid)

    @rule(data=st.data())
    def server_transfer_out(self, data: st.DataObject) -> None:
        pids = self._server_patients()
        if len(pids) > 1:
            pid = data.draw(st.sampled_from(pids))
            current = self.gw.store.read("Patient", pid)
            assert current is not None
            body = orjson.loads(current.body)
            body.pop("meta", None)
            body["managingOrganization"] = {"reference": f"Organization/{self.away}"}
            self.gw.load(body)

    # -- device edits --------------------------------------------------------------------------

    @rule(data=st.data())
    def device_consultation(self, data: st.DataObject) -> None:
        pids = self._device_patients()
        if pids:
            pid = data.draw(st.sampled_from(pids))
            write_consultations(self.vault, [pid], 1, f"sm{self.edits}", site=self.site)
            self.edits += 1

    @rule(data=st.data())
    def device_edit(self, data: st.DataObject) -> None:
        keys = self._device_editable()
        if not keys:
            return
        self._edit(*data.draw(st.sampled_from(keys)))

    def _edit(self, rtype: str, rid: str) -> None:
        with self.vault.transaction() as conn:
            resource = records.get(conn, rtype, rid)
            assert resource is not None
            resource["note"] = [{"text": f"device edit {self.edits}"}]
            self.edits += 1
            try:
                consultation.queue_update(conn, resource, now=now_utc())
            except ConsultationError as refused:
                assert refused.reason == "conflict_open"

    @rule(data=st.data())
    def concurrent_edit(self, data: st.DataObject) -> None:
        """The device and another clinician edit the same record before the next sync."""
        keys = [k for k in self._device_editable() if k in set(self._server_clinical())]
        if keys:
            self._edit(*data.draw(st.sampled_from(keys)))
            rtype, rid = data.draw(st.sampled_from(keys))
            self._server_change(rtype, rid, data.draw(st.integers(0, 10**6)))

    @precondition(lambda self: bool(conflicts.list_conflicts(self.conn)))
    @rule(data=st.data(), mine=st.booleans())
    def resolve(self, data: st.DataObject, mine: bool) -> None:
        conflict = data.draw(st.sampled_from(conflicts.list_conflicts(self.conn)))
        with self.vault.transaction() as conn:
            try:
                seq = conflicts.resolve_conflict(
                    conn, conflict.id, "mine" if mine else "theirs", now=now_utc()
                )
            except ConsultationError as refused:
                assert refused.reason == "conflict_cannot_keep_mine"
                seq = conflicts.resolve_conflict(conn, conflict.id, "theirs", now=now_utc())
        if seq is not None:
            self.resolved_mine.add(seq)
        self.seen[f"resolved_{'mine' if seq is not None else 'theirs'}"] += 1

    # -- syncs and crashes ---------------------------------------------------------------------

    @rule()
    def sync(self) -> None:
        expected = self._expectations()
        result = sync_once(self.vault, self.config, page_size=PAGE_SIZE, site=self.site)
        assert result.ok, result.error
        self._check_outcomes(expected)

    @rule(crash_at=st.integers(1, 6))
    def crash_mid_sync(self, crash_at: int) -> None:
        replica = CrashingReplica(self.vault, self.site, crash_at)
        with contextlib.suppress(Crash):
            sync_once(self.vault, self.config, page_size=PAGE_SIZE, replica=replica)
            self.seen["crash_missed"] += 1
        self.seen["crash"] += 1
        if not self.vault.is_open:
            self.vault = self.device.open()  # the restart
        ok, why = vault_health(self.conn, self.device)
        assert ok, why

    # -- the end -------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            self._final_check()
        finally:
            self.vault.close()

    def _final_check(self) -> None:
        for _ in range(3):
            expected = self._expectations()
            result = sync_once(self.vault, self.config, page_size=PAGE_SIZE, site=self.site)
            assert result.ok, result.error
            self._check_outcomes(expected)
            if result.pushed == 0 and result.conflicts == 0:
                break
        conn = self.conn
        held = {
            r[0]
            for r in conn.execute(
                "SELECT patient_id FROM patient_index WHERE site IS NULL OR site != ?",
                (self.site,),
            )
        }
        mine = {
            k: v
            for k, v in device_view(conn).items()
            if not (k[0] == "Patient" and k[1] in held)
            and conn.execute(
                "SELECT patient_id FROM resources WHERE type = ? AND id = ?", k
            ).fetchone()[0]
            not in held
        }
        assert mine == server_view(self.gw.store, self.site)
        for seq, pid, error in conn.execute(
            "SELECT seq, patient_id, last_error FROM outbox WHERE state = 'pending'"
        ).fetchall():
            assert pid in held and error, f"outbox {seq} still pending ({error})"
        assert conn.execute(
            "SELECT count(*) FROM outbox o WHERE o.state = 'conflict' AND NOT EXISTS"
            " (SELECT 1 FROM conflicts c WHERE c.outbox_seq = o.seq AND c.resolved_at IS NULL)"
        ).fetchone() == (0,)
        on_server = server_client_ids(self.gw.store, (self.site, self.away))
        assert all(n == 1 for n in on_server.values()), "a create reached the server twice"
        for rtype, server_id, cid in conn.execute(
            "SELECT resource_type, server_id, client_id FROM outbox"
            " WHERE state = 'sent' AND operation = 'create'"
        ).fetchall():
            current = self.gw.store.read(rtype, server_id)
            assert current is not None, "a create the device believes sent is not on the server"
            assert on_server[cid] == (0 if current.deleted else 1)
        assert all(n == 1 for n in device_client_ids(conn).values())
        ok, why = vault_health(conn, self.device)
        assert ok, why


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gw")) as gateway:
        yield gateway


def _opening_moves(machine: SyncMachine) -> None:
    """One fixed run through both update paths before the random ones, so the reach check
    below does not depend on the draw: an edit with no concurrent change must be sent, an
    edit the server changed in the meantime must become a conflict (``_check_outcomes``
    asserts each against the gateway's store)."""
    try:
        machine.sync()
        first, second = machine._device_editable()[:2]
        machine._edit(*first)
        machine.sync()  # sent
        machine._edit(*second)
        machine._server_change(*second, 1)
        machine.sync()  # conflict
    finally:
        machine.teardown()


def test_device_and_server_converge_with_every_concurrent_edit_a_conflict(
    gw: Gateway, tmp_path: Path
) -> None:
    SyncMachine.gw = gw
    SyncMachine.tmp = tmp_path
    SyncMachine.seen.clear()
    _opening_moves(SyncMachine())
    run_state_machine_as_test(
        SyncMachine,
        settings=settings(
            max_examples=int(os.environ.get("GATEHOUSE_SYNC_EXAMPLES", "") or 30),
            stateful_step_count=20,
            deadline=None,
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    seen = SyncMachine.seen
    print(f"convergence reach: {dict(seen)}")
    assert seen["update_conflict"] and seen["update_sent"], seen  # both paths were exercised
    assert seen["crash"] > seen["crash_missed"], seen


# -- the update path, example by example -----------------------------------------------------


class Device:
    """One device of its own site on the module's gateway, synced once."""

    def __init__(self, gw: Gateway, tmp: Path) -> None:
        n = next(_counter)
        self.gw, self.site = gw, f"hmp-up{n}"
        creds = gw.pki.device(f"dev-up{n}", self.site)
        gw.store.set_device(f"dev-up{n}", self.site, "active")
        self.config = transport_config(gw.url, gw.pki.server_pin, creds)
        self.pid, self.oid = f"up{n}-p", f"up{n}-o"
        gw.load(patient(self.pid, self.site), observation(self.oid, self.pid, 70.0))
        self.device = DeviceVault.create(tmp / f"up{n}.db", f"dev-up{n}")
        self.vault = self.device.open()
        assert self.sync().ok

    def sync(self, replica: VaultReplica | None = None) -> Any:
        return sync_once(self.vault, self.config, site=self.site, replica=replica)

    def edit(self, text: str) -> int:
        with self.vault.transaction() as conn:
            resource = records.get(conn, "Observation", self.oid)
            assert resource is not None
            return consultation.queue_update(
                conn, resource | {"note": [{"text": text}]}, now=now_utc()
            )

    def server(self) -> dict[str, Any]:
        current = self.gw.store.read("Observation", self.oid)
        assert current is not None
        return dict(orjson.loads(current.body))

    def server_edit(self, text: str) -> None:
        body = self.server()
        body.pop("meta")
        self.gw.load(body | {"note": [{"text": text}]})

    def stored(self) -> dict[str, Any] | None:
        return records.get(self.vault.connection, "Observation", self.oid)

    def state(self, seq: int) -> str:
        row = self.vault.connection.execute("SELECT state FROM outbox WHERE seq = ?", (seq,))
        return str(row.fetchone()[0])


@pytest.fixture
def dev(gw: Gateway, tmp_path: Path) -> Iterator[Device]:
    device = Device(gw, tmp_path)
    try:
        yield device
    finally:
        device.vault.close()


def test_an_edit_goes_up_as_a_versioned_update(dev: Device) -> None:
    seq = dev.edit("device edit")
    assert dev.stored()["meta"]["versionId"] == "local"  # type: ignore[index]
    result = dev.sync()
    assert result.ok and result.pushed == 1 and result.conflicts == 0
    assert dev.state(seq) == "sent"
    assert dev.server()["note"] == [{"text": "device edit"}]
    assert dev.server()["meta"]["versionId"] == "2"
    assert dev.stored()["meta"]["versionId"] == "2"  # type: ignore[index]
    assert device_view(dev.vault.connection) == server_view(dev.gw.store, dev.site)


def test_a_second_edit_before_sending_replaces_the_first(dev: Device) -> None:
    first = dev.edit("one")
    assert dev.edit("two") == first
    assert dev.sync().pushed == 1
    assert dev.server()["note"] == [{"text": "two"}] and dev.server()["meta"]["versionId"] == "2"


def test_a_concurrent_edit_is_a_conflict_and_keep_mine_goes_on_top(dev: Device) -> None:
    seq = dev.edit("mine")
    dev.server_edit("theirs")
    result = dev.sync()
    assert result.ok and result.conflicts == 1 and result.pushed == 0
    assert dev.server()["note"] == [{"text": "theirs"}]  # never silently overwritten
    assert dev.state(seq) == "conflict"
    (conflict,) = conflicts.list_conflicts(dev.vault.connection)
    assert conflict.local_body["note"] == [{"text": "mine"}]
    assert conflict.server_body is not None and conflict.server_body["note"] == [{"text": "theirs"}]
    assert dev.stored()["note"] == [{"text": "theirs"}]  # type: ignore[index]
    with pytest.raises(ConsultationError) as refused:
        dev.edit("again")
    assert refused.value.reason == "conflict_open"
    with dev.vault.transaction() as conn:
        new_seq = conflicts.resolve_conflict(conn, conflict.id, "mine", now=now_utc())
    assert new_seq is not None and conflicts.list_conflicts(dev.vault.connection) == []
    assert outbox.unsent_count(dev.vault.connection) == 1
    assert dev.sync().pushed == 1
    assert dev.server()["note"] == [{"text": "mine"}] and dev.server()["meta"]["versionId"] == "3"
    assert device_view(dev.vault.connection) == server_view(dev.gw.store, dev.site)
    assert outbox.unsent_count(dev.vault.connection) == 0


def test_keep_theirs_closes_the_conflict_and_sends_nothing(dev: Device) -> None:
    dev.edit("mine")
    dev.server_edit("theirs")
    assert dev.sync().conflicts == 1
    (conflict,) = conflicts.list_conflicts(dev.vault.connection)
    with dev.vault.transaction() as conn:
        assert conflicts.resolve_conflict(conn, conflict.id, "theirs", now=now_utc()) is None
        with pytest.raises(ConsultationError):
            conflicts.resolve_conflict(conn, conflict.id, "theirs", now=now_utc())
    assert outbox.unsent_count(dev.vault.connection) == 0
    assert dev.sync().pushed == 0
    assert dev.server()["note"] == [{"text": "theirs"}]
    assert dev.stored()["note"] == [{"text": "theirs"}]  # type: ignore[index]


def test_an_edit_of_a_record_the_server_deleted_is_a_conflict(dev: Device) -> None:
    dev.edit("mine")
    with dev.gw.store.write() as tx:
        tx.delete("Observation", dev.oid)
    result = dev.sync()
    assert result.ok and result.conflicts == 1 and result.push_errors == 0
    (conflict,) = conflicts.list_conflicts(dev.vault.connection)
    assert conflict.server_body is None and conflict.local_body["note"] == [{"text": "mine"}]
    assert dev.stored() is None  # the store shows the server's truth
    with dev.vault.transaction() as conn:
        with pytest.raises(ConsultationError) as refused:
            conflicts.resolve_conflict(conn, conflict.id, "mine", now=now_utc())
        assert refused.value.reason == "conflict_cannot_keep_mine"
        conflicts.resolve_conflict(conn, conflict.id, "theirs", now=now_utc())
    assert outbox.unsent_count(dev.vault.connection) == 0


def test_CR2_an_update_whose_reply_was_lost_is_not_a_conflict_with_itself(dev: Device) -> None:
    seq = dev.edit("mine")
    with contextlib.suppress(Crash):  # the server commits; the device dies before mark_sent
        dev.sync(replica=CrashingReplica(dev.vault, dev.site, crash_at=1))
    dev.vault = dev.device.open()
    assert dev.state(seq) == "pending" and dev.server()["meta"]["versionId"] == "2"
    result = dev.sync()
    assert result.ok and conflicts.list_conflicts(dev.vault.connection) == []
    assert dev.state(seq) == "sent" and dev.server()["meta"]["versionId"] == "2"
    assert device_view(dev.vault.connection) == server_view(dev.gw.store, dev.site)
