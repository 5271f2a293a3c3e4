"""Issue 14, parts 3-4: site membership from upstream Groups and Organizations, and records in
(initial load, incremental, reconciliation, transfers, quarantine), from a real Medplum server
into the real gateway and on to a real laptop vault over the laptop's own sync."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.gateway import datadir
from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.upstream.cli import print_status, status_document
from sync.gateway.upstream.config import set_upstream
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.passes import run_pass
from tests.support.gateway import SITE_A, SITE_B, Gateway, observation, patient
from tests.support.medplum_server import MedplumServer
from tests.support.upstream import gateway_cli, gateway_data
from tests.support.upstream_world import UpstreamWorld

_run = itertools.count()


class World(UpstreamWorld):
    """One test's upstream records (ids ``u<n>-…`` in the shared Medplum), gateway and laptops."""

    def __init__(self, tmp: Path, medplum: MedplumServer, gw: Gateway) -> None:
        super().__init__(tmp, medplum, gw, "u")

    def patient(self, name: str, org: str = "board-org", **extra: Any) -> None:
        resource = {**patient(self.id(name), "x"), **extra}
        resource["managingOrganization"] = {"reference": f"Organization/{self.id(org)}"}
        self.server.put(resource)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_group_members_reach_the_site_laptop_after_one_upstream_sync(
    tmp_path: Path, medplum: MedplumServer, gw: Gateway
) -> None:
    w = World(tmp_path, medplum, gw)
    for name in ("in", "also-in", "inactive", "ended", "outsider"):
        w.patient(name)
        w.observation(f"obs-{name}", name)
    w.group(
        "alpha",
        [
            w.member("in"),
            w.member("also-in", period={"start": "2020-01-01"}),
            w.member("inactive", inactive=True),
            w.member("ended", period={"start": "2020-01-01", "end": "2021-06-30"}),
        ],
    )
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    counts = w.sync()
    assert counts["patients"] == 2 and counts["written"] == 4
    assert w.held(SITE_A) == {
        ("Patient", "in"),
        ("Patient", "also-in"),
        ("Observation", "obs-in"),
        ("Observation", "obs-also-in"),
    }
    assert w.held(SITE_B) == set()
    stored = orjson.loads(w.store.read("Patient", w.id("in")).body)  # type: ignore[union-attr]
    assert stored["managingOrganization"] == {"reference": f"Organization/{SITE_A}"}
    again = w.sync()  # nothing changed upstream: nothing new in any feed
    assert again.get("written", 0) == 0 and again["unchanged"] == 4


def test_organization_link_takes_the_patients_it_manages(
    tmp_path: Path, medplum: MedplumServer, gw: Gateway
) -> None:
    w = World(tmp_path, medplum, gw)
    w.patient("managed", org="prison-b")
    w.patient("elsewhere", org="prison-x")
    w.observation("obs-managed", "managed")
    w.store.link_site(SITE_B, "organization", w.id("prison-b"), _now())
    w.sync()
    assert w.held(SITE_B) == {("Patient", "managed"), ("Observation", "obs-managed")}


def test_upstream_edit_and_deletion_reach_the_laptop(
    tmp_path: Path, medplum: MedplumServer, gw: Gateway
) -> None:
    w = World(tmp_path, medplum, gw)
    w.patient("p")
    w.observation("keep", "p", 60.0)
    w.observation("gone", "p", 61.0)
    w.group("alpha", [w.member("p")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    w.sync()
    before = w.laptop(SITE_A)
    assert ("Observation", w.id("gone")) in before
    w.observation("keep", "p", 99.0)  # an edit upstream
    w.observation("new", "p", 62.0)  # a new record upstream
    medplum.delete("Observation", w.id("gone"))
    incremental = w.sync(reconcile=False)  # the poll's pass: edits and creates, by keyset
    assert incremental["written"] == 2 and incremental.get("deleted", 0) == 0
    w.sync(reconcile=True)  # the reconciliation: deletions
    after = w.laptop(SITE_A)
    assert ("Observation", w.id("gone")) not in after
    assert ("Observation", w.id("new")) in after
    vault = w.vaults[SITE_A][0]
    row = vault.connection.execute(
        "SELECT json FROM resources WHERE type = 'Observation' AND id = ?", (w.id("keep"),)
    ).fetchone()
    assert orjson.loads(row[0])["valueQuantity"]["value"] == 99.0


def test_a_patient_moving_between_groups_upstream_is_a_transfer(
    tmp_path: Path, medplum: MedplumServer, gw: Gateway
) -> None:
    w = World(tmp_path, medplum, gw)
    w.patient("mover")
    w.patient("stayer")
    w.observation("obs-mover", "mover")
    w.group("alpha", [w.member("mover"), w.member("stayer")])
    w.group("bravo", [])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    w.store.link_site(SITE_B, "group", w.id("bravo"), _now())
    w.sync()
    assert ("Patient", "mover") in w.held(SITE_A)
    w.group("alpha", [w.member("stayer"), w.member("mover", period={"end": "2021-01-01"})])
    w.group("bravo", [w.member("mover")])
    w.sync()
    with w.store.write() as tx:
        stays = tx.site_stays(w.id("mover"))
    assert [s.site for s in stays] == [SITE_A, SITE_B] and stays[0].end is not None
    assert w.held(SITE_A) == {("Patient", "stayer")}
    assert w.held(SITE_B) == {("Patient", "mover"), ("Observation", "obs-mover")}


def test_a_patient_leaving_every_site_is_removed_but_an_emptied_group_is_refused(
    tmp_path: Path, medplum: MedplumServer, gw: Gateway
) -> None:
    w = World(tmp_path, medplum, gw)
    w.patient("released")
    w.patient("stays")
    w.observation("obs-released", "released")
    w.group("alpha", [w.member("released"), w.member("stays")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    w.sync()
    w.group("alpha", [w.member("stays")])
    counts = w.sync()
    assert counts["left"] == 1 and counts["deleted"] == 2
    assert w.held(SITE_A) == {("Patient", "stays")}
    w.group("alpha", [])  # a misconfigured Group: refused, nothing purged
    with pytest.raises(UpstreamError) as refused:
        w.sync()
    assert refused.value.reason == "membership_emptied"
    assert w.held(SITE_A) == {("Patient", "stays")}


def test_an_invalid_upstream_record_is_quarantined_with_its_reason(
    tmp_path: Path, medplum: MedplumServer, gw: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    w = World(tmp_path, medplum, gw)
    w.patient("good")
    w.patient("bad", identifier=[{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "1"}])
    w.observation("obs-good", "good")
    w.observation("obs-bad", "bad")
    w.group("alpha", [w.member("good"), w.member("bad")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    counts = w.sync()
    assert counts["quarantined"] == 1
    assert w.held(SITE_A) == {("Patient", "good"), ("Observation", "obs-good")}
    quarantined = {(q.rtype, q.rid): q for q in w.store.upstream_quarantine()}
    bad = quarantined[("Patient", w.id("bad"))]
    assert bad.reason and bad.path.startswith("Patient.identifier")


def test_site_link_and_status_from_the_command_line(
    tmp_path: Path, medplum: MedplumServer, capsys: pytest.CaptureFixture[str]
) -> None:
    data = gateway_data(tmp_path)
    creds = medplum.pki.device("gateway-upstream", "upstream")
    set_upstream(
        data,
        base=medplum.base,
        ca=str(medplum.pki.ca_path),
        cert=str(creds.cert_path),
        key=str(creds.key_path),
    )
    n = next(_run)
    medplum.put(patient(f"cli{n}-p", "x"))
    medplum.put({"resourceType": "Group", "id": f"cli{n}-g", "type": "person", "actual": True,
                 "member": [{"entity": {"reference": f"Patient/cli{n}-p"}}]})  # fmt: skip
    assert gateway_cli("site", "add", "--data", str(data), "--site", "hmp-cli") == 0
    assert gateway_cli("site", "link", "--data", str(data), "hmp-cli", "--group", f"cli{n}-g") == 0
    assert gateway_cli("site", "link", "--data", str(data), "hmp-none", "--group", "g") == 2
    assert "(unknown_site)" in capsys.readouterr().err
    assert gateway_cli("upstream", "sync", "--data", str(data)) == 0
    assert "patients 1" in capsys.readouterr().out
    assert gateway_cli("upstream", "status", "--data", str(data)) == 0
    words = capsys.readouterr().out
    assert f"site hmp-cli: upstream group cli{n}-g" in words
    assert "last import:" in words


def test_serve_worker_imports_on_the_poll_interval(
    tmp_path: Path, medplum: MedplumServer, gw: Gateway
) -> None:
    from sync.gateway.upstream.worker import UpstreamWorker

    w = World(tmp_path, medplum, gw)
    w.patient("early")
    w.group("alpha", [w.member("early")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    worker = UpstreamWorker(w.data, w.store, 0.2)
    worker.start()
    try:
        w.patient("late")
        w.group("alpha", [w.member("early"), w.member("late")])
        deadline = _now().timestamp() + 60
        while w.store.read("Patient", w.id("late")) is None and _now().timestamp() < deadline:
            worker._stop.wait(0.1)
    finally:
        worker.stop()
    assert w.store.read("Patient", w.id("late")) is not None
    assert w.held(SITE_A) == {("Patient", "early"), ("Patient", "late")}


def test_only_one_gateway_process_runs_the_upstream_pass(
    tmp_path: Path, medplum: MedplumServer, gw: Gateway
) -> None:
    """The store's upstream lease: another process's unexpired lease makes a pass step aside
    (``upstream_busy``); once that holder has crashed and its lease expired, the pass takes
    over."""
    w = World(tmp_path, medplum, gw)
    w.patient("p")
    w.group("alpha", [w.member("p")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    assert w.store.claim_upstream_lease("other-gateway:1", _now(), dt.timedelta(minutes=30))
    with pytest.raises(UpstreamError) as busy:
        w.sync()
    assert busy.value.reason == "upstream_busy"
    assert w.store.read("Patient", w.id("p")) is None
    crashed_at = _now() - dt.timedelta(hours=1)  # the holder died an hour ago
    assert w.store.claim_upstream_lease("other-gateway:1", crashed_at, dt.timedelta(minutes=30))
    w.sync()
    assert w.store.read("Patient", w.id("p")) is not None
    # The pass released its lease when it ended: another process may take it at once.
    assert w.store.claim_upstream_lease("other-gateway:2", _now(), dt.timedelta(minutes=30))


def test_an_upstream_without_bulk_export_or_history_is_read_by_search(
    tmp_path: Path, medplum: MedplumServer, gw: Gateway
) -> None:
    """Medplum offers neither ``$export`` nor type ``_history``: the same import runs on
    paged search, and ``upstream status`` says so per capability."""
    w = World(tmp_path, medplum, gw)
    w.patient("p")
    w.observation("obs", "p")
    w.group("alpha", [w.member("p")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    result = run_pass(w.data, w.store, reconcile=True)
    assert result.counts["exported_sites"] == 0 and "export_files" not in result.counts
    assert w.held(SITE_A) == {("Patient", "p"), ("Observation", "obs")}
    assert result.capabilities is not None
    plans = {d.code: d for d in result.capabilities.decisions()}
    assert not plans["bulk-export:Group"].offered
    assert "paged search" in plans["bulk-export:Group"].plan
    assert not plans["Observation:history-type"].offered
    assert "_lastUpdated keyset" in plans["Observation:history-type"].plan
    w.observation("obs", "p", 80.0)
    assert w.sync(reconcile=False)["written"] == 1  # the change, by keyset search


def _skip_mark(w: World, rtype: str) -> None:
    """The incremental read's high-water mark moved past what changed (commits landing out of
    stamp order beyond the overlap): the next incremental pass misses those changes."""
    later = _now() + dt.timedelta(hours=1)
    with w.store.write():
        w.store.set_mark_in_tx(f"search:{rtype}", later.isoformat(), _now())


def test_reconciliation_by_id_lists_catches_what_the_incremental_pass_missed(
    tmp_path: Path, medplum: MedplumServer, gw: Gateway
) -> None:
    """An edit and a deletion the incremental pass missed are caught by the reconciliation,
    which fetches whole only the edited record and writes nothing unchanged again. Medplum
    ignores ``_elements`` (it lists whole records): still correct, and said so."""
    w = World(tmp_path, medplum, gw)
    w.patient("p")
    for name in ("same-1", "same-2", "edited", "gone"):
        w.observation(name, "p", 60.0)
    w.group("alpha", [w.member("p")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    w.sync()
    assert len(w.held(SITE_A)) == 5
    w.observation("edited", "p", 99.0)
    medplum.delete("Observation", w.id("gone"))
    _skip_mark(w, "Observation")
    missed = w.sync(reconcile=False)
    assert missed.get("written", 0) == 0 and missed.get("deleted", 0) == 0
    counts = w.sync(reconcile=True)
    assert counts["written"] == 1 and counts["deleted"] == 1
    assert counts["reconcile_listed"] == 3  # ids and versions of the patient's Observations
    assert counts["reconcile_fetched"] == 1  # only the edited one was downloaded whole again
    assert counts["reconcile_filter_ignored"] == 3  # Medplum 4.5.2 ignores _elements
    assert w.held(SITE_A) == {
        ("Patient", "p"),
        ("Observation", "same-1"),
        ("Observation", "same-2"),
        ("Observation", "edited"),
    }
    vault = w.vaults[SITE_A][0]
    row = vault.connection.execute(
        "SELECT json FROM resources WHERE type = 'Observation' AND id = ?", (w.id("edited"),)
    ).fetchone()
    assert orjson.loads(row[0])["valueQuantity"]["value"] == 99.0
    unchanged = w.store.read("Observation", w.id("same-1"))
    assert unchanged is not None and unchanged.version_id == 1  # never written again
    w.sync(reconcile=False)  # said until the next reconciliation, not only after one
    assert "the upstream ignores _elements" in _status(w)[0]


def _status(w: World) -> tuple[str, dict[str, Any]]:
    """``upstream status`` of ``w``'s gateway: in words, and its ``--json`` document."""
    document = status_document(w.data, w.store)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_status(w.data, document)
    return out.getvalue(), orjson.loads(orjson.dumps(document))


def test_quarantine_lists_open_rows_only_and_keeps_when_each_closed(
    tmp_path: Path, medplum: MedplumServer, gw: Gateway
) -> None:
    """A quarantined record that later imports cleanly leaves the list (closed ``imported``);
    one deleted upstream leaves it at the next reconciliation (``gone``); IT clears the rest
    by TYPE/ID or ``--all`` (``cleared_by_it``); ``status --json`` keeps when and why."""
    w = World(tmp_path, medplum, gw)
    w.patient("p")
    for name in ("fixed", "deleted", "kept"):  # an Observation without status is invalid
        bad = observation(w.id(name), w.id("p"), 60.0)
        bad.pop("status")
        medplum.put(bad)
    w.group("alpha", [w.member("p")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    assert w.sync()["quarantined"] == 3
    opened = {q.rid for q in w.store.upstream_quarantine()}
    assert {w.id("fixed"), w.id("deleted"), w.id("kept")} <= opened
    w.observation("fixed", "p", 61.0)  # the upstream corrects it
    medplum.delete("Observation", w.id("deleted"))
    counts = w.sync(reconcile=True)
    assert {q.rid for q in w.store.upstream_quarantine()} & opened == {w.id("kept")}
    assert counts["written"] == 1 and counts["quarantine_imported"] == 1
    assert counts["quarantine_closed"] == 1
    closed = {q.rid: q.cause for q in w.store.closed_quarantine()}
    assert closed[w.id("fixed")] == "imported" and closed[w.id("deleted")] == "gone"
    words, document = _status(w)
    assert f"Observation/{w.id('kept')}" in words and w.id("deleted") not in words
    assert {q["id"] for q in document["quarantine"]} & opened == {w.id("kept")}
    causes = {q["id"]: q["cause"] for q in document["quarantine_closed"]}
    assert causes[w.id("fixed")] == "imported" and causes[w.id("deleted")] == "gone"
    assert w.store.clear_quarantine(_now(), "Observation", w.id("kept")) == 1  # IT's TYPE/ID
    assert w.id("kept") not in {q.rid for q in w.store.upstream_quarantine()}
    assert {q.rid: q.cause for q in w.store.closed_quarantine()}[w.id("kept")] == "cleared_by_it"
    assert w.sync(reconcile=True)["quarantined"] == 1  # still bad upstream: listed again
    assert w.id("kept") in {q.rid for q in w.store.upstream_quarantine()}


def test_quarantine_clear_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = gateway_data(tmp_path)
    store = SqliteStore(data / datadir.DATABASE)
    try:
        with store.write():
            for rid in ("a", "b", "c"):
                store.quarantine_in_tx("Observation", rid, "invalid_value", "$", _now())
    finally:
        store.close()
    run = ("upstream", "quarantine", "clear", "--data", str(data))
    assert gateway_cli(*run, "Observation/a") == 0
    assert "1 quarantine row(s) cleared" in capsys.readouterr().out
    assert gateway_cli(*run, "nonsense") == 2
    assert "(bad_quarantine_row)" in capsys.readouterr().err
    assert gateway_cli(*run, "--all") == 0
    assert "2 quarantine row(s) cleared" in capsys.readouterr().out
    store = SqliteStore(data / datadir.DATABASE)
    try:
        assert store.upstream_quarantine() == []
        assert sorted(q.rid for q in store.closed_quarantine()) == ["a", "b", "c"]
    finally:
        store.close()


def test_an_export_line_quarantined_before_a_completed_reconciliation_is_superseded(
    tmp_path: Path, medplum: MedplumServer, gw: Gateway
) -> None:
    """An unreadable NDJSON line (``<type>/ndjson-line-<n>``, as an export quarantines it) is
    closed ``superseded`` once a later reconciliation has read every record in scope afresh;
    a record naming no patient (never listed by patient) stays open."""
    w = World(tmp_path, medplum, gw)
    w.patient("p")
    w.group("alpha", [w.member("p")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    earlier = _now() - dt.timedelta(hours=2)
    line = f"ndjson-line-{w.n}"
    orphan = w.id("orphan")
    with w.store.write():
        w.store.quarantine_in_tx("Observation", line, "ndjson_unreadable", "$", earlier)
        w.store.quarantine_in_tx("Observation", orphan, "missing_patient_reference", "$", earlier)
    w.sync(reconcile=False)  # an incremental pass proves nothing about the line
    assert {line, orphan} <= {q.rid for q in w.store.upstream_quarantine()}
    w.sync(reconcile=True)
    still = {q.rid for q in w.store.upstream_quarantine()}
    assert line not in still and orphan in still
    assert {q.rid: q.cause for q in w.store.closed_quarantine()}[line] == "superseded"
