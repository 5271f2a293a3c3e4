"""The session facade on a real provisioned device: AU-1..AU-5, AD-1, TM-1, ST-1, retention."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

import pytest

from client.core import conflicts, consultation, outbox
from client.core.accounts import LoginRefused
from client.core.device import Device, ProvisioningError
from client.core.disk_space import DiskFull
from client.core.errors import UserFacingError, VaultLocked
from client.core.kdf import FLOOR
from client.core.session import (
    BreakGlassRefused,
    BreakGlassRequired,
    NotAllowed,
    RecordsClosed,
    Session,
)
from client.core.trusted_time import anchor
from sync.gateway.seed.generator import generate
from sync.protocol.audit.chain import verify
from tests.support.device import (
    CLINICIAN,
    OTHER_SITE,
    SITE,
    ProvisionedDevice,
    load_records,
    policy_envelope,
    provision,
)

MINUTE = dt.timedelta(minutes=1)


def _seeded(count: int = 12) -> list[dict[str, object]]:
    return [
        r for r in generate(sites=2, patients=count, seed=7) if r["resourceType"] != "Organization"
    ]


def _site_of(resource: dict[str, object]) -> str:
    org = resource.get("managingOrganization")
    assert isinstance(org, dict)
    return str(org["reference"]).split("/")[1]


@pytest.fixture
def td(tmp_path: Path) -> ProvisionedDevice:
    provisioned = provision(tmp_path / "data")
    load_records(provisioned.device, _seeded())
    return provisioned


def _patients(site: str) -> list[dict[str, object]]:
    return [r for r in _seeded() if r["resourceType"] == "Patient" and _site_of(r) == site]


def _actions(session: Session) -> list[str]:
    with session._act() as conn:  # the auditor view is tested separately; read raw here
        return [e.action for e in session._audit.entries(conn)]


def test_a_clinician_searches_opens_and_writes_offline(td: ProvisionedDevice) -> None:
    session = Session.login(td.device, *CLINICIAN)
    mine = _patients(SITE)[0]
    family = mine["name"][0]["family"]  # type: ignore[index]
    hits = session.search(str(family)[:3])
    assert any(h.id == mine["id"] for h in hits)
    chart = session.open_chart(str(mine["id"]))
    assert chart.banner.patient_id == mine["id"]
    result = session.write_consultation(
        str(mine["id"]),
        vitals=[consultation.Vital("heart_rate", 72)],
        note_text="Reviewed chest pain; settled.",
        plan_text="Review in one week.",
    )
    assert result is not None
    assert session.outbox_status()[0] >= 1
    actions = _actions(session)
    assert actions[:2] == ["provision", "policy_installed"]
    assert {"login_ok", "search", "record_view", "note_written"} <= set(actions)
    session.lock()


def test_AU3_lock_closes_the_database_and_every_data_call_fails(td: ProvisionedDevice) -> None:
    session = Session.login(td.device, *CLINICIAN)
    session.lock()
    assert session.is_locked
    with pytest.raises(VaultLocked):
        session.search("a")
    with pytest.raises(VaultLocked):
        session.open_chart(str(_patients(SITE)[0]["id"]))
    session.lock()  # idempotent


def test_AD1_the_audit_entry_is_in_the_same_transaction_as_the_view(td: ProvisionedDevice) -> None:
    """If the audit append fails, the chart is not returned and nothing is half-written."""
    session = Session.login(td.device, *CLINICIAN)
    before = _actions(session)

    def broken_append(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    session._audit.append = broken_append  # type: ignore[method-assign]
    # The transaction rolls back and the full disk leaves classified (CR-3).
    with pytest.raises(DiskFull):
        session.open_chart(str(_patients(SITE)[0]["id"]))
    with pytest.raises(DiskFull):
        session.write_consultation(
            str(_patients(SITE)[0]["id"]), vitals=[], note_text="A note.", plan_text=""
        )
    del session._audit.append
    assert _actions(session) == before
    assert session.outbox_status() == (0, 0)
    session.lock()


def test_AD2_the_local_chain_verifies_after_a_session(td: ProvisionedDevice) -> None:
    session = Session.login(td.device, *CLINICIAN)
    session.search("smi")
    session.lock()
    session = Session.login(td.device, *CLINICIAN)
    with session._act() as conn:
        report = session._audit.verify(conn)
    assert report.ok, report.sentence
    session.lock()


def test_AU1_password_length_from_policy_and_unicode_normalised(tmp_path: Path) -> None:
    with pytest.raises(ProvisioningError) as short:
        provision(tmp_path / "a", user=("nurse.b", "short"))
    assert short.value.reason == "password_too_short"
    # NFKC: a full-width password typed on another keyboard layout unlocks the same slot.
    td = provision(tmp_path / "b", user=("nurse.c", "ｃｏｒｒｅｃｔ horse battery"))
    Session.login(td.device, "nurse.c", "correct horse battery").lock()
    long = "ä" * 200  # no truncation: a long password is used whole
    session = Session.login(td.device, "nurse.c", "ｃｏｒｒｅｃｔ horse battery")
    session.change_password("correct horse battery", long)
    session.lock()
    with pytest.raises(LoginRefused):
        Session.login(td.device, "nurse.c", "ä" * 199)
    td.clocks.advance(dt.timedelta(hours=1))
    Session.login(td.device, "nurse.c", long).lock()


def test_AU2_throttle_then_lockout_and_the_counter_survives_a_restart(
    td: ProvisionedDevice,
) -> None:
    attempts: list[LoginRefused] = []
    for _ in range(4):
        with pytest.raises(LoginRefused) as caught:
            Session.login(td.device, CLINICIAN[0], "wrong password!!")
        attempts.append(caught.value)
        td.reopen()  # restarting the app changes nothing
        if caught.value.locked_until:
            td.clocks.wall = caught.value.locked_until + dt.timedelta(seconds=1)
            td.clocks.boot += 3600
    assert [a.attempts_left for a in attempts[:3]] == [4, 3, 2]
    with pytest.raises(LoginRefused) as caught:
        Session.login(td.device, CLINICIAN[0], "wrong password!!")
    assert caught.value.reason == "locked_out"
    assert caught.value.locked_until is not None
    td.reopen()
    with pytest.raises(LoginRefused) as still:
        Session.login(td.device, *CLINICIAN)  # right password, but locked
    assert still.value.reason == "locked_out"
    td.clocks.wall = caught.value.locked_until + MINUTE
    td.clocks.boot += 3600
    session = Session.login(td.device, *CLINICIAN)
    actions = _actions(session)
    assert actions.count("login_failed") == 5
    assert "lockout" in actions
    session.lock()


def test_AU2_the_wipe_threshold_wipes_the_device(tmp_path: Path) -> None:
    td = provision(
        tmp_path / "d",
        policy=policy_envelope(
            auth__lockout_after_failures=3, auth__wipe_after_failures=4, auth__lockout_seconds=60
        ),
    )
    reasons = []
    for _ in range(4):
        with pytest.raises(LoginRefused) as caught:
            Session.login(td.device, CLINICIAN[0], "not the password")
        reasons.append(caught.value.reason)
        if caught.value.locked_until:
            td.clocks.wall = caught.value.locked_until + MINUTE
            td.clocks.boot += 3600
    assert reasons[-1] == "wiped_failed_logins"
    assert not (td.data_dir / "vault.db").exists()
    with pytest.raises(ProvisioningError):
        td.reopen()


def test_TM1_clock_set_back_refuses_offline_login_and_is_audited_later(
    td: ProvisionedDevice,
) -> None:
    Session.login(td.device, *CLINICIAN).lock()
    td.clocks.wall -= dt.timedelta(days=3)
    td.clocks.boot_id = "boot-2"  # rebooted with a clock set back
    with pytest.raises(LoginRefused) as caught:
        Session.login(td.device, *CLINICIAN)
    assert caught.value.reason == "clock_tamper"
    assert td.device.header.counters.pending_audit_events[-1]["event"] == "clock_tamper"
    session = Session.login(td.device, *CLINICIAN, for_sync=True)  # sync-only, never bricked
    with pytest.raises(RecordsClosed):
        session.search("a")
    session.lock()


def test_offline_too_long_blocks_records_but_still_lets_the_laptop_sync(
    td: ProvisionedDevice,
) -> None:
    """C1: blocked until a sync, never bricked: a sync-only session opens no records."""
    Session.login(td.device, *CLINICIAN).lock()
    td.clocks.advance(dt.timedelta(hours=73))
    with pytest.raises(LoginRefused) as caught:
        Session.login(td.device, *CLINICIAN)
    assert caught.value.reason == "offline_too_long"
    session = Session.login(td.device, *CLINICIAN, for_sync=True)
    assert session.blocked == "offline_too_long"
    with pytest.raises(RecordsClosed):
        session.search("a")
    with pytest.raises(RecordsClosed):
        session.open_chart(str(_patients(SITE)[0]["id"]))
    # A sync anchors trusted time (what run_sync's time step does), then records reopen.
    device = td.device
    device.save_time_state(anchor(device.time_state(), td.clocks.now(), td.clocks.reading()))
    session.refresh_access()
    assert session.blocked is None
    assert session.search("a") is not None
    session.lock()


def test_M1_an_expired_policy_closes_records(tmp_path: Path) -> None:
    td = provision(tmp_path / "exp")
    load_records(td.device, _seeded())
    td.clocks.advance(dt.timedelta(days=89, hours=23))
    device = td.device  # it synced yesterday (trusted time is fresh); the policy did not change
    device.save_time_state(anchor(device.time_state(), td.clocks.now(), td.clocks.reading()))
    session = Session.login(td.device, *CLINICIAN)
    td.clocks.advance(dt.timedelta(hours=2))  # the policy expires during the session
    with pytest.raises(RecordsClosed) as caught:
        session.search("a")
    assert caught.value.reason == "policy_expired"
    session.lock()


def test_AU5_roles_are_enforced_in_the_core(tmp_path: Path) -> None:
    auditor = provision(
        tmp_path / "aud", role="auditor", user=("auditor.sam", "auditor passphrase")
    )
    load_records(auditor.device, _seeded(), user=("auditor.sam", "auditor passphrase"))
    session = Session.login(auditor.device, "auditor.sam", "auditor passphrase")
    patient = str(_patients(SITE)[0]["id"])
    with pytest.raises(NotAllowed):
        session.search("a")
    with pytest.raises(NotAllowed):
        session.open_chart(patient)
    with pytest.raises(NotAllowed):
        session.add_user("x.y", "auditor", "long enough password")
    entries = session.audit_entries()
    assert [e.action for e in entries if e.outcome == "denied"] == [
        "search",
        "record_view",
        "user_added",
    ]
    # No clinical content anywhere in what an auditor sees.
    text = repr(entries) + repr(session.export_audit())
    for resource in _seeded():
        if resource["resourceType"] == "Patient":
            assert str(resource["name"][0]["family"]) not in text  # type: ignore[index]
    session.lock()


def test_an_admin_adds_an_auditor_but_never_a_clinician_offline(tmp_path: Path) -> None:
    """H1: clinical access comes from the gateway (online first sign-in), never from IT."""
    td = provision(tmp_path / "adm", role="admin", user=("it.admin", "admin passphrase!"))
    session = Session.login(td.device, "it.admin", "admin passphrase!")
    with pytest.raises(NotAllowed):
        session.add_user("dr.fake", "clinician", "tardis blue box 1963")
    session.add_user("ig.sam", "auditor", "tardis blue box 1963")
    session.lock()
    assert dict(td.device.header.users()) == {"it.admin": "admin", "ig.sam": "auditor"}
    auditor = Session.login(td.device, "ig.sam", "tardis blue box 1963")
    assert auditor.role == "auditor"
    assert "user_added" in [e.action for e in auditor.audit_entries()]
    auditor.lock()


def test_H4_change_password_is_throttled_like_a_login(td: ProvisionedDevice) -> None:
    session = Session.login(td.device, *CLINICIAN)
    outcomes = []
    for _ in range(6):
        with pytest.raises(LoginRefused) as caught:
            session.change_password("not my password!!", "a brand new long password")
        outcomes.append(caught.value.reason)
        td.clocks.advance(dt.timedelta(seconds=1))
    assert "locked_out" in outcomes  # the policy's lockout applies, not endless guessing
    assert td.device.header.counters.failed_attempts.get(CLINICIAN[0], 0) >= 2  # counted
    session.lock()


def test_AU4_a_transferred_patient_with_unsent_work_needs_break_glass(
    td: ProvisionedDevice,
) -> None:
    session = Session.login(td.device, *CLINICIAN)
    patient = dict(_patients(SITE)[0])
    pid = str(patient["id"])
    session.write_consultation(pid, vitals=[], note_text="Seen today.", plan_text="Review.")
    session.lock()
    moved = {
        **patient,
        "meta": {"versionId": "2", "lastUpdated": "2026-11-02T10:00:00+00:00"},
        "managingOrganization": {"reference": f"Organization/{OTHER_SITE}"},
    }
    load_records(td.device, [moved])
    session = Session.login(td.device, *CLINICIAN)  # retention keeps it: unsent work
    with pytest.raises(BreakGlassRequired):
        session.open_chart(pid)
    with pytest.raises(BreakGlassRefused):
        session.break_glass(pid, "emergency", "short", CLINICIAN[1])
    with pytest.raises(LoginRefused):
        session.break_glass(pid, "emergency", "Collapsed on the wing, needs history", "wrong!!")
    with pytest.raises(LoginRefused) as throttled:  # re-authentication is throttled like login
        session.break_glass(pid, "emergency", "Collapsed on the wing, needs history", CLINICIAN[1])
    assert throttled.value.reason == "locked_out"
    td.clocks.advance(dt.timedelta(seconds=5))
    grant = session.break_glass(
        pid, "emergency", "Collapsed on the wing, needs history", CLINICIAN[1]
    )
    assert grant.expires_at > td.clocks.now()
    assert session.open_chart(pid).banner.patient_id == pid
    with session._act() as conn:
        entries = session._audit.entries(conn)
    glass = [e for e in entries if e.action == "break_glass"]
    assert [e.outcome for e in glass] == ["failure", "failure", "success"]
    assert glass[-1].purpose == "BTG"
    views = [e for e in entries if e.action == "record_view" and e.patient_id == pid]
    assert views[-1].purpose == "BTG"
    td.clocks.advance(dt.timedelta(hours=2))  # the grant runs out
    with pytest.raises(BreakGlassRequired):
        session.open_chart(pid)
    session.lock()


def test_retention_purges_out_of_scope_patients_and_audits_it(td: ProvisionedDevice) -> None:
    other = _patients(OTHER_SITE)
    assert other
    session = Session.login(td.device, *CLINICIAN)
    with session._act() as conn:
        entries = session._audit.entries(conn)
        remaining = conn.execute(
            "SELECT count(*) FROM resources WHERE type = 'Patient'"
        ).fetchone()[0]
    purged = {e.patient_id for e in entries if e.action == "purge"}
    assert purged == {str(p["id"]) for p in other}
    assert remaining == len(_patients(SITE))
    session.lock()


def test_ST1_no_record_text_in_plaintext_anywhere_after_a_session(
    td: ProvisionedDevice,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    temp = tmp_path / "tmp"  # the process's temp folder for this session, scanned afterwards
    temp.mkdir()
    for name in ("TMPDIR", "SQLITE_TMPDIR"):
        monkeypatch.setenv(name, str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    canary = "Canary-Zqx7-Hepatitis-Note"
    session = Session.login(td.device, *CLINICIAN)
    mine = _patients(SITE)[0]
    session.search(str(mine["name"][0]["family"]))  # type: ignore[index]
    session.open_chart(str(mine["id"]))
    session.write_consultation(str(mine["id"]), vitals=[], note_text=canary, plan_text=canary)
    session.lock()
    needles = [canary.encode(), str(mine["name"][0]["family"]).encode()]  # type: ignore[index]
    for folder in (td.data_dir, temp):
        for root, _, files in os.walk(folder):
            for name in files:
                path = Path(root) / name
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                for needle in needles:
                    assert needle not in data, f"plaintext in {path}"
    assert all(n.decode() not in caplog.text for n in needles)


def test_a_restart_reopens_the_device_and_the_chain_continues(td: ProvisionedDevice) -> None:
    Session.login(td.device, *CLINICIAN).lock()
    device = Device.open(
        td.data_dir,
        keyring_backend=td.keyring,
        clock=td.clocks.now,
        clocks=td.clocks.reading,
        kdf_params=FLOOR,
    )
    session = Session.login(device, *CLINICIAN)
    with session._act() as conn:
        entries = session._audit.entries(conn)
    report = verify(entries, device_id=device.profile.device_id, initial_key=None)
    assert report.ok
    assert [e.action for e in entries].count("login_ok") == 2
    session.lock()


def test_caseload_lists_only_the_site_by_name_and_is_audited(td: ProvisionedDevice) -> None:
    session = Session.login(td.device, *CLINICIAN)
    listed = session.caseload()
    assert {p.id for p in listed} == {str(p["id"]) for p in _patients(SITE)}
    families = [p.display_name.split(",")[0].casefold() for p in listed]
    assert families == sorted(families)  # by family name first
    assert all(p.in_scope for p in listed)
    assert "caseload" in _actions(session)
    session.lock()


def test_AU4_print_needs_the_password_and_a_reason_and_is_audited(tmp_path: Path) -> None:
    td = provision(tmp_path / "p", policy=policy_envelope(ui__printing=True))
    load_records(td.device, _seeded())
    session = Session.login(td.device, *CLINICIAN)
    pid = str(_patients(SITE)[0]["id"])
    with pytest.raises(BreakGlassRefused):
        session.authorise_disclosure("print", pid, "x", CLINICIAN[1])
    with pytest.raises(LoginRefused):
        session.authorise_disclosure("print", pid, "Hospital escort handover", "wrong pw!!")
    td.clocks.advance(dt.timedelta(seconds=5))
    session.authorise_disclosure("print", pid, "Hospital escort handover", CLINICIAN[1])
    with session._act() as conn:
        printed = [e for e in session._audit.entries(conn) if e.action == "print_allowed"]
    assert [e.outcome for e in printed] == ["failure", "success"]
    assert printed[-1].reason_text == "Hospital escort handover"
    session.lock()


def test_print_blocked_by_policy_is_refused_and_audited(td: ProvisionedDevice) -> None:
    session = Session.login(td.device, *CLINICIAN)
    pid = str(_patients(SITE)[0]["id"])
    with pytest.raises(NotAllowed):
        session.authorise_disclosure("print", pid, "Hospital escort handover", CLINICIAN[1])
    assert "print_blocked" in _actions(session)
    session.lock()


def test_H2_a_wipe_during_a_session_stops_it_serving_records(tmp_path: Path) -> None:
    """Failed re-authentication past the wipe threshold: the open session serves nothing."""
    td = provision(
        tmp_path / "w",
        policy=policy_envelope(
            auth__lockout_after_failures=3, auth__wipe_after_failures=4, auth__lockout_seconds=60
        ),
    )
    load_records(td.device, _seeded())
    session = Session.login(td.device, *CLINICIAN)
    pid = str(_patients(SITE)[0]["id"])
    reasons = []
    for _ in range(4):
        with pytest.raises(LoginRefused) as caught:
            session.change_password("guessing the password", "a brand new long password")
        reasons.append(caught.value.reason)
        td.clocks.advance(dt.timedelta(minutes=2))
    assert reasons[-1] == "wiped_failed_logins"
    with pytest.raises(VaultLocked):
        session.search("a")
    with pytest.raises(VaultLocked):
        session.open_chart(pid)
    session.lock()  # idempotent, nothing to audit into


def test_WP1_an_admin_wipe_needs_the_password_and_the_device_id(tmp_path: Path) -> None:
    td = provision(tmp_path / "wipe", role="admin", user=("it.admin", "admin passphrase!"))
    session = Session.login(td.device, "it.admin", "admin passphrase!")
    with pytest.raises(UserFacingError):
        session.wipe_device("admin passphrase!", "not-the-id")
    with pytest.raises(LoginRefused):
        session.wipe_device("wrong password!!", td.device.profile.device_id)
    td.clocks.advance(dt.timedelta(seconds=5))
    copy = {p.name: p.read_bytes() for p in td.data_dir.iterdir() if p.is_file()}
    session.wipe_device("admin passphrase!", td.device.profile.device_id)
    assert session.is_locked and not (td.data_dir / "vault.db").exists()
    for name, content in copy.items():  # the copy taken before no longer opens
        (td.data_dir / name).write_bytes(content)
    with pytest.raises(Exception):  # noqa: B017 - keyring secrets are gone: nothing opens
        Session.login(td.reopen(), "it.admin", "admin passphrase!")


@pytest.mark.parametrize("upstream", [True, False])
def test_keep_theirs_names_the_refused_version_only_for_an_upstream_conflict(
    td: ProvisionedDevice, upstream: bool
) -> None:
    """An upstream conflict (the gateway accepted the edit as version 7, then the health record
    refused it): "keep theirs" audits ``refused_version`` 7, so the gateway closes that
    conflict and no other, whatever this laptop's clock says. A conflict the gateway itself
    raised (the edit was never accepted) names none: there is no upstream row to close."""
    session = Session.login(td.device, *CLINICIAN)
    pids = {str(p["id"]) for p in _patients(SITE)}
    theirs = next(
        r for r in _seeded() if r["resourceType"] == "Observation"
        and str(r["subject"]["reference"]).removeprefix("Patient/") in pids  # type: ignore[index]
    )  # fmt: skip
    rid, pid = str(theirs["id"]), str(theirs["subject"]["reference"]).split("/")[1]  # type: ignore[index]
    edit = {k: v for k, v in theirs.items() if k != "meta"} | {"status": "amended"}
    with session._act() as conn:
        seq = outbox.enqueue_update(conn, edit, pid, "1", "2026-12-07T09:00:00Z")
        if upstream:
            outbox.mark_sent(conn, seq, rid, "7")
            cid = conflicts.record_upstream_conflict(conn, "Observation", rid, "7", theirs)
        else:
            cid = conflicts.record_conflict(conn, seq, theirs)
    assert cid is not None
    session.resolve_conflict(cid, "theirs")
    with session._act() as conn:
        [entry] = [e for e in session._audit.entries(conn) if e.action == "conflict_resolved"]
    expected = {"keep": "theirs", "discarded": "laptop", "resource": f"Observation/{rid}"}
    assert dict(entry.detail) == (expected | {"refused_version": "7"} if upstream else expected)
    session.lock()
