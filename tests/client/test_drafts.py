"""CR-4 in the core: drafts kept in the real SQLCipher vault, one per clinician and patient,
removed by the save that uses them, and holding their patient against retention."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from client.core import consultation, outbox, records
from client.core.drafts import DraftFields
from client.core.readiness import Check, assess, gather
from client.core.session import NotAllowed, Session
from client.core.vault import database_path
from sync.gateway.seed.generator import generate
from tests.support.device import CLINICIAN, ProvisionedDevice, load_records, provision

AUDITOR = ("auditor.sam", "auditor passphrase")
TYPED = DraftFields(vitals={"heart_rate": "88", "temperature": "37,"}, note="Wheeze.", plan="")


@pytest.fixture
def td(tmp_path: Path) -> ProvisionedDevice:
    provisioned = provision(tmp_path / "data")
    load_records(
        provisioned.device,
        [r for r in generate(sites=1, patients=3, seed=2) if r["resourceType"] != "Organization"],
    )
    return provisioned


def _patient(session: Session) -> str:
    return session.caseload()[0].id


def test_cr4_a_draft_is_kept_as_typed_and_replaced_by_the_next_autosave(
    td: ProvisionedDevice,
) -> None:
    session = Session.login(td.device, *CLINICIAN)
    pid = _patient(session)
    assert session.save_draft(pid, TYPED)
    first = session.draft(pid)
    assert first is not None and first.fields == TYPED
    td.clocks.advance(dt.timedelta(seconds=3))
    later = DraftFields(vitals={"heart_rate": "88"}, note="Wheeze. Better today.", plan="Review")
    assert session.save_draft(pid, later)
    second = session.draft(pid)
    assert second is not None and second.fields == later
    assert second.started_at == first.started_at and second.saved_at > first.saved_at
    assert session.patients_with_drafts() == [pid]
    session.lock()
    # In the encrypted vault: the file holds no draft text.
    assert b"Better today" not in database_path(td.device.data_dir).read_bytes()


def test_cr4_an_empty_form_is_no_draft(td: ProvisionedDevice) -> None:
    session = Session.login(td.device, *CLINICIAN)
    pid = _patient(session)
    session.save_draft(pid, TYPED)
    assert not session.save_draft(pid, DraftFields(vitals={"heart_rate": "  "}))
    assert session.draft(pid) is None


def test_cr4_saving_the_consultation_removes_its_draft_in_the_same_transaction(
    td: ProvisionedDevice,
) -> None:
    session = Session.login(td.device, *CLINICIAN)
    pid = _patient(session)
    session.save_draft(pid, TYPED)
    with pytest.raises(consultation.ConsultationError):  # refused: the draft stays
        session.write_consultation(
            pid, vitals=[consultation.Vital("heart_rate", 900)], note_text="x", plan_text=""
        )
    assert session.draft(pid) is not None
    session.write_consultation(
        pid, vitals=[consultation.Vital("heart_rate", 88)], note_text="Wheeze.", plan_text=""
    )
    assert session.draft(pid) is None


def test_cr4_a_draft_holds_its_patient_against_retention(td: ProvisionedDevice) -> None:
    session = Session.login(td.device, *CLINICIAN)
    pid = _patient(session)
    session.save_draft(pid, TYPED)
    later = td.clocks.now() + dt.timedelta(days=400)  # far past retention
    with session.transaction() as conn:
        held = {
            c.patient_id: c.has_unsent_work
            for c in records.patients_past_retention(conn, later, 30, session.site_scope())
        }
        assert held[pid] is True, "retention would purge a patient with typed words"
        assert outbox.has_unsent_work(conn, pid)  # a transfer holds them too (the replica)
    session.discard_draft(pid)
    with session.transaction() as conn:
        assert not outbox.has_unsent_work(conn, pid)
        records.purge_patient(conn, pid)
    session.save_draft(pid, TYPED)
    with session.transaction() as conn:
        records.purge_patient(conn, pid)  # a purge takes the draft with everything else
    assert session.draft(pid) is None


def test_cr4_only_clinicians_keep_drafts(td: ProvisionedDevice, tmp_path: Path) -> None:
    auditor_device = provision(tmp_path / "auditor", role="auditor", user=AUDITOR)
    session = Session.login(auditor_device.device, *AUDITOR)
    with pytest.raises(NotAllowed):
        session.save_draft("p-any", TYPED)
    assert session.draft("p-any") is None


def test_cr4_a_kept_draft_means_the_visit_readiness_is_not_all_sent(
    td: ProvisionedDevice,
) -> None:
    """The readiness check said "All work is on the gateway" while a started consultation was
    kept only as a draft: typed words not in the record are work not sent."""
    session = Session.login(td.device, *CLINICIAN)
    pid = _patient(session)

    def work_check() -> Check:
        facts = gather(session)
        now = td.clocks.now()
        checks = assess(facts.status, facts.offline, now, now, dt.timedelta(days=1))
        return next(c for c in checks if c.key == "work")

    assert work_check().ready
    session.save_draft(pid, TYPED)
    assert session.status().drafts == 1
    check = work_check()
    assert not check.ready
    assert "1 consultation(s) you started are kept as drafts" in check.verdict
    assert "finish and save each draft, or discard it" in check.todo
    session.discard_draft(pid)
    assert work_check().ready
    session.lock()
