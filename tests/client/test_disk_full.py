"""A full disk (SECURITY.md CR-3) on a REAL small file system: a tmpfs mounted per test.

The laptop's data folder lives on the tmpfs; the gateway (real, mutual TLS on 127.0.0.1) does
not. Each act — sync, save, password change, audit upload, sign-in — meets the kernel's own
ENOSPC / SQLITE_FULL. Each gives the one plain sentence, keeps nothing half-written, and once
space is freed everything opens, verifies and converges (the note reaches the gateway exactly
once, the audit chains agree with no alert).

The one fake is the free-space probe in the "the disk fills DURING the act" tests: it says
there is room, so the early refusal is passed and the real failure further in is what is tested.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.core import accounts, consultation, disk_space
from client.core.accounts import LoginRefused
from client.core.device import Device
from client.core.disk_space import DiskFull
from client.core.provisioning import add_user_online
from client.core.schema import MIGRATIONS
from client.core.session import Session
from client.core.sync_runner import run_sync
from client.core.vault import Vault, database_path
from sync.device.engine import Progress
from tests.support.small_disk import SmallDisk, small_disk
from tests.support.sync import server_client_ids
from tests.support.ui_gateway import (
    NURSE,
    LiveGateway,
    provision_for_tests,
    start_live_gateway,
)

MB = disk_space.MB
DISK_MB = 96  # room for a synced vault, the reserve and a sync's budget (SYNC_BYTES)
MESSAGE = re.compile(r"^The laptop's disk is full: \d+ MB free, \d+ MB needed — call IT\.$")
ROOMY = 1 << 40  # what the lying probe reports


@dataclass
class Laptop:
    gw: LiveGateway
    disk: SmallDisk
    device: Device


@pytest.fixture
def laptop(tmp_path: Path) -> Iterator[Laptop]:
    gw = start_live_gateway(tmp_path, patients=12)
    try:
        with small_disk(tmp_path / "disk", DISK_MB) as disk:
            raw = gw.bundle(tmp_path / "bundle.json").read_bytes()
            device = provision_for_tests(disk.root / "laptop", raw)
            add_user_online(device, *NURSE)
            session = Session.login(device, *NURSE)
            assert run_sync(session).ok
            session.lock()
            yield Laptop(gw, disk, device)
    finally:
        gw.stop()


def _state(session: Session) -> tuple[int, int, int]:
    """(unsent outbox items, encounters on the laptop, audit entries): what an act changes."""
    with session.transaction() as conn:
        unsent = conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]
        encounters = conn.execute(
            "SELECT count(*) FROM resources WHERE type = 'Encounter'"
        ).fetchone()[0]
        entries = conn.execute("SELECT count(*) FROM audit_entries").fetchone()[0]
    return int(unsent), int(encounters), int(entries)


def _write_note(session: Session, patient_id: str, text: str) -> consultation.ConsultationResult:
    return session.write_consultation(
        patient_id,
        vitals=[consultation.Vital("heart_rate", 72)],
        note_text=text,
        plan_text="Review.",
    )


def _client_ids(session: Session, note: consultation.ConsultationResult) -> list[str]:
    with session.transaction() as conn:
        marks = ",".join("?" * len(note.outbox_seqs))
        rows = conn.execute(
            f"SELECT client_id FROM outbox WHERE seq IN ({marks})", note.outbox_seqs
        ).fetchall()
    return [str(row[0]) for row in rows]


def _filed(laptop: Laptop, client_ids: list[str]) -> list[int]:
    """How many times the gateway holds each of the note's resources."""
    held = server_client_ids(laptop.gw.store)
    return [held[cid] for cid in client_ids]


def _verified(laptop: Laptop, session: Session) -> None:
    """The vault is intact, the local chain verifies, and the gateway holds it with no alert."""
    conn = session.connection()
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA cipher_integrity_check").fetchall() == []
    report = session.audit_log.verify(conn)
    assert report.ok, report.sentence
    device_id = laptop.device.profile.device_id
    chain = laptop.gw.store.audit_chain(device_id)
    assert chain is not None and chain.alerts == 0
    assert laptop.gw.store.audit_alerts(device_id) == []


def _full_disk(error: pytest.ExceptionInfo[DiskFull], needed: int) -> None:
    assert error.value.reason == "disk_full"
    assert MESSAGE.match(error.value.message), error.value.message
    assert error.value.needed_bytes == needed


def test_cr3_sync_save_and_password_change_are_refused_early_with_the_figures(
    laptop: Laptop,
) -> None:
    device = laptop.device
    session = Session.login(device, *NURSE)
    patient = session.caseload()[0].id
    laptop.disk.fill(leave=10 * MB)
    before = _state(session)
    generation = device.header.generation

    with pytest.raises(DiskFull) as saved:
        _write_note(session, patient, "Seen on the wing.")
    _full_disk(saved, disk_space.SAVE_BYTES)
    assert 9 <= saved.value.free_bytes // MB <= 10
    with pytest.raises(DiskFull) as synced:
        run_sync(session)
    _full_disk(synced, disk_space.SYNC_BYTES)
    with pytest.raises(DiskFull) as changed:
        session.change_password(NURSE[1], "a brand new long password")
    _full_disk(changed, disk_space.SAVE_BYTES)
    assert _state(session) == before and device.header.generation == generation

    laptop.disk.unfill()
    _write_note(session, patient, "Seen on the wing.")
    assert run_sync(session).ok and session.outbox_status() == (0, 0)
    _verified(laptop, session)
    session.lock()


def test_cr3_sign_in_on_a_full_disk_reads_records_and_still_counts_every_attempt(
    laptop: Laptop,
) -> None:
    """Not one byte free: the reserve is released at sign-in, so the failed-attempt counter is
    written before each try and every record view is audited; writing stays refused."""
    device = laptop.device
    reserve = disk_space.reserve_path(device.data_dir)
    assert reserve.stat().st_size == disk_space.RESERVE_BYTES  # made at provisioning
    laptop.disk.fill(leave=0)
    assert laptop.disk.free() == 0

    with pytest.raises(LoginRefused) as wrong:
        Session.login(device, NURSE[0], "not the password at all")
    assert wrong.value.reason == "unlock_failed"
    assert device.header.counters.failed_attempts.get(NURSE[0]) == 1  # counted, on a full disk
    assert not reserve.exists()
    assert wrong.value.locked_until is not None  # the policy's short wait after a failure
    time.sleep(max(0.0, (wrong.value.locked_until - dt.datetime.now(dt.UTC)).total_seconds()))

    session = Session.login(device, *NURSE)  # reading only
    patient = session.caseload()[0].id
    chart = session.open_chart(patient)
    assert chart.banner.patient_id == patient
    with session.transaction() as conn:
        rows = conn.execute("SELECT action FROM audit_entries ORDER BY seq").fetchall()
    actions = [row[0] for row in rows]
    assert actions[-3:] == ["login_ok", "caseload", "record_view"]
    assert "login_failed" in actions  # the counted attempt entered the chain
    before = _state(session)
    with pytest.raises(DiskFull) as saved:
        _write_note(session, patient, "Seen on the wing.")
    _full_disk(saved, disk_space.SAVE_BYTES)
    with pytest.raises(DiskFull):
        run_sync(session)
    assert _state(session) == before
    session.lock()

    laptop.disk.unfill()
    session = Session.login(device, *NURSE)
    assert disk_space.reserve_path(device.data_dir).exists()  # remade once there was room
    note = _client_ids(session, _write_note(session, patient, "Seen after the disk was cleared."))
    assert run_sync(session).ok and session.outbox_status() == (0, 0)
    assert _filed(laptop, note) == [1, 1, 1]
    _verified(laptop, session)
    session.lock()


def test_cr3_with_no_room_even_to_count_an_attempt_no_password_is_tried(laptop: Laptop) -> None:
    """Another program took the reserve's space too: sign-in fails closed with the disk-full
    sentence for the right and the wrong password alike (no oracle, no uncounted guess)."""
    device = laptop.device
    disk_space.release_reserve(device.data_dir)
    laptop.disk.fill(leave=0)
    generation, counters = device.header.generation, device.header.counters
    for password in (NURSE[1], "a wrong guess at the password"):
        with pytest.raises(DiskFull) as refused:
            Session.login(device, NURSE[0], password)
        assert MESSAGE.match(refused.value.message)
    assert device.header.generation == generation and device.header.counters == counters

    laptop.disk.unfill()
    session = Session.login(device, *NURSE)
    assert device.header.counters.failed_attempts.get(NURSE[0]) is None
    _verified(laptop, session)
    session.lock()


def test_cr3_the_vault_on_a_full_disk_opens_as_disk_full_never_as_a_wrong_key(
    laptop: Laptop,
) -> None:
    """Opening needs its -shm file: SQLite says 'disk I/O error', which is not a wrong key."""
    device = laptop.device
    dek = accounts.login(device, *NURSE).dek
    disk_space.release_reserve(device.data_dir)
    laptop.disk.fill(leave=0)
    with pytest.raises(DiskFull):
        Vault.open(database_path(device.data_dir), dek, MIGRATIONS)
    laptop.disk.unfill()
    Vault.open(database_path(device.data_dir), dek, MIGRATIONS).close()


def test_cr3_the_disk_filling_during_a_save_or_a_password_change_keeps_nothing(
    laptop: Laptop,
) -> None:
    device = laptop.device
    session = Session.login(device, *NURSE)
    patient = session.caseload()[0].id
    device.free_space = lambda _path: ROOMY  # the early check passes; the disk is really full
    session.audit_log.scrub_wal(session.connection())  # no spare WAL pages to write into
    laptop.disk.fill(leave=0)
    before, generation = _state(session), device.header.generation

    with pytest.raises(DiskFull) as saved:  # SQLITE_FULL inside the transaction
        _write_note(session, patient, "Seen on the wing.")
    assert MESSAGE.match(saved.value.message)
    with pytest.raises(DiskFull):  # ENOSPC writing the header
        session.change_password(NURSE[1], "a brand new long password")
    assert _state(session) == before and device.header.generation == generation
    assert not list(device.data_dir.glob(".*.tmp"))  # no half-written temp file left
    session.lock()  # locking never fails, even with nowhere to write its entry

    laptop.disk.unfill()
    session = Session.login(device, *NURSE)  # the old password still opens: the slot is as it was
    _write_note(session, patient, "Seen on the wing.")
    assert run_sync(session).ok
    _verified(laptop, session)
    session.lock()


@pytest.mark.parametrize("fill_before", ["audit", "commands"])
def test_cr3_the_disk_filling_during_a_sync_converges_once_space_is_freed(
    laptop: Laptop, fill_before: str
) -> None:
    """The disk fills just before the audit upload (the gateway stores the batch, the laptop
    cannot record the receipt) or just before the push (the gateway files the note, the laptop
    cannot mark it sent). The sync stops with the sentence; the next one converges: the note is
    on the gateway exactly once and the audit chains agree, with no tamper alert."""
    device = laptop.device
    session = Session.login(device, *NURSE)
    note = _client_ids(session, _write_note(session, session.caseload()[0].id, "Seen."))
    device.free_space = lambda _path: ROOMY

    def fill_at(progress: Progress) -> None:
        if progress.phase == "control" and progress.detail == fill_before:
            laptop.disk.fill(leave=0)

    with pytest.raises(DiskFull) as stopped:
        run_sync(session, progress=fill_at)
    assert MESSAGE.match(stopped.value.message)
    assert _filed(laptop, note) == [1 if fill_before == "commands" else 0] * 3
    assert session.outbox_status()[0] == 3  # still unsent on the laptop: nothing half-marked

    laptop.disk.unfill()
    result = run_sync(session)
    assert result.ok, result.error
    assert session.outbox_status() == (0, 0)
    assert _filed(laptop, note) == [1, 1, 1]
    assert session.status().audit_unsent == 0
    _verified(laptop, session)
    session.lock()
