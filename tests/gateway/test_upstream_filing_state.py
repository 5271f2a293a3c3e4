"""Issue 14: the laptop learns, through its normal sync, that a note is filed in the health
record (or held at the gateway). Real laptop vaults, the real gateway over mutual TLS, a real
Medplum upstream; the state is read from the laptop's chart (``client.core.chart``)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from client.core.audit_log import AuditLog
from client.core.chart import TimelineEntry, open_chart
from client.core.conflicts import list_conflicts, resolve_conflict
from client.core.consultation import queue_update
from client.core.records import get
from client.core.vault import Vault
from sync.device.transport import TransportConfig
from sync.gateway.store.base import DatabaseFailure
from sync.gateway.store.sql import SqlStore
from sync.gateway.upstream.passes import run_pass
from sync.protocol.fhir.filing import FILING_SYSTEM, filing_tag
from tests.support.control import enrol_with_entries
from tests.support.gateway import SITE_A, SITE_B, patient, running_gateway
from tests.support.medplum_server import MedplumServer
from tests.support.sync import (
    DeviceVault,
    sync_once,
    transport_config,
    write_consultations,
)
from tests.support.upstream import (
    configure_with_certificate,
    gateway_cli,
    gateway_data,
    running_relay,
)

_run = itertools.count()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _link(store: SqlStore, medplum: MedplumServer, n: int, pid: str) -> None:
    medplum.put(patient(pid, "x"))
    medplum.put(
        {
            "resourceType": "Group",
            "id": f"f{n}-group",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{pid}"}}],
        }
    )
    store.add_site(SITE_A, SITE_A, _now())
    store.link_site(SITE_A, "group", f"f{n}-group", _now())


def _timeline(vault: Vault, pid: str) -> dict[str, TimelineEntry]:
    chart = open_chart(vault.connection, pid, today=dt.date.today(), site_scope=(SITE_A,))
    return {entry.id: entry for entry in chart.timeline}


def _states(vault: Vault, pid: str) -> Counter[str]:
    return Counter(e.filing.kind for e in _timeline(vault, pid).values() if e.filing is not None)


def _laptop(gw: Any, tmp_path: Path, n: int) -> tuple[Vault, TransportConfig]:
    device = DeviceVault.create(tmp_path / f"laptop{n}.db", f"dev-f{n}")
    creds = gw.pki.device(f"dev-f{n}", SITE_A)
    gw.store.set_device(f"dev-f{n}", SITE_A, "active")
    return device.open(), transport_config(gw.url, gw.pki.server_pin, creds)


def _note_id(vault: Vault, pid: str) -> str:
    notes = [e for e in _timeline(vault, pid).values() if e.kind == "note"]
    assert len(notes) == 1
    return notes[0].id


def _consultation_written(
    gw: Any, tmp_path: Path, medplum: MedplumServer, n: int, base: str | None = None
) -> tuple[Vault, TransportConfig, Path, str]:
    """A patient linked by Group and imported, and a laptop that synced and wrote a
    consultation for them, not yet pushed; the gateway's upstream is at ``base`` (None:
    Medplum itself). Returns (vault, config, gateway data folder, patient id)."""
    store: SqlStore = gw.store
    data = gateway_data(tmp_path)
    configure_with_certificate(data, medplum.pki, base or medplum.base)
    pid = f"f{n}-p"
    _link(store, medplum, n, pid)
    run_pass(data, store)
    vault, config = _laptop(gw, tmp_path, n)
    assert sync_once(vault, config, site=SITE_A).ok
    write_consultations(vault, [pid], 1, f"f{n}", site=SITE_A)
    return vault, config, data, pid


def _consultation_filed(
    gw: Any, tmp_path: Path, medplum: MedplumServer, n: int
) -> tuple[Vault, TransportConfig, Path, str]:
    """``_consultation_written``, pushed, and one upstream pass that filed it."""
    vault, config, data, pid = _consultation_written(gw, tmp_path, medplum, n)
    assert sync_once(vault, config, site=SITE_A).ok
    assert run_pass(data, gw.store).counts["outbox_filed"] == 3
    return vault, config, data, pid


def test_a_laptop_note_shows_filed_in_the_health_record_after_the_next_sync(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    n = next(_run)
    with running_gateway(tmp_path / "gw") as gw:
        store: SqlStore = gw.store
        vault, config, data, pid = _consultation_written(gw, tmp_path, medplum, n)
        assert _states(vault, pid) == Counter(laptop=2)  # the encounter and its note
        entry = _timeline(vault, pid)[_note_id(vault, pid)]
        assert entry.filing is not None
        assert entry.filing.words == "Saved on this laptop (not yet sent)"
        assert sync_once(vault, config, site=SITE_A).ok
        assert _states(vault, pid) == Counter(gateway=2)
        counts = run_pass(data, store).counts
        assert counts["outbox_filed"] == 3 and counts["outbox_stamped"] == 3
        result = sync_once(vault, config, site=SITE_A)
        assert result.ok and result.conflicts == 0
        assert _states(vault, pid) == Counter(filed=2)
        note = _timeline(vault, pid)[_note_id(vault, pid)]
        assert note.filing is not None and note.filing.since is not None
        assert note.filing.words.startswith("Filed in the health record on ")
        # The stamp is the gateway's: the upstream never sees it, its echo is not a change,
        # and nothing more reaches the laptop.
        for upstream in medplum.search_all("DocumentReference", subject=f"Patient/{pid}"):
            assert filing_tag(upstream) is None
        again = run_pass(data, store).counts
        assert again.get("outbox_filed", 0) == 0 and again.get("written", 0) == 0
        assert again.get("outbox_stamped", 0) == 0
        assert sync_once(vault, config, site=SITE_A).pulled == 0


def test_an_edit_of_a_filed_note_is_no_conflict_and_is_filed_again(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """The laptop edits the note on the version it pushed, before it ever saw the stamp (ifMatch
    on the stamped version: no one else edited it), and again after it saw the next stamp."""
    n = next(_run)
    with running_gateway(tmp_path / "gw") as gw:
        store: SqlStore = gw.store
        # filed and stamped: the laptop still holds the unstamped version
        vault, config, data, pid = _consultation_filed(gw, tmp_path, medplum, n)
        nid = _note_id(vault, pid)
        for round_ in range(2):
            stored = get(vault.connection, "DocumentReference", nid)
            assert stored is not None
            edited = dict(stored) | {"description": f"Edited {round_}"}
            with vault.transaction() as conn:
                queue_update(conn, edited, now=_now())
            assert _timeline(vault, pid)[nid].filing.kind == "laptop"  # type: ignore[union-attr]
            local = get(vault.connection, "DocumentReference", nid)
            assert local is not None and filing_tag(local) is None  # never looks filed
            result = sync_once(vault, config, site=SITE_A)
            assert result.ok and result.conflicts == 0 and result.pushed == 1
            current = store.read("DocumentReference", nid)
            assert current is not None and filing_tag(orjson.loads(current.body)) is None
            assert _timeline(vault, pid)[nid].filing.kind == "gateway"  # type: ignore[union-attr]
            assert run_pass(data, store).counts["outbox_filed"] == 1
            assert sync_once(vault, config, site=SITE_A).ok
            assert _timeline(vault, pid)[nid].filing.kind == "filed"  # type: ignore[union-attr]
        filed = store.filed("DocumentReference", nid)
        assert filed is not None
        upstream = medplum.read("DocumentReference", filed.upstream_id)
        assert upstream is not None and upstream["description"] == "Edited 1"


def test_a_held_note_shows_held_with_the_reason_then_filed_after_retry(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    n = next(_run)
    with (
        running_gateway(tmp_path / "gw") as gw,
        running_relay(medplum.pki, medplum.base, medplum.session()) as relay,
    ):
        store: SqlStore = gw.store
        vault, config, data, pid = _consultation_written(gw, tmp_path, medplum, n, relay.base)
        assert sync_once(vault, config, site=SITE_A).ok
        relay.refuse = {"POST": "Encounter.class is not in the board's value set"}
        assert run_pass(data, store).counts["outbox_held"] >= 1
        assert sync_once(vault, config, site=SITE_A).ok
        note = _timeline(vault, pid)[_note_id(vault, pid)]
        assert note.filing is not None and note.filing.kind == "held"
        assert note.filing.words in (
            "Held at the gateway: the health record refused it. IT has been told.",
            "Held at the gateway: it belongs with another note that is held. IT has been told.",
        )
        assert "value set" not in note.filing.words  # the upstream's words stay with IT
        relay.refuse = {}
        assert store.outbox_release() >= 1  # IT acted: ``upstream retry --all``
        assert run_pass(data, store).counts["outbox_filed"] == 3
        assert sync_once(vault, config, site=SITE_A).ok
        assert _states(vault, pid) == Counter(filed=2)
        held_tags = [
            t
            for e in _timeline(vault, pid).values()
            for t in (get(vault.connection, "DocumentReference", e.id) or {})
            .get("meta", {})
            .get("tag", [])
            if t.get("system") == FILING_SYSTEM
        ]
        assert [t["code"] for t in held_tags] == ["filed"]


def _conflict_on_laptop(
    gw: Any, tmp_path: Path, medplum: MedplumServer, n: int
) -> tuple[Vault, TransportConfig, Path, str, str]:
    """The board edits a filed note while the laptop's edit of it is on its way up: the
    upstream refuses the edit (412), the health record's version comes down tagged conflict,
    and the laptop that wrote the edit opens a conflict. Returns (vault, config, gateway data
    folder, note id, its upstream id)."""
    store: SqlStore = gw.store
    vault, config, data, pid = _consultation_filed(gw, tmp_path, medplum, n)
    assert sync_once(vault, config, site=SITE_A).ok
    nid = _note_id(vault, pid)
    filed = store.filed("DocumentReference", nid)
    assert filed is not None
    theirs = medplum.read("DocumentReference", filed.upstream_id)
    assert theirs is not None
    medplum.put(theirs | {"description": "Board's edit"})  # at the board
    stored = get(vault.connection, "DocumentReference", nid)
    assert stored is not None
    with vault.transaction() as conn:
        queue_update(conn, dict(stored) | {"description": "Laptop's edit"}, now=_now())
    assert sync_once(vault, config, site=SITE_A).pushed == 1  # the gateway takes it
    counts = run_pass(data, store, reconcile=False).counts
    assert counts["outbox_conflict"] == 1 and counts["conflict_sent_down"] == 1
    result = sync_once(vault, config, site=SITE_A)
    assert result.ok
    open_conflicts = list_conflicts(vault.connection)
    assert len(open_conflicts) == 1
    conflict = open_conflicts[0]
    assert conflict.local_body["description"] == "Laptop's edit"
    assert conflict.server_body is not None
    assert conflict.server_body["description"] == "Board's edit"
    state = _timeline(vault, pid)[nid].filing
    assert state is not None and state.kind == "conflict"
    actions = [e.action for e in AuditLog().entries(vault.connection)]
    assert actions.count("sync_conflict") == 1
    assert sync_once(vault, config, site=SITE_A).ok  # nothing opens twice
    assert len(list_conflicts(vault.connection)) == 1
    return vault, config, data, nid, filed.upstream_id


def test_an_upstream_412_reaches_the_clinician_through_the_conflict_flow(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """... and "keep mine" files the edit, which closes the gateway's conflict row."""
    n = next(_run)
    with running_gateway(tmp_path / "gw") as gw:
        store: SqlStore = gw.store
        vault, config, data, nid, upstream_id = _conflict_on_laptop(gw, tmp_path, medplum, n)
        [conflict] = list_conflicts(vault.connection)
        with vault.transaction() as conn:
            resolve_conflict(conn, conflict.id, "mine", now=_now())
        result = sync_once(vault, config, site=SITE_A)
        assert result.ok and result.pushed == 1 and result.conflicts == 0
        assert run_pass(data, store, reconcile=False).counts["outbox_filed"] == 1
        upstream = medplum.read("DocumentReference", upstream_id)
        assert upstream is not None and upstream["description"] == "Laptop's edit"
        assert sync_once(vault, config, site=SITE_A).ok
        state = _timeline(vault, f"f{n}-p")[nid].filing
        assert state is not None and state.kind == "filed"
        assert list_conflicts(vault.connection) == []
        assert store.outbox(("conflict", "held", "pending")) == []  # nothing left for IT


def _kept_theirs(patient_id: str, resource: str, refused: int | None = None) -> dict[str, Any]:
    """The audit entry a laptop's session appends when a clinician keeps the health record's
    version (``Session.resolve_conflict``); ``refused``: the refused edit's gateway version,
    which laptops name now (None: an older laptop's entry)."""
    detail: dict[str, Any] = {"keep": "theirs", "discarded": "laptop", "resource": resource}
    if refused is not None:
        detail["refused_version"] = str(refused)
    return {
        "action": "conflict_resolved",
        "outcome": "success",
        "user_id": "nurse1",
        "role": "clinician",
        "patient_id": patient_id,
        "detail": detail,
    }


def test_keep_theirs_on_the_laptop_closes_the_gateways_conflict_and_files_nothing(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """ "Keep theirs" sends no record: the clinician's audited decision, once the gateway has
    verified and stored it, closes the conflict row; IT cannot re-send the discarded edit, and
    a device of another site cannot close it."""
    n = next(_run)
    with running_gateway(tmp_path / "gw") as gw:
        store: SqlStore = gw.store
        vault, _config, data, nid, upstream_id = _conflict_on_laptop(gw, tmp_path, medplum, n)
        [conflict] = store.outbox(("conflict",))
        assert (
            gateway_cli("upstream", "retry", "--data", str(data), "--seq", str(conflict.seq)) == 0
        )
        assert store.outbox(("conflict",)) == [conflict]  # IT cannot override the clinician
        [on_laptop] = list_conflicts(vault.connection)
        sent = vault.connection.execute(
            "SELECT server_version FROM outbox WHERE seq = ?", (on_laptop.outbox_seq,)
        ).fetchone()
        assert sent == (str(conflict.version_id),)  # what the session names as refused
        decision = _kept_theirs(f"f{n}-p", f"DocumentReference/{nid}", conflict.version_id)
        with vault.transaction() as conn:  # what the session audits as ``decision``
            resolve_conflict(conn, on_laptop.id, "theirs", now=_now())
        enrol_with_entries(gw, SITE_B, tmp_path / "other-site", [decision])
        assert store.outbox(("conflict",)) == [conflict]  # not that site's record
        another = _kept_theirs(f"f{n}-p", f"DocumentReference/{nid}", conflict.version_id + 1)
        enrol_with_entries(gw, SITE_A, tmp_path / "another-conflict", [another])
        assert store.outbox(("conflict",)) == [conflict]  # it settled another version
        enrol_with_entries(gw, SITE_A, tmp_path / "same-site", [decision])
        assert store.outbox(("conflict",)) == []
        assert [i.seq for i in store.outbox(("superseded",))] == [conflict.seq]
        assert run_pass(data, store).counts.get("outbox_filed", 0) == 0
        upstream = medplum.read("DocumentReference", upstream_id)
        assert upstream is not None and upstream["description"] == "Board's edit"


@pytest.mark.parametrize("names_version", [False, True])
def test_a_keep_theirs_whose_settle_failed_at_upload_is_settled_by_the_next_pass(
    tmp_path: Path, medplum: MedplumServer, monkeypatch: pytest.MonkeyPatch, names_version: bool
) -> None:
    """The settle after an audit upload fails once (a database hiccup): the upload still
    succeeds and the conflict row stays open until the next upstream pass closes it from the
    stored entry. An entry of another site's device never closes it. An older laptop's entry
    (no ``refused_version``) made before the conflict (an earlier conflict of the same record)
    never closes it; one naming the refused version closes it even from a laptop whose clock
    is an hour behind, and one naming another version never does."""
    n = next(_run)
    with running_gateway(tmp_path / "gw") as gw:
        store: SqlStore = gw.store
        _vault, _config, data, nid, upstream_id = _conflict_on_laptop(gw, tmp_path, medplum, n)
        [conflict] = store.outbox(("conflict",))
        resource = f"DocumentReference/{nid}"
        settle = store.outbox_settled_by_clinician
        failing: list[str] = []

        def fails_at_upload(rtype: str, rid: str, site: str, at: dt.datetime, **kw: Any) -> int:
            if failing:
                failing.append(site)
                raise DatabaseFailure("database_unavailable")
            return settle(rtype, rid, site, at, **kw)

        monkeypatch.setattr(store, "outbox_settled_by_clinician", fails_at_upload)
        now = _now()
        earlier = now - dt.timedelta(hours=1)
        if names_version:
            decision = _kept_theirs(f"f{n}-p", resource, conflict.version_id)
            wrong = _kept_theirs(f"f{n}-p", resource, conflict.version_id + 1)
            refused = [(SITE_B, decision, now), (SITE_A, wrong, now)]
            settling = (decision, earlier)  # this laptop's clock is an hour behind
        else:
            decision = _kept_theirs(f"f{n}-p", resource)
            refused = [(SITE_B, decision, now), (SITE_A, decision, earlier)]
            settling = (decision, _now())
        failing.append("uploads:")
        for i, (site, entry, start) in enumerate(refused):
            enrol_with_entries(gw, site, tmp_path / f"refused-{i}", [entry], start=start)
        assert failing == ["uploads:", SITE_B, SITE_A]  # each upload succeeded all the same
        failing.clear()
        assert run_pass(data, store, reconcile=False).counts.get("outbox_settled", 0) == 0
        assert store.outbox(("conflict",)) == [conflict]  # neither entry settles this one
        failing.append("uploads:")
        enrol_with_entries(gw, SITE_A, tmp_path / "same-site", [settling[0]], start=settling[1])
        assert failing == ["uploads:", SITE_A]
        failing.clear()
        assert store.outbox(("conflict",)) == [conflict]
        counts = run_pass(data, store, reconcile=False).counts
        assert counts["outbox_settled"] == 1 and counts.get("outbox_filed", 0) == 0
        assert store.outbox(("conflict",)) == []
        assert [i.seq for i in store.outbox(("superseded",))] == [conflict.seq]
        upstream = medplum.read("DocumentReference", upstream_id)
        assert upstream is not None and upstream["description"] == "Board's edit"
        assert run_pass(data, store, reconcile=False).counts.get("outbox_settled", 0) == 0


def test_a_note_naming_its_site_organization_held_by_the_gateway_is_filed(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """A gateway seeded with its sites' Organizations (as ``seed`` and ``make demo`` do): the
    Encounter's ``serviceProvider`` names one; it is no note to wait for (found by the demo)."""
    n = next(_run)
    with running_gateway(tmp_path / "gw") as gw:
        store: SqlStore = gw.store
        with store.write() as tx:  # as `seed` does, before any pass
            tx.put("Organization", SITE_A, {"resourceType": "Organization", "id": SITE_A})
        vault, config, data, _pid = _consultation_written(gw, tmp_path, medplum, n)
        assert sync_once(vault, config, site=SITE_A).ok
        counts = run_pass(data, store).counts
        assert counts["outbox_filed"] == 3 and "outbox_waiting" not in counts
