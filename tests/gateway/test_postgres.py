"""PostgreSQL scale path: several gateway PROCESSES on one real PostgreSQL.

What these prove, beyond the whole gateway suite run on PostgreSQL
(``GATEHOUSE_TEST_STORE=postgres pytest tests/gateway``):
- two ``gatehouse-gateway serve --database URL`` processes plus an in-process gateway write
  concurrently while a reader pages ``_history`` through all three in turn: every committed
  version is delivered exactly once (seq order = commit order across processes);
- the same exactly-once create (``ifNoneExist``) sent to every process at once creates one
  resource; one enrolment token sent to every process at once enrols one device (NW-4); one
  audit upload sent to every process at once is stored once and the chain stays exact (AD-2);
- the site locks (``SELECT … FOR UPDATE`` on the site's ``site_clocks`` row) order commits of
  one site between separate connection pools, writers of different sites do not wait for each
  other, and ``lastUpdated`` never goes back even when one process's clock is behind (the
  multi-process hammer of the feed is ``test_pg_feed_hammer.py``);
- gateways starting together create the schema once; a dropped connection is replaced, and a
  transaction cut mid-way commits nothing and leaves as ``StoreError("database_unavailable")``;
- ``open_store`` refuses passwords on the command line and unknown URLs.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from policy.atomic import atomic_write
from sync.gateway import datadir, enrolment, pki
from sync.gateway.authority import load_authority
from sync.gateway.server import BackgroundGateway, build_app, build_ssl_context
from sync.gateway.store import postgres as pg_store
from sync.gateway.store.base import AuditQuery, HistoryQuery, SearchQuery, StoreError
from sync.gateway.store.loader import load_resources
from sync.gateway.store.opening import open_store
from sync.gateway.store.postgres import DIALECT, PgStore, to_pg_sql
from sync.gateway.store.sql import SCHEMA
from sync.protocol.audit.audit_event import export_bundle
from sync.protocol.audit.chain import ChainState
from sync.protocol.audit.chain import append as audit_append
from sync.protocol.audit.entry import AuditEntry
from tests.support.gateway import (
    CLIENT_ID,
    SITE_A,
    SITE_B,
    create_entry,
    observation,
    patient,
    session_for,
)
from tests.support.postgres import PgServer, free_port, require_server
from tests.support.store_checks import (
    assert_a_failed_write_leaves_nothing,
    assert_a_writer_waiting_too_long_gives_up_busy,
    assert_commit_order_is_seq_order,
)
from tests.support.tls import DeviceCredentials, PkiFiles

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 2  # gateway subprocesses, plus one gateway in this process
WRITERS = 6
TRANSACTIONS_PER_WRITER = 8
PAGE = 4
START_TIMEOUT_S = 30


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
    """The session's real PostgreSQL (skips, saying why, where it is not installed)."""
    return require_server()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """A fresh empty database on it."""
    return pg_server.new_database()


# -- a cluster of gateways on one database ----------------------------------------------------


@dataclass
class Cluster:
    store: PgStore
    pki: PkiFiles
    device: DeviceCredentials
    urls: list[str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sessions: list[requests.Session] = field(default_factory=list)

    def session(self) -> requests.Session:
        session = session_for(self.device, self.pki)
        self.sessions.append(session)
        return session

    def post_bundle(
        self, session: requests.Session, url: str, entries: list[dict[str, Any]]
    ) -> requests.Response:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        return session.post(
            f"{url}/fhir",
            json=bundle,
            headers={"Content-Type": "application/fhir+json"},
            timeout=60,
        )


def _wait_ready(
    url: str, session: requests.Session, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"gateway process exited with {proc.returncode}:\n{tail}")
        try:
            if session.get(f"{url}/fhir/metadata", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError("gateway process did not start")


@pytest.fixture
def cluster(tmp_path: Path, pg_dsn: str) -> Iterator[Cluster]:
    data = tmp_path / "gw"
    datadir.init_data_dir(data, now=dt.datetime.now(dt.UTC))
    ca_cert = pki.load_cert((data / datadir.CA_CERT).read_bytes())
    files = PkiFiles(
        directory=tmp_path,
        ca_key=pki.load_key((data / datadir.CA_KEY).read_bytes()),
        ca_cert=ca_cert,
        ca_path=data / datadir.CA_CERT,
        server_cert_path=data / datadir.SERVER_CERT,
        server_key_path=data / datadir.SERVER_KEY,
        server_pin="",
    )
    store = PgStore(pg_dsn)
    device = files.device("dev-a", SITE_A)
    store.set_device("dev-a", SITE_A, "active")
    cluster = Cluster(store, files, device, [])
    in_process_store = PgStore(pg_dsn)
    context = build_ssl_context(files.server_cert_path, files.server_key_path, files.ca_path)
    app = build_app(in_process_store, ca_cert=ca_cert, authority=load_authority(data))
    local = BackgroundGateway(app, context)
    logs: list[Path] = []
    try:
        for n in range(PROCESSES):
            port = free_port()
            logs.append(tmp_path / f"gateway-{n}.log")
            log = logs[-1].open("wb")
            cluster.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "sync.gateway.cli",
                        "serve",
                        "--data",
                        str(data),
                        "--database",
                        pg_dsn,
                        "--port",
                        str(port),
                    ],
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )
            )
            log.close()
            cluster.urls.append(f"https://127.0.0.1:{port}")
        local.start()
        cluster.urls.append(local.url)
        probe = cluster.session()
        for url, proc, log_path in zip(cluster.urls, cluster.procs, logs, strict=False):
            _wait_ready(url, probe, proc, log_path)
        yield cluster
    finally:
        for session in cluster.sessions:
            session.close()
        for proc in cluster.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in cluster.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        local.stop()
        in_process_store.close()
        store.close()


# -- several processes ------------------------------------------------------------------------


def _race(workers: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(n)`` for every n at once (after a barrier); its results, in order."""
    barrier = threading.Barrier(workers)
    results: list[Any] = [None] * workers

    def run(n: int) -> None:
        barrier.wait(10)
        try:
            results[n] = work(n)
        except Exception as exc:  # compared by the caller
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def _writer(
    cluster: Cluster, number: int, committed: list[tuple[str, int]], read_once: threading.Event
) -> None:
    """Creates (two per transaction) and ifMatch updates, all through one gateway."""
    url = cluster.urls[number % len(cluster.urls)]
    session = cluster.session()
    mine: dict[str, int] = {}
    for step in range(TRANSACTIONS_PER_WRITER):
        if step == 1:  # the reader pages while these writers are still at work, on any machine
            read_once.wait(timeout=60)
        entries: list[dict[str, Any]] = []
        if step % 3 == 0 or not mine:
            for _ in range(2):
                entry = create_entry(observation("x", f"p{number}", float(step)))
                entry["resource"].pop("id")
                entries.append(entry)
        else:
            oid = sorted(mine)[step % len(mine)]
            entries.append(
                {
                    "resource": observation(oid, f"p{number}", float(step)),
                    "request": {
                        "method": "PUT",
                        "url": f"Observation/{oid}",
                        "ifMatch": f'W/"{mine[oid]}"',
                    },
                }
            )
        answer = cluster.post_bundle(session, url, entries)
        assert answer.status_code == 200, answer.text
        for result in answer.json()["entry"]:
            _rtype, rid, _, version = result["response"]["location"].split("/")
            mine[rid] = int(version)
            committed.append((rid, int(version)))


def _page(
    cluster: Cluster, session: requests.Session, url: str, turn: list[int], seen: list[Any]
) -> str:
    """Follow next links to the end, each page from the next gateway in turn; return resume."""
    next_url: str | None = url
    resume = url
    while next_url is not None:
        base = cluster.urls[turn[0] % len(cluster.urls)]
        turn[0] += 1
        path = next_url.split("/fhir", 1)[1]
        answer = session.get(f"{base}/fhir{path}", timeout=60)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        for entry in page["entry"]:
            seen.append((entry["resource"]["id"], int(entry["resource"]["meta"]["versionId"])))
        resume = next(ln["url"] for ln in page["link"] if ln["relation"] == "x-resume")
        next_url = next((ln["url"] for ln in page["link"] if ln["relation"] == "next"), None)
    return resume


@pytest.mark.postgres
def test_several_gateway_processes_reader_sees_every_version_exactly_once(
    cluster: Cluster,
) -> None:
    load_resources(cluster.store, [patient(f"p{n}", SITE_A) for n in range(WRITERS)])
    committed: list[tuple[str, int]] = [(f"p{n}", 1) for n in range(WRITERS)]
    results: list[list[tuple[str, int]]] = [[] for _ in range(WRITERS)]
    errors: list[BaseException] = []
    read_once = threading.Event()

    def run(number: int) -> None:
        try:
            _writer(cluster, number, results[number], read_once)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    reader = cluster.session()
    seen: list[tuple[str, int]] = []
    turn = [0]
    resume = f"{cluster.urls[0]}/fhir/_history?_count={PAGE}"
    passes = 0
    while any(t.is_alive() for t in threads):
        resume = _page(cluster, reader, resume, turn, seen)
        passes += 1
        read_once.set()
    for thread in threads:
        thread.join()
    _page(cluster, reader, resume, turn, seen)
    assert errors == []
    for result in results:
        committed += result
    assert passes > 1 and turn[0] > len(cluster.urls)  # interleaved, through every process
    assert len(seen) == len(set(seen)), "a version was delivered twice"
    assert sorted(seen) == sorted(committed), "a committed version was missed"
    changes = cluster.store.history(HistoryQuery(site=SITE_A, count=500))
    seqs = [c.seq for c in changes]
    assert seqs == sorted(set(seqs)) == list(range(1, len(seqs) + 1))  # no gaps, no reuse
    stamps = [c.last_updated for c in changes if c.op == "put" and c.rtype == "Observation"]
    assert stamps == sorted(stamps)


@pytest.mark.postgres
def test_one_client_id_sent_to_every_process_at_once_creates_one_resource(
    cluster: Cluster,
) -> None:
    load_resources(cluster.store, [patient("p1", SITE_A)])
    client_id = "8a7c4a1e-1d5e-4f7e-9d35-4c1b2a0f9e11"
    racers = 3 * len(cluster.urls)
    sessions = [cluster.session() for _ in range(racers)]
    entries = []
    for number in range(racers):
        entry = create_entry(observation("x", "p1", float(number)), client_id=client_id)
        entry["resource"].pop("id")
        entries.append(entry)

    def create(n: int) -> requests.Response:
        return cluster.post_bundle(sessions[n], cluster.urls[n % len(cluster.urls)], [entries[n]])

    answers = _race(racers, create)
    assert all(isinstance(a, requests.Response) for a in answers), answers
    assert [a.status_code for a in answers] == [200] * racers, [a.text for a in answers]
    locations = {a.json()["entry"][0]["response"]["location"].split("/")[1] for a in answers}
    assert len(locations) == 1
    found = cluster.store.search(
        SearchQuery(rtype="Observation", site=SITE_A, count=50, identifier=(CLIENT_ID, client_id))
    )
    assert [r.rid for r in found] == sorted(locations)
    assert len(cluster.store.search(SearchQuery(rtype="Observation", site=SITE_A, count=50))) == 1


# -- the writer lock between separate connection pools ----------------------------------------


@pytest.mark.postgres
def test_a_later_commit_never_gets_a_smaller_seq_across_stores(pg_dsn: str) -> None:
    first, second = PgStore(pg_dsn), PgStore(pg_dsn)  # two processes' worth of connections
    load_resources(first, [patient("p1", SITE_A)])
    assert_commit_order_is_seq_order(first, second, wait=10)
    first.close()
    second.close()


@pytest.mark.postgres
def test_writers_of_different_sites_do_not_wait_for_each_other(pg_dsn: str) -> None:
    """No cluster-wide writer lock: while a write at SITE_A is open (its rows already sent),
    a write at SITE_B from another store commits, and a reader of SITE_B sees it at once."""
    first, second = PgStore(pg_dsn), PgStore(pg_dsn)
    load_resources(first, [patient("p1", SITE_A), patient("q1", SITE_B)])
    finished = threading.Event()

    def other_site() -> None:
        load_resources(second, [observation("b1", "q1")])
        finished.set()

    with first.write() as tx:
        tx.put("Observation", "a1", observation("a1", "p1"))
        tx.site_stays("p1")  # sends the buffered rows: the tables are now written to
        writer = threading.Thread(target=other_site)
        writer.start()
        assert finished.wait(10), "a write at another site waited for this one"
        seen = second.history(HistoryQuery(site=SITE_B, count=10))
        assert [c.rid for c in seen] == ["q1", "b1"]
        assert second.read("Observation", "a1") is None
    writer.join(10)
    assert first.read("Observation", "a1") is not None
    first.close()
    second.close()


@pytest.mark.postgres
def test_a_store_opening_while_a_write_is_open_does_not_wait_for_it(pg_dsn: str) -> None:
    """A gateway process starting (or restarting) while others write: its schema already
    exists, so it takes no table lock (CREATE INDEX IF NOT EXISTS would wait on the writers)."""
    first = PgStore(pg_dsn)
    load_resources(first, [patient("p1", SITE_A)])
    opened: list[PgStore] = []

    def open_store_now() -> None:
        opened.append(PgStore(pg_dsn))

    with first.write() as tx:
        tx.put("Observation", "a1", observation("a1", "p1"))
        tx.site_stays("p1")  # the writer holds row locks on the feed tables
        opener = threading.Thread(target=open_store_now)
        opener.start()
        opener.join(5)
        assert opened, "opening a store waited for an open write"
    opened[0].close()
    first.close()


@pytest.mark.postgres
def test_a_check_inside_a_write_sees_every_earlier_commit(pg_dsn: str) -> None:
    """ifNoneExist across processes: the second writer's lookup runs only after the first
    writer's commit (the lookup in a site first takes the site's lock)."""
    first, second = PgStore(pg_dsn), PgStore(pg_dsn)
    load_resources(first, [patient("p1", SITE_A)])
    entry = create_entry(observation("o1", "p1"), client_id="c0ffee00-0000-4000-8000-000000000001")
    resource = entry["resource"]
    holding, release = threading.Event(), threading.Event()
    found_by_second: list[int] = []

    def first_writer() -> None:
        with first.write() as tx:
            assert tx.find_by_identifier("Observation", SITE_A, CLIENT_ID, resource_cid) == []
            tx.put("Observation", "o1", resource)
            holding.set()
            release.wait(10)

    def second_writer() -> None:
        with second.write() as tx:
            found = tx.find_by_identifier("Observation", SITE_A, CLIENT_ID, resource_cid)
            found_by_second.append(len(found))
            if not found:
                tx.put("Observation", "o2", resource)

    resource_cid = resource["identifier"][-1]["value"]
    one = threading.Thread(target=first_writer)
    one.start()
    assert holding.wait(10)
    two = threading.Thread(target=second_writer)
    two.start()
    time.sleep(0.3)
    release.set()
    one.join(10)
    two.join(10)
    assert found_by_second == [1]
    query = SearchQuery(rtype="Observation", site=SITE_A, count=10)
    assert [r.rid for r in second.search(query)] == ["o1"]
    first.close()
    second.close()


@pytest.mark.postgres
def test_last_updated_never_goes_back_when_one_process_clock_is_behind(
    pg_dsn: str,
) -> None:
    now = dt.datetime.now(dt.UTC)
    ahead = PgStore(pg_dsn, clock=lambda: now + dt.timedelta(hours=1))
    behind = PgStore(pg_dsn, clock=lambda: now - dt.timedelta(hours=1))
    load_resources(ahead, [patient("p1", SITE_A)])
    for i in range(6):
        load_resources(behind if i % 2 else ahead, [observation(f"o{i}", "p1")])
    stamps = [c.last_updated for c in behind.history(HistoryQuery(site=SITE_A, count=100))]
    assert len(stamps) == 7
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert stamps[0] >= now + dt.timedelta(hours=1)
    ahead.close()
    behind.close()


@pytest.mark.postgres
def test_a_failed_write_leaves_nothing_and_releases_the_writer_lock(
    pg_dsn: str,
) -> None:
    store, other = PgStore(pg_dsn), PgStore(pg_dsn)
    load_resources(store, [patient("p1", SITE_A)])
    assert_a_failed_write_leaves_nothing(store, other)
    store.close()
    other.close()


@pytest.mark.postgres
def test_a_writer_waiting_past_the_lock_timeout_gets_database_busy(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = PgStore(pg_dsn)
    setup = tuple(
        "SET lock_timeout = 200" if s.startswith("SET lock_timeout") else s
        for s in pg_store.DIALECT.connection_setup
    )
    assert setup != pg_store.DIALECT.connection_setup
    monkeypatch.setattr(pg_store, "DIALECT", replace(pg_store.DIALECT, connection_setup=setup))
    second = PgStore(pg_dsn)
    load_resources(first, [patient("p1", SITE_A)])
    assert_a_writer_waiting_too_long_gives_up_busy(first, second)
    first.close()
    second.close()


# -- control plane across processes: one-time tokens and audit chains -------------------------


def _enrol_body(token: str, k0: bytes, key: Any = None) -> dict[str, str]:
    csr = pki.make_csr(key or pki.generate_key())
    return {
        "token": token,
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "audit_k0": base64.b64encode(k0).decode("ascii"),
    }


@pytest.mark.postgres
def test_NW4_one_enrolment_token_sent_to_every_process_at_once_enrols_one_device(
    cluster: Cluster,
) -> None:
    now = dt.datetime.now(dt.UTC)
    token, _ = enrolment.create_enrol_token(
        cluster.store, SITE_A, now=now, ttl=dt.timedelta(hours=1)
    )
    racers = 3 * len(cluster.urls)
    bodies = [_enrol_body(token, bytes(32)) for _ in range(racers)]
    sessions = [session_for(None, cluster.pki) for _ in range(racers)]
    cluster.sessions += sessions

    def use_token(n: int) -> requests.Response:
        url = cluster.urls[n % len(cluster.urls)]
        return sessions[n].post(f"{url}/device/enrol", json=bodies[n], timeout=60)

    answers = _race(racers, use_token)
    assert all(isinstance(a, requests.Response) for a in answers), answers
    won = [a for a in answers if a.status_code == 200]
    lost = [a for a in answers if a.status_code != 200]
    assert len(won) == 1, [a.text for a in answers]
    assert {(a.status_code, a.json()["error"]) for a in lost} == {(403, "token_used")}
    device_id = won[0].json()["device_id"]
    enrolled = [d for d in cluster.store.enrolled_devices() if d.enrolled_at is not None]
    assert [(d.device_id, d.site) for d in enrolled] == [(device_id, SITE_A)]
    record = cluster.store.enrol_token(enrolment.token_hash(token))
    assert record is not None and record.device_id == device_id


def _audit_chain(device_id: str, k0: bytes, count: int) -> list[AuditEntry]:
    state = ChainState.genesis(device_id, k0)
    start = dt.datetime(2026, 11, 22, 9, 0, tzinfo=dt.UTC)
    entries = []
    for i in range(count):
        fields = {
            "device_id": device_id,
            "action": "record_view",
            "outcome": "success",
            "user_id": "gp.jones",
            "role": "clinician",
            "patient_id": f"pat-{i % 3}",
            "purpose": "TREAT",
        }
        entry, state = audit_append(state, fields, start + dt.timedelta(seconds=i))
        entries.append(entry)
    return entries


def _enrol_device(cluster: Cluster, tmp_path: Path, k0: bytes) -> DeviceCredentials:
    now = dt.datetime.now(dt.UTC)
    token, _ = enrolment.create_enrol_token(
        cluster.store, SITE_A, now=now, ttl=dt.timedelta(hours=1)
    )
    key = pki.generate_key()
    session = session_for(None, cluster.pki)
    cluster.sessions.append(session)
    answer = session.post(
        f"{cluster.urls[0]}/device/enrol", json=_enrol_body(token, k0, key), timeout=60
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    cert_path, key_path = tmp_path / "enrolled.pem", tmp_path / "enrolled.key"
    atomic_write(cert_path, body["certificate"].encode("ascii"))
    atomic_write(key_path, pki.key_to_pem(key))
    cert = pki.load_cert(body["certificate"].encode("ascii"))
    return DeviceCredentials(body["device_id"], body["site"], cert_path, key_path, cert)


@pytest.mark.postgres
def test_AD2_one_audit_upload_sent_to_every_process_at_once_is_stored_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    k0 = bytes(range(32))
    device = _enrol_device(cluster, tmp_path, k0)
    entries = _audit_chain(device.device_id, k0, 24)
    racers = 2 * len(cluster.urls)
    sessions = [session_for(device, cluster.pki) for _ in range(racers)]
    cluster.sessions += sessions
    for upto in (10, 24):  # a lost answer re-sent everywhere, then the next batch likewise
        bundle = export_bundle(entries[:upto])

        def upload(n: int, bundle: dict[str, Any] = bundle) -> requests.Response:
            url = cluster.urls[n % len(cluster.urls)]
            return sessions[n].post(f"{url}/device/audit", json=bundle, timeout=60)

        answers = _race(racers, upload)
        assert all(isinstance(a, requests.Response) for a in answers), answers
        assert [a.status_code for a in answers] == [200] * racers, [a.text for a in answers]
        heads = {(a.json()["last_seq"], a.json()["head_hash"]) for a in answers}
        assert heads == {(upto, entries[upto - 1].entry_hash())}
    chain = cluster.store.audit_chain(device.device_id)
    assert chain is not None
    assert (chain.seq, chain.head_hash) == (24, entries[-1].entry_hash())
    assert cluster.store.audit_alerts() == []
    rows = cluster.store.search_audit(AuditQuery(count=100, device_id=device.device_id))
    assert [r.seq for r in rows] == list(range(1, 25))  # each entry stored exactly once
    assert [r.entry_hash for r in rows] == [e.entry_hash() for e in entries]


# -- start-up and resilience ------------------------------------------------------------------


@pytest.mark.postgres
def test_gateways_starting_together_create_the_schema_once(pg_dsn: str) -> None:
    barrier = threading.Barrier(6)
    stores: list[PgStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait(10)
        try:
            stores.append(PgStore(pg_dsn))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for store in stores:
        store.close()
    assert errors == []
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT id, seq FROM change_counter").fetchall()
    assert rows == [(1, 0)]


def _over_gateway_backends(server: PgServer, dsn: str, what: str) -> list[tuple[Any, ...]]:
    """``SELECT <what>`` over the gateway's server processes on ``dsn``'s database."""
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        return admin.execute(
            f"SELECT {what} FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = 'gatehouse-gateway'",
            (dsn.rsplit("/", 1)[1],),
        ).fetchall()


def _kill_gateway_connections(server: PgServer, dsn: str) -> int:
    killed = _over_gateway_backends(server, dsn, "pg_terminate_backend(pid)")
    return sum(1 for (ok,) in killed if ok)


@pytest.mark.postgres
def test_dropped_connections_are_replaced_and_a_cut_transaction_commits_nothing(
    pg_server: PgServer,
    pg_dsn: str,
) -> None:
    store = PgStore(pg_dsn)
    load_resources(store, [patient("p1", SITE_A)])
    assert _kill_gateway_connections(pg_server, pg_dsn) >= 1
    found = store.read("Patient", "p1")  # a read on a dead connection is retried once
    assert found is not None and found.version_id == 1
    assert _kill_gateway_connections(pg_server, pg_dsn) >= 1
    load_resources(store, [observation("o1", "p1")])  # BEGIN on a dead connection: retried
    head = store.head_seq()
    with pytest.raises(StoreError) as err, store.write() as tx:
        tx.put("Observation", "o2", observation("o2", "p1"))
        assert _kill_gateway_connections(pg_server, pg_dsn) >= 1  # cut mid-transaction
    assert err.value.reason == "database_unavailable"
    assert isinstance(err.value.__cause__, psycopg.OperationalError)
    assert store.head_seq() == head and store.read("Observation", "o2") is None
    load_resources(store, [observation("o3", "p1")])  # the writer lock was not left behind
    assert store.head_seq() == head + 1
    store.close()


@pytest.mark.postgres
def test_connections_per_process_are_bounded_by_the_pool(
    pg_server: PgServer,
    pg_dsn: str,
) -> None:
    store = PgStore(pg_dsn, pool_size=3)
    load_resources(store, [patient("p1", SITE_A)])
    results = _race(24, lambda n: [store.read("Patient", "p1") for _ in range(20)])
    assert all(isinstance(r, list) and None not in r for r in results), results
    ((connections,),) = _over_gateway_backends(pg_server, pg_dsn, "count(*)")
    assert 1 <= connections <= 3
    store.close()


def _analysed_rows(dsn: str) -> float:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'changes'").fetchone()
    assert row is not None
    return float(row[0])  # -1 until the table is first analysed


@pytest.mark.postgres
def test_statistics_follow_a_bulk_load(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unanalysed, the planner pages the feed by joining every later change (quadratic)."""
    monkeypatch.setattr(pg_store, "DIALECT", replace(pg_store.DIALECT, analyze_first_at=20))
    store = PgStore(pg_dsn)

    def load(resources: list[dict[str, Any]]) -> float:
        load_resources(store, resources)
        store.wait_for_statistics()
        return _analysed_rows(pg_dsn)

    assert load([patient(f"p{i}", SITE_A) for i in range(10)]) == -1
    assert load([patient(f"q{i}", SITE_A) for i in range(15)]) == 25  # head 25 ≥ 20
    assert load([patient(f"r{i}", SITE_A) for i in range(30)]) == 25  # 55 < 2·25 + 20
    assert load([patient(f"s{i}", SITE_A) for i in range(20)]) == 75  # 75 ≥ 70
    store.close()


def _counted_refresh(dsn: str, key: int) -> str:
    """A refresh statement for the tests: it waits for advisory lock ``key`` (free unless a
    test holds it) and counts its runs in the sequence ``refresh_runs``."""
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("DROP SEQUENCE IF EXISTS refresh_runs")
        db.execute("CREATE SEQUENCE refresh_runs")
    return f"SELECT pg_advisory_lock({key}), pg_advisory_unlock({key}), nextval('refresh_runs')"


def _refresh_runs(dsn: str) -> int:
    with psycopg.connect(dsn) as db:
        row = db.execute("SELECT last_value, is_called FROM refresh_runs").fetchone()
    assert row is not None
    return int(row[0]) if row[1] else 0


@pytest.mark.postgres
def test_a_write_does_not_wait_for_its_statistics_refresh(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh a write asks for runs on the store's statistics thread: a bulk import's
    next batch is not held up by it. Here the refresh waits on a lock this test holds, and
    the write still returns; the refresh runs once the lock is let go."""
    key = 0x5741_4954
    refresh = _counted_refresh(pg_dsn, key)
    monkeypatch.setattr(
        pg_store, "DIALECT", replace(pg_store.DIALECT, analyze_first_at=5, analyze=refresh)
    )
    store = PgStore(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        wrote = threading.Event()

        def write() -> None:
            load_resources(store, [patient(f"p{i}", SITE_A) for i in range(10)])
            wrote.set()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        # Inline, the refresh would hold the write until LOCK_TIMEOUT_MS (30 s) failed it.
        assert wrote.wait(20), "the write waited for its statistics refresh"
        deadline = time.monotonic() + 20
        waiting = None
        while waiting != (1,) and time.monotonic() < deadline:  # the thread gets there soon
            waiting = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND objid = %s",
                (key,),
            ).fetchone()
        assert waiting == (1,)  # the refresh is under way, blocked on the test's lock
        assert _refresh_runs(pg_dsn) == 0
        holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
    store.wait_for_statistics()
    assert _refresh_runs(pg_dsn) == 1
    store.close()


@pytest.mark.postgres
def test_a_store_with_one_connection_refreshes_on_the_writing_thread(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one connection a background refresh would hold it from the next write (which
    would then fail ``database_busy``): the write refreshes before it returns instead."""
    refresh = _counted_refresh(pg_dsn, 0x5741_4955)
    monkeypatch.setattr(
        pg_store, "DIALECT", replace(pg_store.DIALECT, analyze_first_at=5, analyze=refresh)
    )
    store = PgStore(pg_dsn, pool_size=1, pool_wait_s=1)
    try:
        load_resources(store, [patient(f"p{i}", SITE_A) for i in range(10)])
        assert _refresh_runs(pg_dsn) == 1  # already run: no wait_for_statistics
        load_resources(store, [patient(f"q{i}", SITE_A) for i in range(30)])  # 40 ≥ 2·10 + 5
        assert _refresh_runs(pg_dsn) == 2
    finally:
        store.close()


@pytest.mark.postgres
def test_closed_store_refuses_calls(pg_dsn: str) -> None:
    store = PgStore(pg_dsn)
    store.close()
    with pytest.raises(StoreError) as err:
        store.head_seq()
    assert err.value.reason == "closed"


# -- translation and URL handling (no server needed) ------------------------------------------


def test_placeholders_are_rewritten_outside_literals_only() -> None:
    assert to_pg_sql("SELECT a FROM t WHERE b = ? AND c LIKE ? ESCAPE '\\'") == (
        "SELECT a FROM t WHERE b = %s AND c LIKE %s ESCAPE '\\'"
    )
    assert to_pg_sql("SELECT '?', 5 % 2 WHERE x = ?") == "SELECT '?', 5 %% 2 WHERE x = %s"
    with pytest.raises(StoreError) as err:
        to_pg_sql("PRAGMA journal_mode = WAL")
    assert err.value.reason == "sqlite_only_statement"


def test_schema_translation_uses_64_bit_integers_and_bytea() -> None:
    statements = [DIALECT.ddl(statement) for statement in SCHEMA]
    joined = "\n".join(statements)
    assert "BLOB" not in joined and " INTEGER" not in joined
    assert "body BYTEA NOT NULL" in joined and "version_id BIGINT NOT NULL" in joined
    assert "id BIGINT PRIMARY KEY CHECK (id = 1)" in joined
    assert all(";" not in s for s in statements)


def test_open_store_refuses_passwords_and_unknown_urls(tmp_path: Path) -> None:
    for url, reason in [
        ("postgresql://gw:s3cret@db.example/gatehouse", "password_in_database_url"),
        ("postgresql://db.example/gatehouse?password=s3cret", "password_in_database_url"),
        ("mysql://db.example/gatehouse", "unsupported_database_url"),
        ("/var/lib/gatehouse.db", "unsupported_database_url"),
    ]:
        with pytest.raises(StoreError) as err:
            open_store(tmp_path, url)
        assert err.value.reason == reason
    store = open_store(tmp_path, None)
    assert (tmp_path / datadir.DATABASE).exists()
    store.close()


def test_unreachable_database_is_a_store_error_and_logs_no_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(StoreError) as err:
        open_store(tmp_path, f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    assert err.value.reason == "database_unavailable"
    canary = "Sekr1t-canary-7f3a"
    for dsn, reason in (
        (f"postgresql://gw:{canary}@127.0.0.1:{free_port()}/nothing", "database_unavailable"),
        (f"host=127.0.0.1 port={free_port()} password={canary}", "database_unavailable"),
        (f"postgresql://gw:{canary}@[::1/nothing", "bad_database_url"),  # libpq echoes this
    ):
        with caplog.at_level("DEBUG"), pytest.raises(StoreError) as err:
            PgStore(dsn)
        assert err.value.reason == reason
        assert canary not in str(err.value) and err.value.__cause__ is None
    assert "cannot connect to PostgreSQL" in caplog.text
    assert canary not in caplog.text


def test_site_stays_of_a_database_made_before_patient_sites_are_filled_from_history(
    pg_dsn: str,
) -> None:
    store = PgStore(pg_dsn)
    try:
        load_resources(store, [patient("p1", SITE_A)])
        load_resources(store, [patient("p1", SITE_B)])
        with store.write() as tx:
            stays = tx.site_stays("p1")
        assert [s.site for s in stays] == [SITE_A, SITE_B] and stays[1].end is None
    finally:
        store.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE patient_sites")  # as a gateway before issue 12 left it
    reopened = PgStore(pg_dsn)
    try:
        with reopened.write() as tx:
            assert tx.site_stays("p1") == stays
    finally:
        reopened.close()
