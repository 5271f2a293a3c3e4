"""Issue 12 item 3 on a real laptop (SQLCipher vault, real sync) against the real gateway over
mutual TLS: a follow-up written while the patient was at this site reaches their record after a
transfer; one written after they left is refused, and the laptop names the patient, why and
what to do — the readiness check's advice is not "Sync now" for it."""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from client.cli import describe_sync, sync_report
from client.core.provisioning import add_user_online
from client.core.push_refusals import describe, site_display
from client.core.readiness import assess, gather
from client.core.session import Session
from client.core.sync_runner import run_sync
from sync.gateway.store.base import SearchQuery
from sync.gateway.store.loader import load_resources
from tests.support.ui_gateway import (
    NURSE,
    OTHER_SITE,
    SITE,
    LiveGateway,
    provision_for_tests,
    start_live_gateway,
)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveGateway]:
    gateway = start_live_gateway(tmp_path / "gw", patients=12)
    try:
        yield gateway
    finally:
        gateway.stop()


def transfer(live: LiveGateway, patient_id: str, site: str = OTHER_SITE) -> None:
    """The prison system moves the patient (as the gateway's loader receives it)."""
    stored = live.store.read("Patient", patient_id)
    assert stored is not None
    body = orjson.loads(stored.body)
    body.pop("meta", None)
    body["managingOrganization"] = {"reference": f"Organization/{site}"}
    time.sleep(0.002)
    load_resources(live.store, [body])
    time.sleep(0.002)


def signed_in(live: LiveGateway, tmp_path: Path) -> Session:
    device = provision_for_tests(tmp_path / "laptop", live.bundle(tmp_path / "b.json").read_bytes())
    assert add_user_online(device, *NURSE) == "clinician"
    session = Session.login(device, *NURSE)
    assert run_sync(session).ok
    return session


def note(session: Session, patient_id: str, text: str) -> None:
    session.write_consultation(patient_id, vitals=[], note_text=text, plan_text="Review.")


def test_follow_up_written_before_the_transfer_is_filed_and_one_after_is_refused_with_why(
    live: LiveGateway, tmp_path: Path
) -> None:
    session = signed_in(live, tmp_path)
    stayed, left = [p for p in session.caseload() if p.in_scope][:2]

    note(session, stayed.id, "Follow-up written on the wing.")  # offline, patient still here
    transfer(live, stayed.id)
    transfer(live, left.id)
    note(session, left.id, "Written after the move.")  # the laptop has not heard of it yet

    result = run_sync(session)
    assert result.ok, result.error
    assert (result.pushed, result.push_errors) == (2, 2)  # Encounter + note each
    filed = live.store.search(
        SearchQuery("DocumentReference", OTHER_SITE, 50, patient_id=stayed.id)
    )
    written_here = [r for r in filed if b"Follow-up written on the wing" in _text(r.body)]
    assert len(written_here) == 1  # in the patient's record at their new prison

    status = session.status()
    assert [(r.patient_id, r.notes, r.code) for r in status.refused] == [
        (left.id, 1, "http_403:patient_left_site")
    ]
    refusal = status.refused[0]
    assert refusal.sentence == (
        f"The gateway refused 1 note for {left.display_name}: written after the patient left "
        "HMP Brixton."
    )
    assert "clinical lead or IT" in refusal.todo and "will not send it" in refusal.todo
    # What `gatehouse device sync` prints: the reason and what to do, never the patient's name.
    printed = describe_sync(result, status.refused)
    assert "1 note(s) refused by the gateway (patient_left_site)." in printed
    assert refusal.todo in printed and left.display_name not in printed
    report = sync_report(result, status.refused)
    assert report["refused"] == [
        {
            "code": "http_403:patient_left_site",
            "notes": 1,
            "retry_helps": False,
            "todo": refusal.todo,
        }
    ]

    facts = gather(session)
    now = dt.datetime.now(dt.UTC)
    checks = assess(facts.status, facts.offline, facts.last_sync, now, dt.timedelta(days=1))
    work = next(c for c in checks if c.key == "work")
    assert not work.ready
    assert refusal.sentence in work.verdict and "Sync now" not in work.todo
    assert work.todo == refusal.todo

    # Another sync does not change the answer, and does not pretend it might.
    again = run_sync(session)
    assert again.ok and (again.pushed, again.push_errors) == (0, 2)
    assert session.status().refused == status.refused

    # Under break-glass (audited, uploaded before the push), a new note reaches the record.
    session.break_glass(left.id, "transfer", "Handover note for the new prison.", NURSE[1])
    note(session, left.id, "Handover under break-glass.")
    granted = run_sync(session)
    assert granted.ok and (granted.pushed, granted.push_errors) == (2, 2)
    handover = live.store.search(
        SearchQuery("DocumentReference", OTHER_SITE, 50, patient_id=left.id)
    )
    assert [b"Handover under break-glass" in _text(r.body) for r in handover].count(True) == 1
    assert session.status().refused == status.refused  # the note written after leaving
    session.lock()


def _text(body: bytes) -> bytes:
    attachment = orjson.loads(body)["content"][0]["attachment"]
    return base64.b64decode(attachment.get("data", ""))


def test_refusal_words() -> None:
    assert site_display(SITE) == "HMP Brixton" and site_display("north-unit") == "North Unit"
    sentence, todo = describe("SMITH, John", 2, "http_422", SITE)
    assert sentence == (
        "The gateway refused 2 notes for SMITH, John: the gateway did not accept it (http_422)."
    )
    assert "tried again at each sync" in todo and "call IT" in todo
