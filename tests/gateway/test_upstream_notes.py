"""Issue 14, part 5: notes out. Every version a laptop pushes is queued in the gateway's
upstream outbox in the transaction that accepts it, and filed into the upstream (a real Medplum
server) exactly once: through lost replies after the upstream committed, refusals held with the
upstream's reason, conflicts, and a kill -9 of the gateway mid-filing."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from client.core.vault import Vault
from sync.device.audit_queries import parse_not_filed
from sync.device.engine import SyncResult
from sync.device.transport import TransportConfig
from sync.gateway import datadir
from sync.gateway.store.sql import SqlStore
from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.upstream import passes
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.passes import LEASE_TTL, run_pass
from sync.gateway.upstream.state import load_state
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM
from tests.support.control import add_user, bearer
from tests.support.gateway import (
    SITE_A,
    SITE_B,
    Gateway,
    create_entry,
    observation,
    patient,
    running_gateway,
)
from tests.support.medplum_server import MedplumServer
from tests.support.served_workers import free_port
from tests.support.sync import (
    DeviceVault,
    device_client_ids,
    sync_once,
    transport_config,
    write_consultations,
)
from tests.support.upstream import (
    Relay,
    configure_with_certificate,
    gateway_cli,
    gateway_data,
    running_relay,
)
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


@dataclass
class Served:
    """A served gateway whose site is linked upstream (one patient, ``pid``), and a laptop of
    that site that has synced once."""

    store: SqlStore
    data: Path
    pid: str
    vault: Vault
    config: TransportConfig

    def sync(self) -> SyncResult:
        return sync_once(self.vault, self.config, site=SITE_A)


def _served_laptop(tmp_path: Path, gw: Gateway, medplum: MedplumServer, base: str) -> Served:
    """``gw`` filing into ``medplum`` reached at ``base`` (its own, or a relay's)."""
    n = next(RUNS)
    assert isinstance(gw.store, SqlStore)
    store: SqlStore = gw.store
    data = gateway_data(tmp_path)
    configure_with_certificate(data, medplum.pki, base)
    pid = f"n{n}-p"
    link_patients(store, medplum, n, pid)
    run_pass(data, store)
    device = DeviceVault.create(tmp_path / "laptop.db", f"dev-n{n}")
    store.set_device(f"dev-n{n}", SITE_A, "active")
    config = transport_config(gw.url, gw.pki.server_pin, gw.pki.device(f"dev-n{n}", SITE_A))
    served = Served(store, data, pid, device.open(), config)
    assert served.sync().ok
    return served


def test_a_laptop_consultation_is_filed_upstream_exactly_once(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    with running_gateway(tmp_path / "gw") as gw:
        served = _served_laptop(tmp_path, gw, medplum, medplum.base)
        store, data, pid, vault = served.store, served.data, served.pid, served.vault
        made = write_consultations(vault, [pid], 2, pid, site=SITE_A)
        assert served.sync().ok
        queued = store.outbox(("pending",))
        assert len(queued) == len(made)  # queued with the push, in one transaction each
        counts = run_pass(data, store).counts
        assert counts["outbox_filed"] == len(made)
        assert upstream_copies(medplum, set(made)) == Counter({cid: 1 for cid in made})
        # Observations name their Encounter by its upstream id.
        for obs in medplum.search_all("Observation", subject=f"Patient/{pid}"):
            if "encounter" in obs:
                ref = obs["encounter"]["reference"]
                assert medplum.read("Encounter", ref.split("/")[1]) is not None
        again = run_pass(data, store).counts  # the echoes come back: nothing new anywhere
        assert again.get("outbox_filed", 0) == 0 and again.get("written", 0) == 0
        assert again["own_filed"] == len(made)
        assert served.sync().ok
        assert upstream_copies(medplum, set(made)) == Counter({cid: 1 for cid in made})
        held = device_client_ids(vault.connection)
        assert all(held[cid] == 1 for cid in made)  # no duplicate reached the laptop


def _client_ids_in(posted: bytes) -> list[str]:
    """The client identifiers of what a POST filed (a transaction Bundle's resources in entry
    order, or the one resource of a plain create)."""
    body = orjson.loads(posted)
    resources = [e.get("resource", {}) for e in body.get("entry", [])]
    found = []
    for resource in resources if body.get("resourceType") == "Bundle" else [body]:
        for identifier in resource.get("identifier", []):
            if identifier.get("system") == CLIENT_ID_SYSTEM:
                found.append(identifier["value"])
    return found


def test_an_upstream_down_for_hours_holds_no_laptop_up_and_its_backlog_drains_in_order(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """The upstream is down for hours (its balancer answers 503 to everything). The laptop
    keeps syncing with the gateway all along; every pass fails, says why, and loses nothing
    (every record queued, none upstream). Once the upstream is back, one pass files the whole
    backlog, each record once, in the order the laptop pushed it."""
    with (
        running_gateway(tmp_path / "gw") as gw,
        running_relay(medplum.pki, medplum.base, medplum.session()) as relay,
    ):
        served = _served_laptop(tmp_path, gw, medplum, relay.base)
        store, data, pid, vault = served.store, served.data, served.pid, served.vault
        relay.down = True
        made: list[str] = []
        for hour in range(3):
            made += write_consultations(vault, [pid], 1, f"{pid}h{hour}", site=SITE_A)
            synced = served.sync()
            assert synced.ok and synced.pushed, f"hour {hour}: {synced.error}"
            with pytest.raises(UpstreamError) as failed:
                run_pass(data, store, now=utc_now() + hour * dt.timedelta(hours=1))
            assert failed.value.reason == "upstream_unavailable"  # not "no CapabilityStatement"
        last = load_state(data, store)  # what `upstream status` shows
        assert (last["last_outcome"], last["last_reason"]) == ("failed", "upstream_unavailable")
        assert len(store.outbox(("pending",))) == len(made)  # every record queued, none lost
        assert store.outbox(("held", "filed")) == []
        assert sum(upstream_copies(medplum, set(made)).values()) == 0
        relay.down = False
        counts = run_pass(data, store, now=utc_now() + dt.timedelta(hours=4)).counts
        assert counts["outbox_filed"] == len(made)
        assert upstream_copies(medplum, set(made)) == Counter({cid: 1 for cid in made})
        filed = [cid for body in relay.posted for cid in _client_ids_in(body)]
        assert filed == made  # the backlog in the order it was pushed, each record once
        assert served.sync().ok
        held = device_client_ids(vault.connection)
        assert all(held[cid] == 1 for cid in made)


def test_lost_replies_after_the_upstream_committed_never_file_twice(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, relay = linked.data, linked.store, linked.relay
        cids = set(push_new(store, linked.pid, [60.0, 61.0, 62.0], together=True))
        relay.drop = {"POST": 2}  # the transaction commits upstream twice; replies lost
        first = run_pass(data, store).counts
        assert relay.dropped == ["POST /fhir/R4"] * 2  # one transaction of three creates
        assert first["outbox_filed"] == 3  # retried at once (idempotent: If-None-Exist)
        assert first["outbox_transactions"] == 1
        assert upstream_copies(medplum, cids) == Counter({cid: 1 for cid in cids})
        # An edit whose reply is lost: the retry's 412 is our own edit, not a conflict.
        obs = next(i for i in store.outbox(("filed",)) if i.rtype == "Observation")
        edit_observation(store, obs.rid, 99.0)
        relay.drop = {"PUT": 1}
        second = run_pass(data, store).counts
        assert second.get("outbox_filed") == 1 and "outbox_conflict" not in second
        filed = store.filed("Observation", obs.rid)
        assert filed is not None
        upstream = medplum.read("Observation", filed.upstream_id)
        assert upstream is not None and upstream["valueQuantity"]["value"] == 99.0
        assert upstream["meta"]["versionId"] == filed.upstream_version


def test_a_refused_note_is_held_with_the_reason_and_filed_after_retry(
    tmp_path: Path, medplum: MedplumServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, relay = linked.data, linked.store, linked.relay
        [cid] = push_new(store, linked.pid, [72.0])
        relay.refuse = {"POST": "Observation.code is not in the board's value set"}
        counts = run_pass(data, store).counts
        assert counts["outbox_held"] == 1
        assert gateway_cli("upstream", "status", "--data", str(data)) == 0
        words = capsys.readouterr().out
        assert "HELD" in words and "not in the board's value set" in words
        relay.refuse = {}
        assert run_pass(data, store).counts.get("outbox_filed", 0) == 0  # held stays held
        assert gateway_cli("upstream", "retry", "--data", str(data), "--all") == 0
        assert run_pass(data, store).counts["outbox_filed"] == 1
        assert upstream_copies(medplum, {cid}) == Counter({cid: 1})


def test_an_upstream_edit_racing_a_laptop_edit_is_a_conflict_until_the_clinician_resolves_it(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """Nothing is overwritten; the clinician's resolution (a later version, made on the
    health record's version) is filed and closes the conflict for good."""
    n = next(RUNS)
    store = SqliteStore(tmp_path / "gateway.sqlite3")
    try:
        data = gateway_data(tmp_path / "d")
        configure_with_certificate(data, medplum.pki, medplum.base)
        pid = f"n{n}-p"
        link_patients(store, medplum, n, pid)
        run_pass(data, store)
        item, filed = filed_note(data, store, pid, 50.0)
        board_edits(medplum, filed, valued(51.0))  # a clinician at the board edits it
        edit_observation(store, item.rid, 52.0)
        counts = run_pass(data, store).counts
        assert counts["outbox_conflict"] == 1
        [conflict] = store.outbox(("conflict",))
        assert conflict.reason == "upstream_conflict"
        after = medplum.read("Observation", filed.upstream_id)
        assert after is not None and after["valueQuantity"]["value"] == 51.0  # nothing overwritten
        # The pass brought the board's version down: the clinician sees both and resolves.
        current = orjson.loads(store.read("Observation", item.rid).body)  # type: ignore[union-attr]
        assert current["valueQuantity"]["value"] == 51.0
        edit_observation(store, item.rid, 53.0)
        assert run_pass(data, store).counts["outbox_filed"] == 1
        after = medplum.read("Observation", filed.upstream_id)
        assert after is not None and after["valueQuantity"]["value"] == 53.0
        assert store.outbox(("conflict", "held", "pending")) == []  # nothing left for IT
        assert [i.seq for i in store.outbox(("superseded",))] == [conflict.seq]
        assert store.outbox_release(conflict.seq) == 0  # the old edit can never go up again
        run_pass(data, store)
        again = medplum.read("Observation", filed.upstream_id)
        assert again is not None and again["valueQuantity"]["value"] == 53.0
    finally:
        store.close()


def test_an_upstream_refusing_connections_fails_the_pass_as_unreachable_and_keeps_the_notes(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """No server at all at the upstream's address (connections refused, not a balancer's 503):
    the pass fails with ``upstream_unreachable`` and the notes stay queued; the first pass that
    reaches it again files each once."""
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store = linked.data, linked.store
        cids = push_new(store, linked.pid, [60.0, 61.0])
        nobody = f"https://127.0.0.1:{free_port()}/fhir/R4"  # nothing listens there
        configure_with_certificate(data, medplum.pki, nobody)
        with pytest.raises(UpstreamError) as failed:
            run_pass(data, store)
        assert failed.value.reason == "upstream_unreachable"
        assert len(store.outbox(("pending",))) == len(cids)
        assert sum(upstream_copies(medplum, set(cids)).values()) == 0
        configure_with_certificate(data, medplum.pki, linked.relay.base)  # reachable again
        assert run_pass(data, store).counts["outbox_filed"] == len(cids)
        assert upstream_copies(medplum, set(cids)) == Counter({cid: 1 for cid in cids})


def test_an_old_held_version_is_never_filed_over_the_clinicians_later_edit(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store = linked.data, linked.store
        cid = push_new_observation(store, linked.pid, 70.0)
        linked.relay.refuse = {"POST": "Observation.code is not in the board's value set"}
        assert run_pass(data, store).counts["outbox_held"] == 1
        rid = store.outbox(("held",))[0].rid
        linked.relay.refuse = {}
        edit_observation(store, rid, 71.0)  # the clinician corrects the note
        assert run_pass(data, store).counts["outbox_filed"] == 1
        assert store.outbox(("held",)) == []
        # IT's "retry everything" must not send the refused version over the correction.
        assert gateway_cli("upstream", "retry", "--data", str(data), "--all") == 0
        run_pass(data, store)
        [upstream] = medplum.search_all("Observation", identifier=f"{CLIENT_ID_SYSTEM}|{cid}")
        assert upstream["valueQuantity"]["value"] == 71.0


def _pass_in_thread(data: Path, store: SqlStore) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(run_pass(data, store))
        except UpstreamError as err:
            outcome.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _wait_for_post(relay: Relay, after: int, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 30
    while not any(f.startswith("POST") for f in relay.forwarded[after:]):
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)


def test_a_step_longer_than_the_lease_keeps_it_and_no_other_process_takes_over(
    tmp_path: Path, medplum: MedplumServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Renewed every 2 s: a heartbeat late by up to 4 s on a busy machine still holds it.
    monkeypatch.setattr(passes, "LEASE_TTL", dt.timedelta(seconds=6))
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, relay = linked.data, linked.store, linked.relay
        push_new_observation(store, linked.pid, 80.0)
        relay.hold = {"POST"}  # the upstream takes 14 s to answer the filing: > 2 leases
        threading.Timer(14, relay.release.set).start()
        released: list[float] = []  # when the pass let its lease go (monotonic)
        release = store.release_upstream_lease

        def noted_release(holder: str) -> None:
            if holder == passes.HOLDER:
                released.append(time.monotonic())
            release(holder)

        monkeypatch.setattr(store, "release_upstream_lease", noted_release)
        before = len(relay.forwarded)
        thread, outcome = _pass_in_thread(data, store)
        _wait_for_post(relay, before, thread)
        taken = []
        while thread.is_alive():  # another process tries to take over, again and again
            if store.claim_upstream_lease("other-process", utc_now(), passes.LEASE_TTL):
                taken.append(time.monotonic())
                release("other-process")
            time.sleep(0.25)
        thread.join()
        # The live pass kept its lease through the long step: another process got it only once
        # the pass had let it go (it still records the pass after that, so its thread lives on).
        assert len(released) == 1
        assert [t for t in taken if t < released[0]] == []
        [result] = outcome
        assert isinstance(result, passes.PassResult)
        assert result.counts["outbox_filed"] == 1
        assert store.claim_upstream_lease("other-process", utc_now(), passes.LEASE_TTL)


def test_a_holder_taken_over_after_it_stalled_sends_nothing_more_upstream(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, relay = linked.data, linked.store, linked.relay
        push_new_observation(store, linked.pid, 60.0)
        run_pass(data, store)
        [filed] = store.outbox(("filed",))
        cid = push_new_observation(store, linked.pid, 62.0)
        edit_observation(
            store, filed.rid, 61.0
        )  # a create, then an edit: two requests, one after the other
        relay.hold = {"POST"}
        before = len(relay.forwarded)
        thread, outcome = _pass_in_thread(data, store)
        _wait_for_post(relay, before, thread)
        # While its reply is held this process stalls past its lease: another process,
        # a lease's time later, takes the expired lease over.
        assert store.claim_upstream_lease("other-process", utc_now() + LEASE_TTL * 1.5, LEASE_TTL)
        sent = len(relay.forwarded)
        relay.release.set()
        thread.join(60)
        [result] = outcome
        assert isinstance(result, UpstreamError) and result.reason == "upstream_lease_lost"
        writes = [f for f in relay.forwarded[sent:] if not f.startswith("GET")]
        assert writes == []  # the old holder wrote nothing more upstream
        [edit] = store.outbox(("pending",))  # left for the new holder, not held
        assert edit.rid == filed.rid and edit.attempts == 0
        assert not store.claim_upstream_lease(passes.HOLDER, utc_now(), LEASE_TTL)  # not freed
        counts = run_pass(data, store, now=utc_now() + LEASE_TTL * 3).counts  # the next holder
        assert counts["outbox_filed"] == 1
        assert upstream_copies(medplum, {cid}) == Counter({cid: 1})


def test_kill_9_of_the_gateway_mid_filing_loses_nothing_and_files_nothing_twice(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    n = next(RUNS)
    data = gateway_data(tmp_path)
    store = SqliteStore(data / datadir.DATABASE)
    with running_relay(medplum.pki, medplum.base, medplum.session()) as relay:
        configure_with_certificate(data, medplum.pki, relay.base)
        pid = f"n{n}-p"
        link_patients(store, medplum, n, pid)
        run_pass(data, store)
        cids = set(push_new(store, pid, [40.0 + i for i in range(6)]))
        store.close()
        relay.hold = {"POST"}  # the upstream commits the first create; its reply never comes
        child = subprocess.Popen(
            [sys.executable, "-m", "sync.gateway.cli", "upstream", "sync", "--data", str(data)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not any(f.startswith("POST") for f in relay.forwarded):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        relay.hold = set()
        relay.release.set()
        before = sum(upstream_copies(medplum, cids).values())
        assert before >= 1  # the upstream committed a create whose reply the gateway never saw
        store = SqliteStore(data / datadir.DATABASE)
        try:
            with pytest.raises(UpstreamError) as busy:  # the dead process's lease still holds
                run_pass(data, store)
            assert busy.value.reason == "upstream_busy"
            # Once its lease has expired, the next pass takes over and files what was left.
            counts = run_pass(data, store, now=utc_now() + LEASE_TTL + LATER).counts
            assert counts["outbox_filed"] == 6
            assert store.outbox(("pending", "held", "conflict")) == []
        finally:
            store.close()
    assert upstream_copies(medplum, cids) == Counter({cid: 1 for cid in cids})
    medplum_ids = medplum.client_ids(("Observation",))
    assert all(medplum_ids[cid] == 1 for cid in cids)


def test_a_note_referring_to_a_held_one_is_held_too_and_others_go_on(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    n = next(RUNS)
    store = SqliteStore(tmp_path / "gateway.sqlite3")
    try:
        with running_relay(medplum.pki, medplum.base, medplum.session()) as relay:
            data = gateway_data(tmp_path / "d")
            configure_with_certificate(data, medplum.pki, relay.base)
            pid = f"n{n}-p"
            link_patients(store, medplum, n, pid)
            run_pass(data, store)
            encounter = create_entry(
                {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"code": "AMB"},
                    "subject": {"reference": f"Patient/{pid}"},
                }
            )
            linked = create_entry(observation("o", pid))
            linked["resource"].pop("id")
            linked["resource"]["encounter"] = {"reference": encounter["fullUrl"]}
            push_bundle(store, [encounter, linked])
            other = create_entry(observation("o2", pid))
            other["resource"].pop("id")
            push_bundle(store, [other])
            relay.refuse = {
                "POST /fhir/R4": "this transaction is refused",  # halved down to single notes
                "POST /fhir/R4/Encounter": "Encounter.class is not accepted",
            }
            counts = run_pass(data, store).counts
            assert counts["outbox_transaction_split"] >= 1
            assert counts["outbox_held"] == 2 and counts["outbox_filed"] == 1
            reasons = {i.rtype: i.reason for i in store.outbox(("held",))}
            assert reasons == {"Encounter": "upstream_refused", "Observation": "depends_on_held"}
            relay.refuse = {"POST /fhir/R4": "this transaction is refused"}
            assert store.outbox_release() == 2
            assert run_pass(data, store).counts["outbox_filed"] == 2
            enc = next(i for i in store.outbox(("filed",)) if i.rtype == "Encounter")
            enc_up = store.filed("Encounter", enc.rid)
            assert enc_up is not None
            cid = linked["request"]["ifNoneExist"].split("|")[1]
            [upstream_obs] = medplum.search_all(
                "Observation", identifier=f"{CLIENT_ID_SYSTEM}|{cid}"
            )
            assert upstream_obs["encounter"]["reference"] == f"Encounter/{enc_up.upstream_id}"
    finally:
        store.close()


def test_notes_go_up_in_transactions_sized_to_what_the_upstream_accepts(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """Medplum advertises no limit but refuses a transaction of conditional creates of more
    than 8 entries: the gateway halves until accepted, and files everything exactly once."""
    with linked_through_relay(tmp_path, medplum) as linked:
        data, store, relay = linked.data, linked.store, linked.relay
        values = [30.0 + i for i in range(40)]
        cids = set(push_new(store, linked.pid, values, together=True))
        counts = run_pass(data, store).counts
        assert counts["outbox_filed"] == 40
        assert counts["outbox_transaction_split"] >= 1
        assert 1 < counts["outbox_transaction_size"] <= 8
        accepted = [f for f in relay.forwarded if f.startswith("POST /fhir/R4 200")]
        assert len(accepted) == counts["outbox_transactions"] < 40
        assert upstream_copies(medplum, cids) == Counter({cid: 1 for cid in cids})


def _notes(store: SqlStore, pid: str, count: int) -> list[str]:
    """``count`` notes pushed as a laptop pushes them (a Bundle each); their client ids."""
    return push_new(store, pid, [30.0 + i for i in range(count)])


def _refused_transactions(relay: Relay) -> list[str]:
    """The transactions the relay forwarded that the upstream refused (any status but 2xx)."""
    sent = [f.rsplit(" ", 1) for f in relay.forwarded if f.startswith("POST /fhir/R4 ")]
    return [status for _, status in sent if not status.startswith("2")]


def test_the_transaction_size_learnt_is_remembered_and_the_next_pass_pays_no_refusal(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """The size learnt (Medplum takes at most 8 conditional creates a transaction) is kept in
    the gateway's database: the next pass, from another store on the same database (another
    process), makes no refused request. It probes upward again after a day, and for another
    base URL (``upstream set``)."""
    with (
        linked_through_relay(tmp_path, medplum) as linked,
        running_relay(medplum.pki, medplum.base, medplum.session()) as other,
    ):
        store, relay, data, pid = linked.store, linked.relay, linked.data, linked.pid
        cids = _notes(store, pid, 20)
        first = run_pass(data, store, reconcile=False).counts
        assert first["outbox_filed"] == 20 and first["outbox_transaction_split"] >= 1
        assert len(_refused_transactions(relay)) == first["outbox_transaction_split"]
        size = first["outbox_transaction_size"]
        assert 1 < size <= 8
        process = SqliteStore(data / datadir.DATABASE)  # another process, same database
        try:
            cids += _notes(process, pid, 20)
            relay.forwarded.clear()
            second = run_pass(data, process, reconcile=False).counts
        finally:
            process.close()
        assert second["outbox_filed"] == 20
        assert _refused_transactions(relay) == []  # nothing refused: the size was known
        assert "outbox_transaction_split" not in second
        assert second["outbox_transaction_size"] == size
        assert second["outbox_transactions"] == -(-20 // size)
        cids += _notes(store, pid, 10)
        relay.forwarded.clear()
        later = run_pass(data, store, now=utc_now() + dt.timedelta(hours=25), reconcile=False)
        assert later.counts["outbox_filed"] == 10
        assert len(_refused_transactions(relay)) >= 1  # a day on: probed upward once more
        assert 1 < later.counts["outbox_transaction_size"] <= 8
        configure_with_certificate(
            data, medplum.pki, other.base
        )  # ``upstream set`` to another base URL
        cids += _notes(store, pid, 10)
        moved = run_pass(data, store, now=utc_now() + dt.timedelta(hours=26), reconcile=False)
        assert moved.counts["outbox_filed"] == 10
        assert len(_refused_transactions(other)) >= 1  # learnt anew for that upstream
        assert upstream_copies(medplum, set(cids)) == Counter({cid: 1 for cid in cids})


def test_a_note_the_upstream_refuses_on_its_own_never_shrinks_the_transactions(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """A transaction refused because of one note's content is split down to that note (held
    with the upstream's reason); the size learnt before is what the others, and the next
    pass, go on with."""
    with linked_through_relay(tmp_path, medplum) as linked:
        store, relay, data, pid = linked.store, linked.relay, linked.data, linked.pid
        _notes(store, pid, 20)
        size = run_pass(data, store, reconcile=False).counts["outbox_transaction_size"]
        assert 1 < size <= 8
        bad = _notes(store, pid, 20)[2]
        relay.refuse_containing = {bad: "Observation.value is not accepted"}
        counts = run_pass(data, store, reconcile=False).counts
        assert counts["outbox_filed"] == 19 and counts["outbox_held"] == 1
        assert counts["outbox_transaction_size"] == size
        remembered = store.transaction_size(relay.base)
        assert remembered is not None and remembered.size == size
        _notes(store, pid, 10)
        relay.forwarded.clear()
        assert run_pass(data, store, reconcile=False).counts["outbox_filed"] == 10
        assert _refused_transactions(relay) == []


def test_a_patient_written_by_a_device_is_never_sent_upstream(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    """The gateway's Patient names the site, not the board's Organization: filing it would
    overwrite the system of record's registration. It is held for IT instead."""
    n = next(RUNS)
    store = SqliteStore(tmp_path / "gateway.sqlite3")
    try:
        data = gateway_data(tmp_path / "d")
        configure_with_certificate(data, medplum.pki, medplum.base)
        pid = f"n{n}-p"
        link_patients(store, medplum, n, pid)
        run_pass(data, store)
        mine = orjson.loads(store.read("Patient", pid).body)  # type: ignore[union-attr]
        mine["name"] = [{"family": "Changed", "given": ["On", "Laptop"]}]
        push_bundle(store, [{"resource": mine, "request": {
            "method": "PUT", "url": f"Patient/{pid}",
            "ifMatch": f'W/"{mine["meta"]["versionId"]}"'}}])  # fmt: skip
        counts = run_pass(data, store, reconcile=False).counts
        assert counts["outbox_held"] == 1
        assert store.outbox(("held",))[0].reason == "patient_not_filed"
        upstream = medplum.read("Patient", pid)
        assert upstream is not None and upstream["name"][0]["family"] != "Changed"
        assert upstream["managingOrganization"]["reference"] == "Organization/x"
    finally:
        store.close()


def test_a_sites_notes_held_back_are_listed_to_that_sites_auditors_only(gateway: Gateway) -> None:
    store = gateway.store
    assert isinstance(store, SqlStore)
    gateway.load(*(patient(f"{site}-p", site) for site in (SITE_A, SITE_B)))
    for site, device in ((SITE_A, "dev-a"), (SITE_B, "dev-b")):
        entry = create_entry(observation("x", f"{site}-p"))
        entry["resource"].pop("id")
        push_bundle(store, [entry], device, site)
    for item in store.outbox(("pending",)):
        store.outbox_done(item.seq, "held", utc_now(), reason="upstream_refused", detail="refused")
    add_user(gateway, "aud-a", "auditor", SITE_A)
    add_user(gateway, "nurse-a", "clinician", SITE_A)
    url = f"{gateway.url}/audit/notes-not-filed"

    def ask(user: str) -> Any:
        token = bearer(gateway, gateway.a, "dev-a", user)
        return gateway.a.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    answer = ask("aud-a")
    assert answer.status_code == 200
    [note] = parse_not_filed(answer.json())
    assert (note["patient_id"], note["state"], note["reason"]) == (
        f"{SITE_A}-p",
        "held",
        "upstream_refused",
    )
    assert "refused" not in orjson.dumps(answer.json()).decode().replace("upstream_refused", "")
    refused = ask("nurse-a")
    assert (refused.status_code, refused.json()["error"]) == (403, "role_forbidden")
