"""Issue 14, records in by Bulk Data: a real third-party FHIR server that offers
``Group/[id]/$export`` and ``_history`` (sekmet-fhir, ``make sekmet``) feeds the real gateway,
which serves a real laptop over its own sync. The initial load comes by ``$export`` (NDJSON,
streamed, every line through the strict validator), changes and deletions by ``_history``;
a kill -9 mid-export loses and duplicates nothing."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from sync.gateway import datadir
from sync.gateway.store.base import HistoryQuery
from sync.gateway.store.sql import SqlStore
from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.upstream.capabilities import read_capabilities
from sync.gateway.upstream.config import load_config
from sync.gateway.upstream.load import ELEMENTS_STREAM, import_records
from sync.gateway.upstream.opening import open_connection
from sync.gateway.upstream.passes import LEASE_TTL, run_pass
from sync.gateway.upstream.search import keyset_search
from tests.support.gateway import SITE_A, SITE_B, Gateway, observation, patient
from tests.support.sekmet_server import SekmetServer
from tests.support.sync import seed_resources
from tests.support.upstream import configure_with_certificate, gateway_data
from tests.support.upstream_world import UpstreamWorld

_run = itertools.count()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def feed(store: SqlStore, site: str) -> Counter[tuple[str, str]]:
    """How many times each (type, id) appears in ``site``'s change feed."""
    seen: Counter[tuple[str, str]] = Counter()
    after = 0
    while True:
        page = store.history(HistoryQuery(site=site, count=500, after_seq=after))
        seen.update((c.rtype, c.rid) for c in page)
        if len(page) < 500:
            return seen
        after = page[-1].seq


class World(UpstreamWorld):
    """One test's upstream records (ids ``b<n>-…`` in the shared sekmet), gateway and laptops."""

    def __init__(self, tmp: Path, sekmet: SekmetServer, gw: Gateway) -> None:
        super().__init__(tmp, sekmet, gw, "b")

    def patient(self, name: str, **extra: Any) -> None:
        self.server.put({**patient(self.id(name), "x"), **extra})

    def fed(self, site: str) -> Counter[tuple[str, str]]:
        prefix = self.prefix
        return Counter(
            {(t, i.removeprefix(prefix)): c for (t, i), c in feed(self.store, site).items()
             if i.startswith(prefix)}
        )  # fmt: skip


def test_group_export_brings_exactly_the_groups_patients_records_to_the_site_laptop(
    tmp_path: Path, sekmet: SekmetServer, gw: Gateway
) -> None:
    w = World(tmp_path, sekmet, gw)
    for name in ("in", "also-in", "inactive", "ended", "outsider"):
        w.patient(name)
        w.observation(f"obs-{name}", name)
    w.group(
        "alpha",
        [
            w.member("in"),
            w.member("also-in", period={"start": "2020-01-01"}),
            w.member("inactive", inactive=True),  # sekmet's export includes these two:
            w.member("ended", period={"start": "2020-01-01", "end": "2021-06-30"}),
        ],
    )
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    counts = w.sync()
    assert counts["exported_sites"] == 1 and counts["export_files"] == 2  # Patient, Observation
    assert counts["export_not_member"] == 4  # membership, not the export, decides scope
    expected = {
        ("Patient", "in"),
        ("Patient", "also-in"),
        ("Observation", "obs-in"),
        ("Observation", "obs-also-in"),
    }
    assert w.held(SITE_A) == expected
    assert w.held(SITE_B) == set()
    assert w.fed(SITE_A) == Counter({key: 1 for key in expected})
    stored = orjson.loads(w.store.read("Patient", w.id("in")).body)  # type: ignore[union-attr]
    assert stored["managingOrganization"] == {"reference": f"Organization/{SITE_A}"}
    again = w.sync()  # a reconciliation, by id lists (no export): nothing new in any feed
    assert again["exported_sites"] == 0 and again.get("written", 0) == 0
    assert again["reconcile_listed"] == 2 and "reconcile_fetched" not in again
    assert w.fed(SITE_A) == Counter({key: 1 for key in expected})


def test_a_bad_resource_in_an_export_file_is_quarantined_and_the_rest_imported(
    tmp_path: Path, sekmet: SekmetServer, gw: Gateway
) -> None:
    w = World(tmp_path, sekmet, gw)
    w.patient("good")
    w.patient("bad", identifier=[{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "1"}])
    w.observation("obs-good", "good")
    w.observation("obs-bad", "bad")
    w.group("alpha", [w.member("good"), w.member("bad")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    counts = w.sync()
    assert counts["export_files"] == 2 and counts["quarantined"] == 1
    assert w.held(SITE_A) == {("Patient", "good"), ("Observation", "obs-good")}
    quarantined = {(q.rtype, q.rid): q for q in w.store.upstream_quarantine()}
    bad = quarantined[("Patient", w.id("bad"))]
    assert bad.reason and bad.path.startswith("Patient.identifier")


def test_an_incremental_pass_reads_history_and_applies_edits_and_deletions(
    tmp_path: Path, sekmet: SekmetServer, gw: Gateway
) -> None:
    w = World(tmp_path, sekmet, gw)
    w.patient("p")
    w.patient("q")
    w.observation("keep", "p", 60.0)
    w.observation("gone", "p", 61.0)
    w.observation("other", "q", 62.0)
    w.group("alpha", [w.member("p")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    w.sync()
    assert ("Observation", "gone") in w.held(SITE_A)
    w.observation("keep", "p", 99.0)  # an edit upstream
    w.observation("new", "p", 63.0)  # a new record upstream
    sekmet.delete("Observation", w.id("gone"))  # a deletion upstream
    w.observation("other", "q", 64.0)  # a change to a patient of no linked site
    counts = w.sync(reconcile=False)  # the poll's pass: no export, no reconciliation
    assert counts["reconciled"] == 0 and counts["exported_sites"] == 0
    assert counts["written"] == 2 and counts["history_deleted"] == 1
    assert w.held(SITE_A) == {("Patient", "p"), ("Observation", "keep"), ("Observation", "new")}
    vault = w.vaults[SITE_A][0]
    row = vault.connection.execute(
        "SELECT json FROM resources WHERE type = 'Observation' AND id = ?", (w.id("keep"),)
    ).fetchone()
    assert orjson.loads(row[0])["valueQuantity"]["value"] == 99.0
    quiet = w.sync(reconcile=False)  # nothing changed since: nothing written
    assert quiet.get("written", 0) == 0 and quiet.get("history_deleted", 0) == 0
    w.patient("r")  # a patient joins the Group: their whole record comes at the next poll
    w.observation("old-of-r", "r", 65.0)
    w.group("alpha", [w.member("p"), w.member("r")])
    w.sync(reconcile=False)
    assert {("Patient", "r"), ("Observation", "old-of-r")} <= w.held(SITE_A)
    assert set(w.fed(SITE_A).values()) == {1, 2}  # "keep" twice (edited), all else once


def test_the_first_poll_after_an_export_reads_history_from_its_transaction_time(
    tmp_path: Path, sekmet: SekmetServer, gw: Gateway
) -> None:
    """Bulk Data promises an export holds every change up to its ``transactionTime``, so the
    poll after it reads ``_history`` from that instant, not minutes before (which re-read
    every record the export had just brought: all of them, on an upstream loaded just
    before); an edit made after the export still arrives."""
    w = World(tmp_path, sekmet, gw)
    w.patient("p")
    w.observation("o", "p", 60.0)
    w.group("alpha", [w.member("p")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    assert w.sync()["exported_sites"] == 1
    quiet = w.sync(reconcile=False)
    assert quiet.get("history_entries", 0) == 0 and quiet.get("written", 0) == 0
    w.observation("o", "p", 99.0)
    after = w.sync(reconcile=False)
    assert after["history_entries"] == 1 and after["written"] == 1
    assert w.fed(SITE_A)[("Observation", "o")] == 2


def test_without_history_changes_come_by_export_since(
    tmp_path: Path, sekmet: SekmetServer, gw: Gateway
) -> None:
    """The same server read as one whose statement lacks ``history-type``: every site being a
    Group, increments come by ``Group/[id]/$export?_since``, never by ``_history``."""
    w = World(tmp_path, sekmet, gw)
    w.patient("p")
    w.observation("keep", "p", 60.0)
    w.group("alpha", [w.member("p")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    w.sync()
    w.observation("keep", "p", 99.0)
    w.observation("new", "p", 63.0)
    statement = sekmet.metadata()
    for rest in statement["rest"]:
        for kind in rest["resource"]:
            kind["interaction"] = [i for i in kind["interaction"] if i["code"] != "history-type"]
    capabilities = read_capabilities(statement)
    with open_connection(load_config(w.data)) as connection:
        counts = import_records(
            connection, w.store, now=_now(), reconcile=False, capabilities=capabilities
        )
    assert counts["export_files"] == 1 and counts["written"] == 2  # Observation only
    assert "history_deleted" not in counts
    assert {("Observation", "keep"), ("Observation", "new")} <= w.held(SITE_A)
    assert w.fed(SITE_A)[("Observation", "keep")] == 2


def _prefixed(value: Any, prefix: str) -> Any:
    """``value`` with every id and relative reference given ``prefix`` (unique per test)."""
    if isinstance(value, list):
        return [_prefixed(item, prefix) for item in value]
    if not isinstance(value, dict):
        return value
    out = {key: _prefixed(item, prefix) for key, item in value.items()}
    if "resourceType" in value and isinstance(value.get("id"), str):
        out["id"] = prefix + value["id"]
    reference = value.get("reference")
    if isinstance(reference, str) and reference.count("/") == 1:
        rtype, rid = reference.split("/")
        out["reference"] = f"{rtype}/{prefix}{rid}"
    return out


def _imported(database: Path) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM upstream_imported").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def test_kill_9_mid_export_then_restart_imports_everything_exactly_once(
    tmp_path: Path, sekmet: SekmetServer
) -> None:
    n = next(_run)
    records = [_prefixed(r, f"k{n}-") for r in seed_resources(120, seed=900 + n, sites=1)]
    ids = {r["id"] for r in records if r["resourceType"] == "Patient"}
    sekmet.load(records)
    members = [{"entity": {"reference": f"Patient/{p}"}} for p in sorted(ids)]
    sekmet.put(
        {"resourceType": "Group", "id": f"k{n}-group", "type": "person"}
        | {"actual": True, "member": members}
    )
    data = gateway_data(tmp_path)
    configure_with_certificate(data, sekmet.pki, sekmet.base)
    database = data / datadir.DATABASE
    store = SqliteStore(database)
    store.add_site(SITE_A, SITE_A, _now())
    store.link_site(SITE_A, "group", f"k{n}-group", _now())
    store.close()
    child = subprocess.Popen(
        [sys.executable, "-m", "sync.gateway.cli", "upstream", "sync", "--data", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.nice(19),  # the watcher below must win the CPU to kill it mid-way
    )
    deadline = time.monotonic() + 120
    while _imported(database) < 300:
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    partial = _imported(database)
    assert 300 <= partial < len(records)  # killed mid-export
    store = SqliteStore(database)
    try:
        counts = run_pass(data, store, now=_now() + LEASE_TTL + dt.timedelta(minutes=1)).counts
        assert counts["export_resumed"] == 1  # the same job, polled again
        fed = feed(store, SITE_A)
        assert set(fed) == {(r["resourceType"], r["id"]) for r in records}
        assert set(fed.values()) == {1}  # nothing twice in the laptops' feed
    finally:
        store.close()


def test_reconciliation_by_id_lists_replaces_the_hourly_export(
    tmp_path: Path, sekmet: SekmetServer, gw: Gateway
) -> None:
    """A Group site loaded by ``$export`` is reconciled by id lists, never by a fresh export:
    an edit and a deletion that ``_history`` missed are caught, only the edited record is
    downloaded whole, and nothing unchanged reaches the feed again. sekmet-fhir honours
    ``_elements``, so its listing carries ids and versions only."""
    w = World(tmp_path, sekmet, gw)
    w.patient("p")
    for name in ("same-1", "same-2", "edited", "gone"):
        w.observation(name, "p", 60.0)
    w.group("alpha", [w.member("p")])
    w.store.link_site(SITE_A, "group", w.id("alpha"), _now())
    assert w.sync()["exported_sites"] == 1
    w.observation("edited", "p", 99.0)
    sekmet.delete("Observation", w.id("gone"))
    later = _now() + dt.timedelta(hours=1)  # the history's mark moved past both changes
    with w.store.write():
        w.store.set_mark_in_tx("search:Observation", later.isoformat(), _now())
    missed = w.sync(reconcile=False)
    assert missed.get("written", 0) == 0 and missed.get("history_deleted", 0) == 0
    counts = w.sync(reconcile=True)
    assert counts["exported_sites"] == 0 and "export_files" not in counts
    assert counts["written"] == 1 and counts["deleted"] == 1
    assert counts["reconcile_listed"] == 3 and counts["reconcile_fetched"] == 1
    assert "reconcile_filter_ignored" not in counts  # ids and versions only
    assert w.store.upstream_mark(ELEMENTS_STREAM) == "honoured"  # `upstream status` says so
    assert w.held(SITE_A) == {
        ("Patient", "p"),
        ("Observation", "same-1"),
        ("Observation", "same-2"),
        ("Observation", "edited"),
    }
    fed = w.fed(SITE_A)
    assert fed[("Observation", "same-1")] == 1 and fed[("Observation", "edited")] == 2
    vault = w.vaults[SITE_A][0]
    row = vault.connection.execute(
        "SELECT json FROM resources WHERE type = 'Observation' AND id = ?", (w.id("edited"),)
    ).fetchone()
    assert orjson.loads(row[0])["valueQuantity"]["value"] == 99.0


def test_a_search_capped_by_the_server_is_read_to_the_end(
    tmp_path: Path, sekmet: SekmetServer, gw: Gateway
) -> None:
    """sekmet-fhir returns at most 1,000 entries a page whatever ``_count`` asks, with a
    ``next`` link: a short page with ``next`` is not the end of a keyset search (a page all
    of one instant doubles ``_count`` past such a cap; a reconciliation deletes what its
    listing did not return)."""
    w = World(tmp_path, sekmet, gw)
    w.patient("many")
    sekmet.load([observation(w.id(f"o{i}"), w.id("many"), 60.0) for i in range(1_200)])
    with open_connection(load_config(w.data)) as connection:
        pages = list(
            keyset_search(connection, "Observation", {"patient": f"Patient/{w.id('many')}"},
                          count=1_500)
        )  # fmt: skip
    assert len(pages[0]) == 1_000  # the server's cap
    assert len({r["id"] for page in pages for r in page}) == 1_200
