"""Issue 14: what second readings of the filing and the import found, each against a real
Medplum, each test failing without its fix.

Notes out:
- A note created and edited before one pass goes up as a create, then its edit: the health
  record ends with the edit, one copy.
- A laptop edit queued when the import brings the board's edit of the same filed note was made
  on the version before it: a conflict the clinician sees, never sent up over the board's.
- Without conditional create, a lost reply to a plain POST is not sent again blind: the next
  attempt's search finds the copy.
- A note naming a record deleted upstream, or one no laptop wrote, is held with that reason; a
  note naming one queued after it (a laptop Bundle in any order) waits without blocking.
- The upstream refusing the gateway's credentials fails the pass and holds no note.

A filed note in step with the health record:
- The gateway's own edit read back (its replies lost) is no conflict and is never written over
  a later queued edit.
- A board edit the validator refuses never deletes the note; the board deleting it does; it
  follows its patient to another linked site, and its queued edit is no conflict then.
- A note on a patient a laptop registered is never taken for deleted; a note filed before
  notes were tracked is tracked after one reconciliation.
- A record moved to a patient of no linked site leaves at the next pass; a laptop can never
  delete a Patient.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.gateway.api.outcome import FhirError
from sync.gateway.store.loader import load_resources
from sync.gateway.upstream import passes
from sync.gateway.upstream.capabilities import UpstreamCapabilities, fetch_capabilities
from sync.gateway.upstream.connection import UpstreamConnection
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.passes import run_pass
from sync.protocol.fhir.filing import CONFLICT, filing_tag
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM
from tests.support.gateway import SITE_A, SITE_B, create_entry, make_store, observation, patient
from tests.support.medplum_server import MedplumServer
from tests.support.upstream import configure_with_certificate, gateway_data
from tests.support.upstream_notes import (
    RUNS,
    board_edits,
    edit_observation,
    filed_note,
    link_patients,
    linked_through_relay,
    push_bundle,
    push_new,
    push_new_observation,
    upstream_copies,
    utc_now,
    valued,
)

LATER = dt.timedelta(hours=2)  # past any backoff


def _value(resource: dict[str, Any] | None) -> float:
    assert resource is not None
    return float(resource["valueQuantity"]["value"])


def test_a_note_created_and_edited_before_one_pass_goes_up_as_the_edit_once(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store = linked.data, linked.store
        cid = push_new_observation(store, linked.pid, 60.0)
        [created] = store.outbox(("pending",))
        edit_observation(store, created.rid, 61.0)  # corrected before the gateway filed it
        counts = run_pass(data, store).counts
        assert counts["outbox_filed"] == 2
        assert upstream_copies(medplum, {cid}) == Counter({cid: 1})
        filed = store.filed("Observation", created.rid)
        assert filed is not None
        assert _value(medplum.read("Observation", filed.upstream_id)) == 61.0
        assert (
            filed.upstream_version
            == medplum.read("Observation", filed.upstream_id)["meta"]["versionId"]
        )  # type: ignore[index]
        assert store.outbox(("pending", "held", "conflict")) == []


def test_a_laptop_edit_queued_when_the_board_edit_arrives_is_a_conflict_never_sent_over_it(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """The laptop edit could not be filed before the import (a backoff); the import brings the
    board's edit of the same filed note. Nothing is overwritten upstream, the laptop's edit is
    a conflict, and the gateway's version (the board's) names it for the clinician."""
    n = next(RUNS)
    store = make_store(tmp_path)  # PostgreSQL too: the conflict is decided under its site lock
    try:
        data = gateway_data(tmp_path / "d")
        configure_with_certificate(data, medplum.pki, medplum.base)
        pid = f"n{n}-p"
        link_patients(store, medplum, n, pid)
        run_pass(data, store)
        note, filed = filed_note(data, store, pid, 50.0)
        board_edits(medplum, filed, valued(51.0))
        edit_observation(store, note.rid, 52.0)  # a laptop edits what it saw (50)
        [mine] = store.outbox(("pending",))
        now = utc_now()
        store.outbox_retry_later(mine.seq, 1, now + dt.timedelta(minutes=5), "upstream_http_503")
        counts = run_pass(data, store, now=now, reconcile=False).counts
        assert counts["conflict_queued_edit"] == 1
        assert [(c.seq, c.reason) for c in store.outbox(("conflict",))] == [
            (mine.seq, "upstream_conflict")
        ]
        run_pass(data, store, now=now + LATER, reconcile=False)
        assert _value(medplum.read("Observation", filed.upstream_id)) == 51.0  # never overwritten
        current = store.read("Observation", note.rid)
        assert current is not None
        body = orjson.loads(current.body)
        assert _value(body) == 51.0
        tag = filing_tag(body)
        assert tag is not None and (tag.code, tag.version) == (CONFLICT, str(mine.version_id))
        # The clinician keeps theirs, edited on the board's version: filed over 51, no conflict.
        edit_observation(store, note.rid, 53.0)
        assert (
            run_pass(data, store, now=now + 2 * LATER, reconcile=False).counts["outbox_filed"] == 1
        )
        assert _value(medplum.read("Observation", filed.upstream_id)) == 53.0
    finally:
        store.close()


def _without_conditional_create(connection: UpstreamConnection) -> UpstreamCapabilities:
    """Medplum's capabilities less conditional create and transactions (a plainer server)."""
    found = fetch_capabilities(connection)
    profile = found.profile
    types = {
        name: dataclasses.replace(kind, conditional_create=False)
        for name, kind in profile.types.items()
    }
    plainer = dataclasses.replace(profile, transaction=False, types=types)
    return dataclasses.replace(found, profile=plainer)


def test_without_conditional_create_a_lost_reply_is_never_sent_again_blind(
    tmp_path: Path, medplum: MedplumServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passes, "fetch_capabilities", _without_conditional_create)
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, relay = linked.data, linked.store, linked.relay
        cid = push_new_observation(store, linked.pid, 60.0)
        relay.drop = {"POST": 1}  # the upstream creates it; the reply is lost
        now = utc_now()
        first = run_pass(data, store, now=now, reconcile=False).counts
        assert relay.dropped == ["POST /fhir/R4/Observation"]
        assert first["outbox_retry_later"] == 1 and "outbox_filed" not in first
        second = run_pass(data, store, now=now + LATER, reconcile=False).counts
        assert second["outbox_filed"] == 1
        assert upstream_copies(medplum, {cid}) == Counter({cid: 1})
        assert [f for f in relay.forwarded if f.startswith("POST")] == [
            "POST /fhir/R4/Observation 201"
        ]


def _encounter(pid: str) -> dict[str, Any]:
    return create_entry(
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"},
        }
    )


def _naming(pid: str, encounter: str, value: float) -> dict[str, Any]:
    entry = create_entry(observation("o", pid, value))
    entry["resource"].pop("id")
    entry["resource"]["encounter"] = {"reference": encounter}
    return entry


def _client_id(entry: dict[str, Any]) -> str:
    return str(entry["request"]["ifNoneExist"].split("|")[1])


def test_a_note_naming_a_record_deleted_upstream_is_held_and_blocks_no_other(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, pid = linked.data, linked.store, linked.pid
        eid = f"enc-{pid}"
        medplum.put(
            {
                "resourceType": "Encounter",
                "id": eid,
                "status": "finished",
                "class": {"code": "AMB"},
                "subject": {"reference": f"Patient/{pid}"},
            }
        )
        run_pass(data, store, reconcile=True)
        assert store.imported_one("Encounter", eid) is not None
        medplum.delete("Encounter", eid)
        run_pass(data, store, reconcile=True)  # the import deletes it here too
        gone = store.read("Encounter", eid)
        assert gone is not None and gone.deleted
        orphan = _naming(pid, f"Encounter/{eid}", 70.0)  # written offline, before it was gone
        push_bundle(store, [orphan])
        later = push_new_observation(store, pid, 75.0)
        counts = run_pass(data, store, reconcile=False).counts
        assert counts["outbox_held"] == 1 and counts["outbox_filed"] == 1
        [held] = store.outbox(("held",))
        assert (held.reason, held.detail) == ("refers_to_deleted", f"Encounter/{eid}")
        assert upstream_copies(medplum, {later, _client_id(orphan)}) == Counter(
            {later: 1, _client_id(orphan): 0}
        )


def test_a_note_naming_a_record_queued_after_it_waits_then_both_go_up_in_one_pass(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """A laptop Bundle whose Observation comes before the Encounter it names."""
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, pid = linked.data, linked.store, linked.pid
        encounter = _encounter(pid)
        naming = _naming(pid, encounter["fullUrl"], 71.0)
        push_bundle(store, [naming, encounter])
        queued = [(i.rtype, i.seq) for i in store.outbox(("pending",))]
        assert [rtype for rtype, _ in sorted(queued, key=lambda q: q[1])] == [
            "Observation",
            "Encounter",
        ]  # the note is queued first
        counts = run_pass(data, store, reconcile=False).counts
        assert counts["outbox_filed"] == 2 and "outbox_waiting_for_reference" not in counts
        [upstream] = medplum.search_all(
            "Observation", identifier=f"{CLIENT_ID_SYSTEM}|{_client_id(naming)}"
        )
        enc = next(i for i in store.outbox(("filed",)) if i.rtype == "Encounter")
        enc_up = store.filed("Encounter", enc.rid)
        assert enc_up is not None
        assert upstream["encounter"]["reference"] == f"Encounter/{enc_up.upstream_id}"


def test_the_upstream_refusing_the_gateways_credentials_fails_the_pass_and_holds_no_note(
    tmp_path: Path, medplum: MedplumServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store = linked.data, linked.store
        cids = push_new(store, linked.pid, [60.0, 61.0, 62.0])
        run_pass(data, store, reconcile=False)
        for row in store.outbox(("filed",)):
            edit_observation(store, row.rid, 70.0)  # three edits queued
        real = UpstreamConnection.request

        def refused(self: UpstreamConnection, method: str, path: str, **kw: Any) -> Any:
            if method != "GET":  # what the token source raises when renewal is refused
                raise UpstreamError("token_refused", "invalid_client")
            return real(self, method, path, **kw)

        monkeypatch.setattr(UpstreamConnection, "request", refused)
        with pytest.raises(UpstreamError) as failed:
            run_pass(data, store, reconcile=False)
        assert failed.value.reason == "token_refused"
        assert len(store.outbox(("pending",))) == 3 and store.outbox(("held",)) == []
        monkeypatch.setattr(UpstreamConnection, "request", real)
        assert run_pass(data, store, reconcile=False).counts["outbox_filed"] == 3
        assert upstream_copies(medplum, set(cids)) == Counter({cid: 1 for cid in cids})
        for row in store.outbox(("filed",))[-3:]:
            filed = store.filed("Observation", row.rid)
            assert filed is not None
            assert _value(medplum.read("Observation", filed.upstream_id)) == 70.0


def test_a_401_with_a_fresh_token_is_the_gateways_credentials_not_the_note(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, relay = linked.data, linked.store, linked.relay
        [cid] = push_new(store, linked.pid, [60.0])
        relay.status = {"POST": 401}
        with pytest.raises(UpstreamError) as failed:
            run_pass(data, store, reconcile=False)
        assert failed.value.reason == "upstream_unauthorised"
        assert len(store.outbox(("pending",))) == 1 and store.outbox(("held",)) == []
        relay.status = {}
        assert run_pass(data, store, reconcile=False).counts["outbox_filed"] == 1
        assert upstream_copies(medplum, {cid}) == Counter({cid: 1})


def test_a_note_naming_a_gateway_record_the_upstream_never_received_is_held(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """A record written at the gateway by no laptop (seeded before the upstream was set) is
    never queued: a note naming it is held for IT, not left waiting for ever."""
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, pid = linked.data, linked.store, linked.pid
        seeded = {
            "resourceType": "Encounter",
            "id": f"seeded-{pid}",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"},
        }
        load_resources(store, [seeded])
        push_bundle(store, [_naming(pid, f"Encounter/seeded-{pid}", 72.0)])
        assert run_pass(data, store, reconcile=False).counts["outbox_held"] == 1
        [held] = store.outbox(("held",))
        assert (held.reason, held.detail) == ("refers_to_unfiled", f"Encounter/seeded-{pid}")


def test_the_gateways_own_edit_seen_back_before_its_row_closed_is_no_conflict(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """The upstream took a laptop's edit but every reply was lost, so its row is still queued
    when the import reads that version back: the same content, the gateway's own edit, not
    the board's. No conflict is raised, and the next pass closes the row as filed."""
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, relay = linked.data, linked.store, linked.relay
        push_new(store, linked.pid, [60.0])
        run_pass(data, store, reconcile=False)
        [note] = store.outbox(("filed",))
        edit_observation(store, note.rid, 99.0)
        before = store.filed("Observation", note.rid)
        assert before is not None
        relay.drop = {"PUT": 3}  # the upstream applies the PUT; the connection's 3 tries lost
        now = utc_now()
        counts = run_pass(data, store, now=now, reconcile=False).counts
        assert relay.dropped == [f"PUT /fhir/R4/Observation/{before.upstream_id}"] * 3
        assert counts["outbox_retry_later"] == 1 and "conflict_queued_edit" not in counts
        assert store.outbox(("conflict",)) == []
        relay.drop = {}
        assert run_pass(data, store, now=now + LATER, reconcile=False).counts["outbox_filed"] == 1
        filed = store.filed("Observation", note.rid)
        assert filed is not None
        assert _value(medplum.read("Observation", filed.upstream_id)) == 99.0
        current = store.read("Observation", note.rid)
        assert current is not None
        tag = filing_tag(orjson.loads(current.body))
        assert tag is not None and tag.code == "filed"


def test_two_queued_edits_the_first_applied_with_its_replies_lost_end_as_the_latest(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """The import reads back the first edit (the gateway's own) while both are queued: it is
    not written over the clinician's latest, and the health record ends with the latest."""
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, relay = linked.data, linked.store, linked.relay
        push_new(store, linked.pid, [60.0])
        run_pass(data, store, reconcile=False)
        [note] = store.outbox(("filed",))
        edit_observation(store, note.rid, 99.0)
        edit_observation(store, note.rid, 77.0)  # the clinician's latest
        relay.drop = {"PUT": 3}
        now = utc_now()
        counts = run_pass(data, store, now=now, reconcile=False).counts
        assert counts["own_edit_seen"] == 1
        current = store.read("Observation", note.rid)
        assert current is not None and _value(orjson.loads(current.body)) == 77.0
        relay.drop = {}
        run_pass(data, store, now=now + LATER, reconcile=False)
        run_pass(data, store, now=now + 2 * LATER, reconcile=False)
        filed = store.filed("Observation", note.rid)
        assert filed is not None
        assert _value(medplum.read("Observation", filed.upstream_id)) == 77.0
        current = store.read("Observation", note.rid)
        assert current is not None
        body = orjson.loads(current.body)
        assert _value(body) == 77.0
        tag = filing_tag(body)
        assert tag is not None and tag.code == "filed"
        assert store.outbox(("pending", "held", "conflict")) == []


def test_a_board_edit_failing_validation_never_deletes_the_filed_note(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store = linked.data, linked.store
        note, filed = filed_note(data, store, linked.pid, 60.0)
        board_edits(medplum, filed, valued(61.0))  # a board edit the gateway takes
        now = utc_now()
        run_pass(data, store, now=now, reconcile=False)

        def too_long(resource: dict[str, Any]) -> None:
            resource["code"]["text"] = "x" * 2500

        board_edits(medplum, filed, too_long)  # then one its validator refuses (quarantined)
        counts = run_pass(data, store, now=now + LATER, reconcile=True).counts
        assert counts["quarantined"] == 1 and "deleted" not in counts
        current = store.read("Observation", note.rid)
        assert current is not None and not current.deleted
        assert _value(orjson.loads(current.body)) == 61.0  # the last version it could take


def test_a_filed_note_the_board_deletes_is_deleted_here(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store = linked.data, linked.store
        note, filed = filed_note(data, store, linked.pid, 60.0)
        medplum.delete("Observation", filed.upstream_id)
        counts = run_pass(data, store, now=utc_now() + LATER, reconcile=True).counts
        assert counts["deleted"] == 1
        gone = store.read("Observation", note.rid)
        assert gone is not None and gone.deleted


@pytest.mark.parametrize("passes_between", [0, 1], ids=["moved", "released-then-admitted"])
def test_a_filed_note_follows_its_patient_to_another_linked_site(
    tmp_path: Path, medplum: MedplumServer, passes_between: int
) -> None:
    """Moved in one pass (a transfer), or released (the note leaves with the patient) and
    admitted elsewhere a pass later (the note comes back, at the new site)."""
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, pid = linked.data, linked.store, linked.pid
        push_new(store, pid, [60.0])
        run_pass(data, store, reconcile=False)
        [note] = store.outbox(("filed",))
        [link_a] = store.site_links()
        now = utc_now()
        store.add_site(SITE_B, SITE_B, now)
        medplum.put(patient(f"{pid}-stays", "x"))
        medplum.put(  # released from A (where another stays), admitted to B
            {"resourceType": "Group", "id": link_a.ref, "type": "person", "actual": True}
            | {"member": [{"entity": {"reference": f"Patient/{pid}-stays"}}]}
        )
        if passes_between:
            run_pass(data, store, now=now, reconcile=True)
            released = store.read("Observation", note.rid)
            assert released is not None and released.deleted  # left with the patient
        medplum.put(
            {"resourceType": "Group", "id": f"{link_a.ref}-b", "type": "person", "actual": True}
            | {"member": [{"entity": {"reference": f"Patient/{pid}"}}]}
        )
        store.link_site(SITE_B, "group", f"{link_a.ref}-b", now)
        run_pass(data, store, now=now + LATER, reconcile=True)
        moved = store.read("Observation", note.rid)
        assert moved is not None and not moved.deleted and moved.site == SITE_B


def test_a_record_moved_upstream_to_a_patient_of_no_linked_site_leaves_at_the_next_pass(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, pid = linked.data, linked.store, linked.pid
        oid = f"{pid}-moved"
        medplum.put(observation(oid, pid, 70.0))
        run_pass(data, store, reconcile=False)
        here = store.read("Observation", oid)
        assert here is not None and not here.deleted
        medplum.put({"resourceType": "Patient", "id": f"{pid}-elsewhere"})
        medplum.put(observation(oid, f"{pid}-elsewhere", 70.0))  # filed against another patient
        counts = run_pass(data, store, now=utc_now() + LATER, reconcile=False).counts
        assert counts["moved_away"] == 1
        gone = store.read("Observation", oid)
        assert gone is not None and gone.deleted


def test_a_laptop_can_never_delete_a_patient(tmp_path: Path, medplum: MedplumServer) -> None:
    """Registration is the health board's: a device's DELETE of a Patient is refused (it would
    leave the patient's next imported record without its patient)."""
    with linked_through_relay(tmp_path, medplum) as linked:
        with pytest.raises(FhirError) as refused:
            push_bundle(
                linked.store, [{"request": {"method": "DELETE", "url": f"Patient/{linked.pid}"}}]
            )
        assert (refused.value.status, refused.value.reason) == (403, "patient_delete_refused")
        patient = linked.store.read("Patient", linked.pid)
        assert patient is not None and not patient.deleted


def test_a_note_on_a_patient_a_laptop_registered_is_filed_and_never_taken_for_deleted(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """The laptop's Patient is held for IT (never filed); the note on it is filed, but the
    import does not hold that patient, so it must not count the note as gone."""
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store = linked.data, linked.store
        registered = create_entry(patient("registered", SITE_A))
        registered["resource"].pop("id")
        note = create_entry(observation("o", "registered", 64.0))
        note["resource"].pop("id")
        note["resource"]["subject"] = {"reference": registered["fullUrl"]}
        push_bundle(store, [registered, note])
        first = run_pass(data, store, reconcile=True).counts
        assert first["outbox_held"] == 1 and first["outbox_filed"] == 1
        assert upstream_copies(medplum, {_client_id(note)}) == Counter({_client_id(note): 1})
        later = run_pass(data, store, now=utc_now() + LATER, reconcile=True).counts
        assert "deleted" not in later and "moved_away" not in later
        [filed] = store.outbox(("filed",))
        here = store.read("Observation", filed.rid)
        assert here is not None and not here.deleted


def test_a_queued_edit_of_a_filed_note_whose_patient_moves_site_is_no_conflict(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """The import reads the filed version again at the patient's new site: not an edit by
    the board, so the clinician's queued edit is no conflict and goes up."""
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, pid = linked.data, linked.store, linked.pid
        note, filed = filed_note(data, store, pid, 60.0)
        edit_observation(store, note.rid, 65.0)
        [queued] = store.outbox(("pending",))
        now = utc_now()
        store.outbox_retry_later(queued.seq, 1, now + dt.timedelta(minutes=5), "upstream_http_503")
        [link_a] = store.site_links()
        store.add_site(SITE_B, SITE_B, now)
        medplum.put(patient(f"{pid}-stays", "x"))
        medplum.put(
            {"resourceType": "Group", "id": link_a.ref, "type": "person", "actual": True}
            | {"member": [{"entity": {"reference": f"Patient/{pid}-stays"}}]}
        )
        medplum.put(
            {"resourceType": "Group", "id": f"{link_a.ref}-b", "type": "person", "actual": True}
            | {"member": [{"entity": {"reference": f"Patient/{pid}"}}]}
        )
        store.link_site(SITE_B, "group", f"{link_a.ref}-b", now)
        counts = run_pass(data, store, now=now, reconcile=True).counts
        assert "conflict_queued_edit" not in counts and store.outbox(("conflict",)) == []
        moved = store.read("Observation", note.rid)
        assert moved is not None and moved.site == SITE_B
        assert _value(orjson.loads(moved.body)) == 65.0  # the clinician's edit, not overwritten
        assert run_pass(data, store, now=now + LATER, reconcile=False).counts["outbox_filed"] == 1
        assert _value(medplum.read("Observation", filed.upstream_id)) == 65.0


def test_a_note_filed_before_notes_were_tracked_is_tracked_after_one_reconciliation(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """A gateway upgraded with notes filed earlier (no import row): the next reconciliation
    records them, writing no new version, and from then on the board deleting one reaches
    the laptops."""
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store = linked.data, linked.store
        note, filed = filed_note(data, store, linked.pid, 60.0)
        with store.write():
            store.forget_import_in_tx("Observation", note.rid)  # as filed before the change
        before = store.read("Observation", note.rid)
        assert before is not None and store.imported_one("Observation", note.rid) is None
        now = utc_now()
        run_pass(data, store, now=now + LATER, reconcile=True)
        after = store.read("Observation", note.rid)
        assert after is not None and after.version_id == before.version_id  # nothing rewritten
        assert store.imported_one("Observation", note.rid) is not None
        medplum.delete("Observation", filed.upstream_id)
        run_pass(data, store, now=now + 2 * LATER, reconcile=True)
        gone = store.read("Observation", note.rid)
        assert gone is not None and gone.deleted
