"""CR-1 and CR-2 against the real gateway over real mutual TLS, with real SQLCipher vaults.

CR-1: a child process runs a whole sync (push of new consultations, then a paged pull of the
site) and is SIGKILLed at a random instant, ``GATEHOUSE_KILL_ROUNDS`` times (200 by default,
3000 under ``make soak``). Children are forked from a "zygote" that has already imported the
product, so a round costs a fork instead of an interpreter start. After every kill:
``PRAGMA integrity_check`` is ok, ``cipher_integrity_check`` empty, the audit chain verifies
with its MACs (k0 known), no device-made resource is lost or duplicated on either side; then
the sync is restarted (in this process) and the device must equal the server's view of the
site, with every consultation present exactly once on both sides and nothing left pending.
A fresh vault is started every ``FRESH_EVERY`` rounds so that kills also land in initial pulls,
and a fresh gateway every ``EPOCH`` rounds so that the per-round checks (which scan the whole
site) stay cheap in a 3000-round soak.

CR-2: a TCP relay between the engine and the gateway (TLS stays end to end, so the pin check
still passes) forwards the push, lets the gateway commit it, then cuts the connection instead
of relaying the reply. The transport retries the idempotent transaction; the consultation
exists exactly once on the server and once on the device.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sync.gateway.store.base import Store
from tests.support.gateway import Gateway, running_gateway, start_gateway, stop_gateway
from tests.support.medplum_server import BASE_PATH, MedplumServer, running_medplum
from tests.support.reply_cutter import ReplyCutter
from tests.support.sync import (
    DEVICE_ID,
    OTHER_SITE,
    SITE,
    DeviceVault,
    device_client_ids,
    device_view,
    new_observation,
    seed_resources,
    server_client_ids,
    server_resources,
    server_view,
    sync_once,
    transport_config,
    vault_health,
    write_consultations,
)

ROOT = Path(__file__).resolve().parents[2]
FRESH_EVERY = 25  # rounds between fresh vaults (an initial pull to kill)
EPOCH = 4 * FRESH_EVERY  # rounds between fresh gateways (a fresh vault too)
PAGE_SIZE = 15  # small pages: many commit points per pull
SEED_PATIENTS = 8  # two sites: about 4 patients and 150 resources in ours


# -- the child side ----------------------------------------------------------------------------


def _child_sync(job: dict[str, Any]) -> int:
    from tests.support.sync import DeviceVault, sync_once, transport_config

    device = DeviceVault(Path(job["db"]), bytes.fromhex(job["dek"]), b"")
    config = transport_config(job["url"], job["pin"], (Path(job["cert"]), Path(job["key"])))
    reconcile = job.get("reconcile_every_s")
    with device.open() as vault:
        result = sync_once(
            vault,
            config,
            page_size=job["page_size"],
            fhir_base=job.get("fhir_base", "fhir"),
            reconcile_every=None if reconcile is None else dt.timedelta(seconds=reconcile),
        )
    return 0 if result.ok else 3


def zygote() -> None:
    """Read one job per stdin line; fork a child that runs it; SIGKILL the child once its
    ``kill_after`` seconds are up (the zygote kills only its own, not yet reaped, child);
    report ``exit <wait status> <seconds>``."""
    import traceback

    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the loop, never flushes the parent's pipes
            code = 2
            try:
                code = _child_sync(job)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        deadline = started + float(job["kill_after"])
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.0005)
        print(f"exit {status} {time.monotonic() - started:.4f}", flush=True)


class Zygote:
    def __init__(self, log: Path) -> None:
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.sync.test_sync_crash import zygote; zygote()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().decode().strip()

    def run(self, job: dict[str, Any], kill_after: float) -> tuple[bool, float]:
        """Run ``job`` in a fresh child, SIGKILLed after ``kill_after`` s unless it ended.
        Returns (was killed, seconds it ran)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job | {"kill_after": kill_after}).encode() + b"\n")
        self.proc.stdin.flush()
        kind, status, elapsed = self._line().split()
        assert kind == "exit"
        code = int(status)
        if os.WIFSIGNALED(code):
            assert os.WTERMSIG(code) == signal.SIGKILL
            return True, float(elapsed)
        assert os.WEXITSTATUS(code) == 0, f"child sync failed: exit {os.WEXITSTATUS(code)}"
        return False, float(elapsed)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._log.close()


# -- the gateway -----------------------------------------------------------------------------


def _seed(gateway: Gateway) -> Gateway:
    gateway.load(*seed_resources(SEED_PATIENTS, seed=5))
    gateway.store.set_device(DEVICE_ID, SITE, "active")
    return gateway


def _fresh_gateway(tmp: Path) -> Gateway:
    return _seed(start_gateway(tmp))


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(tmp_path) as gateway:
        yield _seed(gateway)


def _site_patients(store: Store) -> list[str]:
    return [r.rid for r in server_resources(store, SITE, ("Patient",))]


def _device_patients(conn: Any) -> list[str]:
    rows = conn.execute("SELECT patient_id FROM patient_index ORDER BY patient_id").fetchall()
    return [str(r[0]) for r in rows]


def _server_edit(gw: Gateway, rng: random.Random) -> None:
    """Another clinician's work arrives at the gateway: a new resource or a new version."""
    pid = rng.choice(_site_patients(gw.store))
    if rng.random() < 0.5:
        gw.load(new_observation(pid, rng.randint(40, 140)))
        return
    current = server_resources(gw.store, SITE, ("Condition",))
    if current:
        body = json.loads(rng.choice(current).body)
        body.pop("meta", None)
        body["note"] = [{"text": f"reviewed {rng.random():.6f}"}]
        gw.load(body)


def _check_after_kill(device: DeviceVault, on_server: Counter[str], round_no: int) -> None:
    """Right after a kill: the vault is healthy, and every consultation written is there once,
    on the laptop and (``on_server``: client id -> count, our gateway's or Medplum's) at most
    once on the server."""
    with device.open() as vault:
        conn = vault.connection
        ok, why = vault_health(conn, device)
        assert ok, f"round {round_no}: {why}"
        on_device = device_client_ids(conn)
    lost = [c for c in device.written if on_device[c] != 1]
    assert not lost, f"round {round_no}: local work lost or duplicated: {lost[:3]}"
    assert all(n == 1 for n in on_device.values()), f"round {round_no}: duplicate on device"
    dupes = [c for c, n in on_server.items() if n != 1]
    assert not dupes, f"round {round_no}: duplicated on the server: {dupes[:3]}"


def _consultations(
    device: DeviceVault, rng: random.Random, prefix: str, most: int, chance: float = 1.0
) -> list[str]:
    """This round's work on the laptop: 1..``most`` consultations for patients it holds (with
    probability ``chance``), added to ``device.written``; their client ids."""
    with device.open() as vault:
        held = _device_patients(vault.connection)[:3]
        wanted = bool(held) and (chance >= 1.0 or rng.random() < chance)
        made = write_consultations(vault, held, rng.randint(1, most), prefix) if wanted else []
    device.written += made
    return made


@dataclass
class _Kills:
    """One CR-1 run's kills: each child sync is SIGKILLed after a random share of the longest
    complete sync of its kind seen so far, and where a kill landed is judged by what the
    restart still had to do."""

    estimate: dict[str, float]  # kind ("fresh", "incremental") -> seconds
    killed: int = 0
    completed: int = 0
    landed: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def run(self, zyg: Zygote, job: dict[str, Any], kind: str, rng: random.Random) -> bool:
        """``job`` in a child, killed at a random instant unless it ends first; whether it
        was killed."""
        was_killed, ran = zyg.run(job, rng.uniform(0.0, self.estimate[kind] * 1.2))
        if was_killed:
            self.killed += 1
        else:
            self.completed += 1
            self.estimate[kind] = max(self.estimate[kind] * 0.9, ran)
        return was_killed

    def restarted(self, was_killed: bool, result: Any) -> None:
        """The restart's sync ``result``: a kill landed in the push when it still pushed,
        else in the pull when it still pulled, else at the end."""
        if was_killed:
            phase = "push" if result.pushed else "pull" if result.pulled else "end"
            self.landed[phase] += 1

    def check(self, label: str, rounds: int, at_least: int) -> None:
        """Print the run's figures; most kills must land inside a sync, in push and pull."""
        print(
            f"{label}: {rounds} rounds, {self.killed} killed (in push {self.landed['push']}, in"
            f" pull {self.landed['pull']}, at the end {self.landed['end']}), {self.completed}"
            f" completed, {time.monotonic() - self.started:.1f} s"
        )
        assert self.killed >= at_least, "the kill timing misses the sync: most children finished"
        assert self.landed["push"] and self.landed["pull"], self.landed


def _check_converged(
    device: DeviceVault, store: Store, everything: list[str], round_no: int
) -> None:
    with device.open() as vault:
        conn = vault.connection
        ok, why = vault_health(conn, device)
        assert ok, f"round {round_no}: {why}"
        assert device_view(conn) == server_view(store), f"round {round_no}: views differ"
        pending = conn.execute("SELECT count(*) FROM outbox WHERE state != 'sent'").fetchone()
        local = conn.execute("SELECT count(*) FROM resources WHERE version_id = 'local'")
        assert pending == (0,) and local.fetchone() == (0,), f"round {round_no}"
        on_device = device_client_ids(conn)
    on_server = server_client_ids(store)
    assert all(on_server[c] == 1 for c in everything), f"round {round_no}: server lost work"
    assert set(on_server) == set(everything)
    assert all(on_device[c] == 1 for c in everything), f"round {round_no}: device lost work"


ROUNDS = int(os.environ.get("GATEHOUSE_KILL_ROUNDS", "") or 200)


@pytest.mark.timeout(max(300, ROUNDS))  # a round takes ~0.2 s; the soak runs 3000 of them
def test_CR1_sync_killed_at_random_instants_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rounds = ROUNDS
    rng = random.Random(20261122)
    zyg = Zygote(tmp_path / "zygote.log")
    gw: Gateway | None = None
    device: DeviceVault | None = None
    kills = _Kills({"fresh": 0.6, "incremental": 0.2})
    try:
        for round_no in range(rounds):
            if gw is None or round_no % EPOCH == 0:  # the checks scan the site: bound its growth
                if gw is not None:
                    stop_gateway(gw)
                gw = _fresh_gateway(tmp_path / f"gw-{round_no}")
                creds = gw.pki.device(DEVICE_ID, SITE)
                config = transport_config(gw.url, gw.pki.server_pin, creds)
                everything: list[str] = []
                device = None
            kind = "incremental"
            if device is None or round_no % FRESH_EVERY == 0:
                device = DeviceVault.create(tmp_path / f"vault-{round_no}.db")
                kind = "fresh"
            if rng.random() < 0.7:
                _server_edit(gw, rng)
            everything += _consultations(device, rng, f"r{round_no}", 2)
            job = {
                "db": str(device.path),
                "dek": device.dek.hex(),
                "url": gw.url,
                "pin": gw.pki.server_pin,
                "cert": str(creds.cert_path),
                "key": str(creds.key_path),
                "page_size": PAGE_SIZE,
            }
            was_killed = kills.run(zyg, job, kind, rng)
            _check_after_kill(device, server_client_ids(gw.store), round_no)
            with device.open() as vault:  # the restart: the sync resumes and completes
                result = sync_once(vault, config, page_size=PAGE_SIZE)
            assert result.ok, f"round {round_no}: {result.error}"
            kills.restarted(was_killed, result)
            _check_converged(device, gw.store, everything, round_no)
    finally:
        zyg.close()
        if gw is not None:
            stop_gateway(gw)
    kills.check("CR-1", rounds, rounds // 2)


# -- CR-2: the reply is lost after the server committed --------------------------------------


def test_CR2_a_reply_lost_after_the_server_committed_creates_nothing_twice(
    gw: Gateway, tmp_path: Path
) -> None:
    creds = gw.pki.device(DEVICE_ID, SITE)
    made: list[str] = []

    def committed() -> bool:
        return server_client_ids(gw.store)[made[0]] > 0

    # Every sync goes through the relay: the stored cursors are absolute URLs of one origin.
    cutter = ReplyCutter(gw.server.port, committed)
    relayed = transport_config(f"https://127.0.0.1:{cutter.port}", gw.pki.server_pin, creds)
    device = DeviceVault.create(tmp_path / "vault.db")
    try:
        with device.open() as vault:
            assert sync_once(vault, relayed).ok
            made += write_consultations(vault, _site_patients(gw.store)[:1], 1, "cr2")
        cutter.armed = True
        with device.open() as vault:
            result = sync_once(vault, relayed, sleep=lambda _s: None)
    finally:
        cutter.close()
    assert cutter.cut == 1, "the relay never cut a reply: the test proves nothing"
    assert result.ok and result.pushed == len(made), result
    on_server = server_client_ids(gw.store)
    assert all(on_server[c] == 1 for c in made)
    with device.open() as vault:
        conn = vault.connection
        on_device = device_client_ids(conn)
        assert all(on_device[c] == 1 for c in made)
        assert conn.execute("SELECT count(*) FROM outbox WHERE state != 'sent'").fetchone() == (0,)
        assert device_view(conn) == server_view(gw.store)
        assert vault_health(conn, device) == (True, "ok")


def test_CR2_a_lost_reply_with_every_retry_cut_is_sent_once_by_the_next_sync(
    gw: Gateway, tmp_path: Path
) -> None:
    """The relay drops the first reply and the gateway then disappears for the retries: the
    sync fails, the device still believes the work unsent, and the next sync settles it once."""
    creds = gw.pki.device(DEVICE_ID, SITE)
    made: list[str] = []
    state = {"cut": False}

    def committed() -> bool:
        state["cut"] = state["cut"] or server_client_ids(gw.store)[made[0]] > 0
        return state["cut"]

    cutter = ReplyCutter(gw.server.port, committed)
    relayed = transport_config(f"https://127.0.0.1:{cutter.port}", gw.pki.server_pin, creds)

    def sleep(_s: float) -> None:
        cutter.armed = True  # every retry loses its reply too

    device = DeviceVault.create(tmp_path / "vault.db")
    try:
        with device.open() as vault:
            assert sync_once(vault, relayed).ok
            made += write_consultations(vault, _site_patients(gw.store)[:2], 2, "cr2b")
        cutter.armed = True
        with device.open() as vault:
            failed = sync_once(vault, relayed, sleep=sleep)
            unsent = vault.connection.execute(
                "SELECT count(*) FROM outbox WHERE state = 'pending'"
            ).fetchone()[0]
        assert failed.error in ("connection", "tls") and cutter.cut >= 2
        assert unsent == len(made)  # the device never heard: everything still pending
        assert all(server_client_ids(gw.store)[c] == 1 for c in made)  # committed once
        cutter.armed = False
        with device.open() as vault:
            again = sync_once(vault, relayed)
            assert again.ok and again.pushed == len(made)
            assert device_view(vault.connection) == server_view(gw.store)
            assert all(n == 1 for n in device_client_ids(vault.connection).values())
    finally:
        cutter.close()
    assert all(server_client_ids(gw.store)[c] == 1 for c in made)


def test_CR1_observation_round_trip_keeps_server_edits(gw: Gateway, tmp_path: Path) -> None:
    """Guard for the harness itself: server edits made between rounds reach the device."""
    creds = gw.pki.device(DEVICE_ID, SITE)
    config = transport_config(gw.url, gw.pki.server_pin, creds)
    device = DeviceVault.create(tmp_path / "vault.db")
    rng = random.Random(3)
    with device.open() as vault:
        assert sync_once(vault, config, page_size=PAGE_SIZE).ok
        before = device_view(vault.connection)
        for _ in range(4):
            _server_edit(gw, rng)
        assert sync_once(vault, config, page_size=PAGE_SIZE).ok
        after = device_view(vault.connection)
    assert after != before and after == server_view(gw.store)


# -- the same against a third-party FHIR R4 server (issue 13) -------------------------------

MEDPLUM_ROUNDS = int(os.environ.get("GATEHOUSE_MEDPLUM_KILL_ROUNDS", "") or 20)
MEDPLUM_FRESH_EVERY = 3  # rounds between fresh vaults (an initial pull to kill)
RECONCILE_ALWAYS = dt.timedelta(0)  # every sync lists every type: kills land there too


def _medplum_edit(server: MedplumServer, rng: random.Random, deletable: list[str]) -> None:
    """Another client's work on the third-party server: a new record, a new version of one,
    a patient transferred in from the other site (the backfill), or a record deleted, which
    only the reconciliation shows the laptop."""
    roll = rng.random()
    if roll < 0.15 and deletable:
        server.delete("Observation", deletable.pop(rng.randrange(len(deletable))))
        return
    newcomers = sorted(server.site_patients(OTHER_SITE))
    if roll < 0.3 and newcomers:  # a transfer in: the laptop backfills their older records
        moved = server.read("Patient", rng.choice(newcomers))
        assert moved is not None
        moved.pop("meta")
        server.put(moved | {"managingOrganization": {"reference": f"Organization/{SITE}"}})
        return
    pids = sorted(server.site_patients(SITE))
    if roll < 0.6:
        server.put(new_observation(rng.choice(pids), rng.randint(40, 140)))
        return
    conditions = [
        c for c in server.search_all("Condition") if c["subject"]["reference"][8:] in pids
    ]
    if conditions:
        body = rng.choice(conditions)
        body.pop("meta", None)
        server.put(body | {"note": [{"text": f"reviewed {rng.random():.6f}"}]})


@pytest.mark.timeout(max(300, 10 * MEDPLUM_ROUNDS))
def test_CR1_against_a_third_party_server_a_killed_sync_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """CR-1 against Medplum (keyset search, id reconciliation at every sync, transactions
    split below its size limit): SIGKILL at random instants, then the restart converges to
    the server's view of the site with every consultation exactly once on both sides."""
    rng = random.Random(20261206)
    zyg = Zygote(tmp_path / "zygote.log")
    kills = _Kills({"fresh": 1.0, "incremental": 1.0})
    everything: list[str] = []
    try:
        with running_medplum(tmp_path / "medplum") as server:
            server.seed(seed_resources(SEED_PATIENTS, seed=5))
            deletable = sorted(
                o["id"] for o in server.search_all("Observation") if "-obs" in o["id"]
            )
            creds = server.pki.device(DEVICE_ID, SITE)
            config = transport_config(server.origin, server.pki.server_pin, creds)
            device: DeviceVault | None = None
            for round_no in range(MEDPLUM_ROUNDS):
                kind = "incremental"
                if device is None or round_no % MEDPLUM_FRESH_EVERY == 0:
                    device = DeviceVault.create(tmp_path / f"vault-{round_no}.db")
                    kind = "fresh"
                if rng.random() < 0.7:
                    _medplum_edit(server, rng, deletable)
                everything += _consultations(device, rng, f"m{round_no}", 3, chance=0.6)
                job = {
                    "db": str(device.path),
                    "dek": device.dek.hex(),
                    "url": server.origin,
                    "fhir_base": server.base,
                    "reconcile_every_s": 0,
                    "pin": server.pki.server_pin,
                    "cert": str(creds.cert_path),
                    "key": str(creds.key_path),
                    "page_size": PAGE_SIZE,
                }
                was_killed = kills.run(zyg, job, kind, rng)
                _check_after_kill(device, server.client_ids(), round_no)
                with device.open() as vault:
                    result = sync_once(
                        vault,
                        config,
                        page_size=PAGE_SIZE,
                        fhir_base=server.base,
                        reconcile_every=RECONCILE_ALWAYS,
                    )
                    assert result.ok, f"round {round_no}: {result.error} {result.failed_types}"
                    kills.restarted(was_killed, result)
                    conn = vault.connection
                    assert device_view(conn) == server.site_view(SITE), f"round {round_no}"
                    pending = conn.execute(
                        "SELECT count(*) FROM outbox WHERE state != 'sent'"
                    ).fetchone()
                    assert pending == (0,), f"round {round_no}: work left unsent"
                    on_device = device_client_ids(conn)
                on_server = server.client_ids()
                assert all(on_server[c] == 1 for c in everything), f"round {round_no}"
                assert all(on_device[c] == 1 for c in device.written), f"round {round_no}"
    finally:
        zyg.close()
    kills.check("CR-1 (Medplum)", MEDPLUM_ROUNDS, MEDPLUM_ROUNDS // 3)


def test_CR2_against_a_third_party_server_a_lost_reply_creates_nothing_twice(
    tmp_path: Path,
) -> None:
    """The relay lets Medplum commit the consultation's transaction and cuts the reply: the
    retry's conditional creates find it, and it exists once on the server and on the laptop."""
    made: list[str] = []
    with running_medplum(tmp_path / "medplum") as server:
        server.seed(seed_resources(4, seed=6))
        creds = server.pki.device(DEVICE_ID, SITE)

        def committed() -> bool:
            return server.client_ids()[made[0]] > 0

        cutter = ReplyCutter(server.port, committed)
        origin = f"https://127.0.0.1:{cutter.port}"
        relayed = transport_config(origin, server.pki.server_pin, creds)
        base = origin + BASE_PATH
        device = DeviceVault.create(tmp_path / "vault.db")
        try:
            with device.open() as vault:
                assert sync_once(vault, relayed, fhir_base=base).ok
                made += write_consultations(vault, _device_patients(vault.connection)[:1], 1, "c")
            cutter.armed = True
            with device.open() as vault:
                result = sync_once(vault, relayed, fhir_base=base, sleep=lambda _s: None)
        finally:
            cutter.close()
        assert cutter.cut == 1, "the relay never cut a reply: the test proves nothing"
        assert result.ok and result.pushed == len(made), result
        on_server = server.client_ids()
        assert all(on_server[c] == 1 for c in made)
        with device.open() as vault:
            conn = vault.connection
            assert all(device_client_ids(conn)[c] == 1 for c in made)
            assert conn.execute("SELECT count(*) FROM outbox WHERE state != 'sent'").fetchone() == (
                0,
            )
            assert device_view(conn) == server.site_view(SITE)
