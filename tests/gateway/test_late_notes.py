"""Issue 12 item 3 on the real gateway over real TLS: a note written at site A while the patient
was there is filed in their record after a transfer to site B, and site B sees it; a note
written after the patient left is refused with a reason the device can show."""

from __future__ import annotations

import base64
import datetime as dt
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from sync.gateway.late_notes import admit, clinical_moment
from sync.gateway.store.base import BreakGlassUse, SiteStay
from sync.protocol.fhir.vocabulary import USER_SYSTEM
from tests.support.control import T0, break_glass, chain, enrol, upload
from tests.support.gateway import SITE_A, SITE_B, Gateway, make_store, patient

LOINC = "http://loinc.org"


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _consultation(pid: str, when: dt.datetime, author: str = "nurse1") -> list[dict[str, Any]]:
    """The Bundle entries a laptop pushes for one consultation (Encounter + note), as
    ``client.core.consultation`` writes them: client ids, urn references, ifNoneExist."""
    stamp = _stamp(when)
    enc_id, doc_id = str(uuid.uuid4()), str(uuid.uuid4())
    who = {"identifier": {"system": USER_SYSTEM, "value": author}, "display": author}
    client = "https://gatehouse.example/fhir/client-id"

    def ident(cid: str) -> list[dict[str, str]]:
        return [{"system": client, "value": cid}]

    encounter = {
        "resourceType": "Encounter",
        "identifier": ident(enc_id),
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "participant": [{"individual": who}],
        "period": {"start": stamp, "end": stamp},
    }
    text = base64.b64encode(b"Note:\nFollow-up\n\nPlan:\nReview\n").decode()
    note = {
        "resourceType": "DocumentReference",
        "identifier": ident(doc_id),
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "date": stamp,
        "author": [who],
        "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": text}}],
        "context": {
            "encounter": [{"reference": f"urn:uuid:{enc_id}"}],
            "period": {"start": stamp, "end": stamp},
        },
    }
    return [
        {
            "fullUrl": f"urn:uuid:{cid}",
            "resource": resource,
            "request": {
                "method": "POST",
                "url": resource["resourceType"],
                "ifNoneExist": f"identifier={client}|{cid}",
            },
        }
        for cid, resource in ((enc_id, encounter), (doc_id, note))
    ]


def _reason(answer: requests.Response) -> tuple[str, str | None]:
    issue = answer.json()["issue"][0]
    return issue["details"]["text"], issue.get("diagnostics")


def _transfer(gateway: Gateway, pid: str) -> None:
    time.sleep(0.002)  # the note's time lies strictly inside the stay
    gateway.load(patient(pid, SITE_B, family="Mover"))


def test_note_written_during_the_stay_is_filed_and_the_new_site_sees_it(
    gateway: Gateway,
) -> None:
    gateway.load(patient("pt", SITE_A, family="Mover"))
    time.sleep(0.002)
    written = dt.datetime.now(dt.UTC)  # offline, at site A, before the transfer
    entries = _consultation("pt", written)
    _transfer(gateway, "pt")
    b = gateway.b
    head_b = b.get(f"{gateway.fhir}/_history", timeout=30).json()
    resume_b = next(ln["url"] for ln in head_b["link"] if ln["relation"] == "x-resume")

    answer = gateway.post_bundle(gateway.a, entries)
    assert answer.status_code == 200, answer.text
    replies = answer.json()["entry"]
    assert [e["response"]["status"] for e in replies] == ["201 Created", "201 Created"]
    doc_id = replies[1]["resource"]["id"]
    encounter_ref = replies[1]["resource"]["context"]["encounter"][0]["reference"]
    assert encounter_ref == f"Encounter/{replies[0]['resource']['id']}"

    # Filed in the patient's record at their new site: B's feed and search show it; A's not.
    news = b.get(resume_b, timeout=30).json()["entry"]
    assert ("DocumentReference", doc_id) in {
        (e["resource"]["resourceType"], e["resource"]["id"]) for e in news if "resource" in e
    }
    assert b.get(f"{gateway.fhir}/DocumentReference/{doc_id}", timeout=30).status_code == 200
    assert gateway.a.get(f"{gateway.fhir}/DocumentReference/{doc_id}", timeout=30).status_code == (
        404
    )

    # A lost reply, sent again: the same resources, never a second copy (CR-2).
    again = gateway.post_bundle(gateway.a, entries)
    assert again.status_code == 200, again.text
    assert [e["resource"]["id"] for e in again.json()["entry"]] == [
        e["resource"]["id"] for e in replies
    ]
    notes = b.get(f"{gateway.fhir}/DocumentReference?patient=pt", timeout=30).json()
    assert [e["resource"]["id"] for e in notes["entry"]] == [doc_id]


def test_note_written_after_the_patient_left_is_refused_with_the_reason(
    gateway: Gateway,
) -> None:
    gateway.load(patient("pt", SITE_A, family="Mover"))
    _transfer(gateway, "pt")
    left = gateway.store.read("Patient", "pt")
    assert left is not None
    head = gateway.store.head_seq()

    answer = gateway.post_bundle(gateway.a, _consultation("pt", dt.datetime.now(dt.UTC)))
    assert answer.status_code == 403, answer.text
    reason, diagnostics = _reason(answer)
    assert reason == "patient_left_site"
    assert diagnostics == f"left_at={_stamp(left.last_updated)}"
    assert "Mover" not in answer.text and SITE_B not in answer.text
    assert gateway.store.head_seq() == head  # nothing stored

    # A patient who was never at A: the same answer as no patient at all (nothing leaks).
    gateway.load(patient("other", SITE_B))
    never = gateway.post_bundle(gateway.a, _consultation("other", dt.datetime.now(dt.UTC)))
    assert never.status_code == 404
    assert _reason(never)[0] == "unknown_patient"
    nobody = gateway.post_bundle(gateway.a, _consultation("nobody", dt.datetime.now(dt.UTC)))
    assert (nobody.status_code, _reason(nobody)[0]) == (404, "unknown_patient")


def test_note_under_a_break_glass_grant_is_filed(gateway: Gateway, tmp_path: Path) -> None:
    laptop = enrol(gateway, SITE_A, tmp_path / "laptop")
    gateway.load(patient("pv", SITE_B, family="Visitor"))  # never at site A
    grant = break_glass("nurse1", "pv", "Arriving from another prison")
    expires = T0 + dt.timedelta(minutes=30)
    grant["detail"] = {"reason_code": "transfer", "expires_at": expires.isoformat()}
    entries, _ = chain(laptop.device_id, laptop.k0, [grant])  # the grant at T0
    session = gateway.session(laptop.creds)
    assert upload(gateway, session, entries).status_code == 200

    inside = gateway.post_bundle(session, _consultation("pv", T0 + dt.timedelta(minutes=20)))
    assert inside.status_code == 200, inside.text
    for late in (T0 + dt.timedelta(minutes=31), T0 - dt.timedelta(minutes=1)):
        refused = gateway.post_bundle(session, _consultation("pv", late))
        assert (refused.status_code, _reason(refused)[0]) == (404, "unknown_patient")
    # The grant is the device's user's: another clinician's note is not covered by it.
    other = gateway.post_bundle(
        session, _consultation("pv", T0 + dt.timedelta(minutes=5), author="doctor2")
    )
    assert other.status_code == 404
    # Another device of site A holds no grant.
    assert gateway.post_bundle(gateway.a, _consultation("pv", T0)).status_code == 404


def test_site_stays_follow_transfers_and_are_backfilled_for_an_older_store(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path)
    try:
        with store.write() as tx:
            tx.put("Patient", "p1", patient("p1", SITE_A))
        with store.write() as tx:
            tx.put("Patient", "p1", patient("p1", SITE_B))
        with store.write() as tx:
            tx.put("Patient", "p1", patient("p1", SITE_B, family="Renamed"))  # no move
            tx.put("Patient", "p2", patient("p2", SITE_A))
        with store.write() as tx:
            tx.delete("Patient", "p2")
        with store.write() as tx:
            stays = tx.site_stays("p1")
            gone = tx.site_stays("p2")
        first, moved = (store.vread("Patient", "p1", v) for v in (1, 2))
        assert first is not None and moved is not None
        assert [s.site for s in stays] == [SITE_A, SITE_B]
        assert stays[0].start == first.last_updated
        assert stays[0].end == stays[1].start == moved.last_updated
        assert stays[1].end is None
        assert len(gone) == 1 and gone[0].end is not None
    finally:
        store.close()
    if not (tmp_path / "gateway.sqlite3").exists():
        return  # PostgreSQL: the backfill below is checked on the SQLite file
    with sqlite3.connect(tmp_path / "gateway.sqlite3") as conn:
        conn.execute("DROP TABLE patient_sites")  # a store from before the table existed
    conn.close()
    reopened = make_store(tmp_path)
    try:
        with reopened.write() as tx:
            assert tx.site_stays("p1") == stays
            assert tx.site_stays("p2") == gone
    finally:
        reopened.close()


# -- the rule itself (pure) ------------------------------------------------------------------

_T = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
_LEFT = _T + dt.timedelta(days=2)
_STAYS = [SiteStay(SITE_A, _T, _LEFT), SiteStay(SITE_B, _LEFT, None)]


def _doc(when: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"resourceType": "DocumentReference"}
    if when is not None:
        doc["date"] = when
    return doc


def test_admission_rule_places_the_note_in_a_stay_or_a_grant() -> None:
    during, after = _stamp(_T + dt.timedelta(days=1)), _stamp(_T + dt.timedelta(days=3))
    assert admit(_doc(during), site=SITE_A, stays=_STAYS, grants=[]).admitted
    refused = admit(_doc(after), site=SITE_A, stays=_STAYS, grants=[])
    assert (refused.reason, refused.left_at) == ("patient_left_site", _T + dt.timedelta(days=2))
    # No time, or a bare date, cannot be placed in a stay.
    for when in (None, "2026-12-02", "not a date"):
        assert admit(_doc(when), site=SITE_A, stays=_STAYS, grants=[]).reason == (
            "patient_left_site"
        )
    assert admit(_doc(during), site="hmp-other", stays=_STAYS, grants=[]).reason == (
        "unknown_patient"
    )
    # A grant longer than any policy allows is cut to MAX_GRANT (240 minutes).
    forged = BreakGlassUse("nurse1", _T + dt.timedelta(days=3), _T + dt.timedelta(days=30))
    late = _stamp(_T + dt.timedelta(days=3, hours=5))
    assert not admit(_doc(late), site=SITE_A, stays=_STAYS, grants=[forged]).admitted
    assert admit(_doc(after), site=SITE_A, stays=_STAYS, grants=[forged]).admitted
    assert clinical_moment({"resourceType": "Encounter", "period": {"start": during}}) == (
        _T + dt.timedelta(days=1)
    )
