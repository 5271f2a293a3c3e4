"""The gateway at national scale: many laptops of many sites against ``serve --workers W``.

``python -m bench scale``. A throwaway PostgreSQL (``tests.support.postgres``, durability off),
a data folder from ``gatehouse-gateway init``, SITES sites of synthetic records loaded with
``load_resources``, DEVICES enrolled laptops (real certificates from the gateway's CA, spread
evenly over the sites), and ``gatehouse-gateway serve --workers W --database …`` in processes of
its own. Each laptop is the product's sync engine (``sync.device.engine.SyncEngine``) over the
product's transport (``sync.device.transport.Transport``: pinned mutual TLS 1.3, one kept-alive
connection per sync, Retry-After and jittered backoff) into an in-memory replica; laptops run as
threads in CLIENTS client processes. Each laptop starts at a random moment of the ramp, does an
initial sync of its site, then until the end of the period syncs again at random intervals,
first writing a consultation (pushed in the next sync) with probability PUSH_CHANCE.

Printed per worker count: p50/p95/p99 per request kind and per sync phase, errors (answers 429
or 5xx, transport failures, syncs that did not succeed), cross-site leaks (every resource a
laptop receives is checked against its site: a Patient's managingOrganization, or the site of
the patient a record belongs to; must be 0), and CPU seconds by process group (gateway workers,
PostgreSQL, the simulated laptops) — where the time goes on this machine.

Sizes: GATEHOUSE_BENCH_SCALE (default 1.0: 1,000 laptops, 100 sites) scales laptops and sites;
GATEHOUSE_BENCH_SCALE_WORKERS (default "2"; e.g. "1,2,4"), GATEHOUSE_BENCH_SCALE_RAMP (the
initial syncs' spread, default 30 s), GATEHOUSE_BENCH_SCALE_SECONDS (the period after the ramp,
default 120), GATEHOUSE_BENCH_SCALE_INTERVAL (a laptop's mean wait between syncs, default 60 s:
a national fleet syncing every few minutes, compressed), GATEHOUSE_BENCH_SCALE_PATIENTS (per
site, default 10), GATEHOUSE_BENCH_SCALE_CLIENTS (client processes, default 2),
GATEHOUSE_BENCH_SCALE_PROFILE=N (the 1-worker round runs in this process under cProfile, every
thread, and prints its top N functions by own time; the CPU figure then includes the bench).
The last line: ``scale: D devices, S sites, W workers, p95 X ms, p99 Y ms, errors E, leaks L``
(of the last worker count; p95/p99 over every request).
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import multiprocessing
import os
import pstats
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy.schema import RESOURCE_TYPES
from sync.device.engine import SyncEngine
from sync.device.replica import EXTRA_FULL_URL, EXTRA_IF_NONE_EXIST, ApplyStats, OutboxItem, Page
from sync.device.transport import Response, Transport, TransportConfig, TransportError
from sync.gateway.seed.generator import generate
from sync.gateway.store.loader import load_resources
from sync.gateway.store.postgres import PgStore
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM, PATIENT_FIELD
from tests.support.memory_replica import MemoryReplica
from tests.support.postgres import PgUnavailable, shared_server
from tests.support.served_workers import DeviceFiles, ServedData, pin_bytes, serve

FULL_DEVICES = 1000
FULL_SITES = 100
RAMP_S = 30.0  # laptops start (an initial sync each) at random moments of the ramp
SYNC_EVERY_S = 60.0  # the mean wait between two syncs of one laptop (uniform 0.5x to 1.5x)
PUSH_CHANCE = 0.3  # a sync that first pushes one consultation (an Encounter + Observation)
POOL_SIZE = 10


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class Laptop:
    files: DeviceFiles
    index: int


@dataclass
class Tally:
    """What one client process saw: latencies (ms) per kind, errors and leaks."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    busy: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    leaks: int = 0
    syncs: int = 0
    received: int = 0

    def merge(self, other: Tally) -> None:
        for kind, values in other.latencies.items():
            self.latencies[kind].extend(values)
        for kind, count in other.errors.items():
            self.errors[kind] += count
        for kind, count in other.busy.items():
            self.busy[kind] += count
        self.leaks += other.leaks
        self.syncs += other.syncs
        self.received += other.received


def request_kind(method: str, url: str) -> str:
    path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
    parts = [p for p in path.split("/") if p]
    if method == "POST" and parts == ["fhir"]:
        return "transaction"
    if "_history" in parts or "_history" in url:
        return "history"
    if parts[-1:] == ["metadata"]:
        return "metadata"
    return f"{method} {'/'.join(parts[:2])}"


class TimedTransport(Transport):
    """The product's transport, timing every single HTTP exchange by kind (and by whether it
    belongs to an initial sync: those come in a herd during the ramp)."""

    def __init__(
        self, config: TransportConfig, tally: Tally, lock: threading.Lock, *, initial: bool
    ) -> None:
        super().__init__(config)
        self._tally = tally
        self._lock = lock
        self._suffix = " (initial)" if initial else ""

    def _send_once(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> Response:
        kind = request_kind(method, url) + self._suffix
        started = time.perf_counter()
        try:
            response = super()._send_once(method, url, body, headers)
        except TransportError as err:
            with self._lock:
                self._tally.errors[f"{kind}: transport {err.reason}"] += 1
            raise
        elapsed = (time.perf_counter() - started) * 1000
        with self._lock:
            if response.status == 503 and "retry-after" in response.headers:
                # Told "busy, come back": the transport retries. Timed as a kind of its own,
                # counted in "every request" all the same.
                self._tally.latencies[f"{kind} (busy)"].append(elapsed)
                self._tally.busy[kind] += 1
                return response
            self._tally.latencies[kind].append(elapsed)
            if response.status == 429 or response.status >= 500:
                self._tally.errors[f"{kind}: HTTP {response.status}"] += 1
        return response


class CheckedReplica(MemoryReplica):
    """An in-memory replica that counts every received resource not of its site."""

    def __init__(self, site: str, site_of: Mapping[str, str], tally: Tally, lock: threading.Lock):
        super().__init__()
        self._site = site
        self._site_of = site_of
        self._tally = tally
        self._lock = lock

    def _leaked(self, resource: Mapping[str, Any]) -> bool:
        kind = str(resource.get("resourceType"))
        if kind == "Patient":
            reference = resource.get("managingOrganization", {}).get("reference")
            return reference != f"Organization/{self._site}"
        owner_field = PATIENT_FIELD.get(kind)
        if owner_field is None:
            return True
        reference = str(resource.get(owner_field, {}).get("reference", ""))
        return self._site_of.get(reference.removeprefix("Patient/")) != self._site

    def apply_page(self, page: Page) -> ApplyStats:
        """Check, then keep the page in place (no copy of everything held, as the test
        replica makes to simulate a crash: a laptop's CPU here is the benchmark's budget)."""
        leaks = sum(1 for r in page.resources if self._leaked(r))
        with self._lock:
            self._tally.leaks += leaks
            self._tally.received += len(page.resources)
        for resource in page.resources:
            self.resources[(str(resource["resourceType"]), str(resource["id"]))] = dict(resource)
        for deletion in page.deletions:
            self.resources.pop((deletion.resource_type, deletion.resource_id), None)
        self.cursors[page.stream] = page.next_cursor
        self.pages += 1
        return ApplyStats(len(page.resources), 0, len(page.deletions), len(page.quarantined))

    def write_consultation(self, patient_id: str, seq: int) -> None:
        """One Encounter and one Observation in the outbox, as the client queues them."""
        for offset, body in enumerate(_consultation(patient_id)):
            client_id = next(
                i["value"] for i in body["identifier"] if i["system"] == CLIENT_ID_SYSTEM
            )
            self.outbox[seq + offset] = OutboxItem(
                seq + offset,
                "create",
                str(body["resourceType"]),
                client_id,
                client_id,
                body,
                None,
                {
                    EXTRA_IF_NONE_EXIST: f"identifier={CLIENT_ID_SYSTEM}|{client_id}",
                    EXTRA_FULL_URL: f"urn:uuid:{client_id}",
                },
            )


def _consultation(patient_id: str) -> list[dict[str, Any]]:
    subject = {"reference": f"Patient/{patient_id}"}
    encounter_id, observation_id = str(uuid.uuid4()), str(uuid.uuid4())
    return [
        {
            "resourceType": "Encounter",
            "id": encounter_id,
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "AMB",
            },
            "subject": subject,
            "period": {"start": "2026-11-20T10:00:00+00:00", "end": "2026-11-20T10:20:00+00:00"},
            "identifier": [{"system": CLIENT_ID_SYSTEM, "value": encounter_id}],
        },
        {
            "resourceType": "Observation",
            "id": observation_id,
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": subject,
            "effectiveDateTime": "2026-11-20T10:05:00+00:00",
            "valueQuantity": {
                "value": 72,
                "unit": "/min",
                "system": "http://unitsofmeasure.org",
                "code": "/min",
            },
            "identifier": [{"system": CLIENT_ID_SYSTEM, "value": observation_id}],
        },
    ]


@dataclass(frozen=True)
class ClientJob:
    url: str
    pin: bytes
    laptops: tuple[Laptop, ...]
    site_of: dict[str, str]
    patients_of: dict[str, list[str]]
    start_at: float  # time.time() of the ramp's start
    end_at: float
    seed: int
    ramp_s: float
    every_s: float


def _laptop_life(job: ClientJob, laptop: Laptop, tally: Tally, lock: threading.Lock) -> None:
    rng = random.Random(job.seed * 100_003 + laptop.index)
    site = laptop.files.site
    replica = CheckedReplica(site, job.site_of, tally, lock)
    config = TransportConfig(
        gateway_url=job.url + "/",
        allowed_hosts=["127.0.0.1"],
        spki_pins=(job.pin,),
        client_cert_file=laptop.files.cert,
        client_key_file=laptop.files.key,
    )
    time.sleep(max(0.0, job.start_at + rng.uniform(0, job.ramp_s) - time.time()))
    phase = "sync: initial"
    seq = 1
    while True:
        started = time.perf_counter()
        try:
            initial = phase == "sync: initial"
            with TimedTransport(config, tally, lock, initial=initial) as transport:
                result = SyncEngine(transport, replica, resource_types=RESOURCE_TYPES).run()
            ok = result.ok
        except Exception:
            ok = False
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            tally.latencies[phase].append(elapsed)
            tally.syncs += 1
            if not ok:
                tally.errors[f"{phase} failed"] += 1
        wait = rng.uniform(job.every_s * 0.5, job.every_s * 1.5)
        if time.time() + wait >= job.end_at:
            return
        time.sleep(wait)
        phase = "sync: incremental"
        if rng.random() < PUSH_CHANCE and job.patients_of.get(site):
            replica.write_consultation(rng.choice(job.patients_of[site]), seq)
            seq += 2
            phase = "sync: with a push"


def run_client(job: ClientJob) -> Tally:
    """One client process: a thread per laptop."""
    tally, lock = Tally(), threading.Lock()
    threads = [
        threading.Thread(target=_laptop_life, args=(job, laptop, tally, lock), daemon=True)
        for laptop in job.laptops
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tally.latencies = dict(tally.latencies)  # type: ignore[assignment]
    tally.errors = dict(tally.errors)  # type: ignore[assignment]
    tally.busy = dict(tally.busy)
    return tally


# -- CPU time by process group (where the time goes) --------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _tree(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        queue += _children(current)
    return pids


def _cpu_seconds(pids: Sequence[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split()[0])


# -- one round -----------------------------------------------------------------------------------


@dataclass
class World:
    """What every round shares: the data folder, the laptops, who is where."""

    data: ServedData
    laptops: list[Laptop]
    site_of: dict[str, str]
    patients_of: dict[str, list[str]]
    resources: list[dict[str, Any]]


def build_world(tmp: Path, devices: int, sites: int, patients_per_site: int) -> World:
    data = ServedData.create(tmp / "gateway")
    resources = [
        r
        for r in generate(sites=sites, patients=sites * patients_per_site, seed=15)
        if r["resourceType"] != "Organization"
    ]
    site_of = {
        str(r["id"]): str(r["managingOrganization"]["reference"]).removeprefix("Organization/")
        for r in resources
        if r["resourceType"] == "Patient"
    }
    patients_of: dict[str, list[str]] = defaultdict(list)
    for patient_id, site in site_of.items():
        patients_of[site].append(patient_id)
    codes = sorted(set(site_of.values()))
    laptops = [
        Laptop(data.device(f"dev-{i:05d}", codes[i % len(codes)], tmp / "devices"), i)
        for i in range(devices)
    ]
    return World(data, laptops, site_of, dict(patients_of), resources)


def prepare_database(world: World, dsn: str) -> float:
    store = PgStore(dsn)
    try:
        started = time.perf_counter()
        load_resources(store, world.resources)
        load_s = time.perf_counter() - started
        for laptop in world.laptops:
            store.set_device(laptop.files.device_id, laptop.files.site, "active")
    finally:
        store.close()
    return load_s


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        only = values[0] if values else 0.0
        return only, only, only
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return statistics.median(values), cuts[94], cuts[98]


@dataclass(frozen=True)
class Shape:
    """How long, how often, with how many client processes."""

    ramp_s: float
    seconds: float
    every_s: float
    clients: int


@dataclass
class _InProcess:
    """A profiled gateway in this process, shaped like ``ServedGateway`` for ``run_round``."""

    url: str
    pid: int


@contextlib.contextmanager
def profiled_gateway(world: World, dsn: str, top: int) -> Iterator[_InProcess]:
    """One worker in THIS process, every thread of it under cProfile (the event loop and the
    threadpool that runs the store calls); prints the top functions by own time on exit."""
    from sync.gateway import datadir
    from sync.gateway.authority import load_authority
    from sync.gateway.server import BackgroundGateway, build_app, build_ssl_context

    profiles: list[cProfile.Profile] = []

    def start(*_: object) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()

    store = PgStore(dsn, pool_size=POOL_SIZE)
    data = world.data.path
    authority = load_authority(data)
    context = build_ssl_context(
        data / datadir.SERVER_CERT, data / datadir.SERVER_KEY, data / datadir.CA_CERT
    )
    threading.setprofile(start)
    gateway = BackgroundGateway(
        build_app(store, ca_cert=authority.ca_cert, authority=authority), context
    )
    try:
        gateway.start()
        yield _InProcess(gateway.url, os.getpid())
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
        gateway.stop()
        store.close()
        print_profile(pstats.Stats(*profiles, stream=io.StringIO()), top)  # type: ignore[arg-type]


# Where a thread waits rather than computes (idle threadpool, event loop, PostgreSQL's answer).
WAITS = ("acquire", "poll", "posix.read", "_handle_tasks", "select", "connection.py:479(wait)")


def _name(key: tuple[str, int, str]) -> str:
    path, line, function = key
    short = path.split("/site-packages/")[-1].split("/wt-s/")[-1].split("/lib/python3")[-1]
    return f"{short}:{line}({function})" if line else function


def print_profile(stats: pstats.Stats, top: int) -> None:
    """Own CPU time by function, waits left out; then the gateway's own functions by total."""
    table: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    table = stats.stats  # type: ignore[attr-defined]
    rows = [(v[2], v[3], v[1], _name(k)) for k, v in table.items()]
    waits = [r for r in rows if any(w in r[3] for w in WAITS)]
    busy = [r for r in rows if r not in waits]
    own_total = sum(r[0] for r in busy)
    print(f"   cProfile of the one worker, every thread: {own_total:.1f} s of own time outside")
    print(f"   waits ({sum(r[0] for r in waits):.0f} s waiting: idle threads, PostgreSQL, poll)")
    for tottime, _cum, calls, name in sorted(busy, reverse=True)[:top]:
        print(f"   | own {tottime:7.2f} s {tottime / own_total:5.1%}  calls {calls:>8}  {name}")
    print("   the gateway's own functions by total time (waits for PostgreSQL included):")
    ours = [r for r in rows if r[3].startswith("sync/gateway/")]
    for _own, cumtime, calls, name in sorted(ours, key=lambda r: -r[1])[:top]:
        print(f"   | total {cumtime:7.2f} s  calls {calls:>8}  {name}")


def run_round(
    world: World, server_dir: Path, dsn: str, tmp: Path, workers: int, shape: Shape
) -> tuple[Tally, dict[str, float]]:
    clients = shape.clients
    top = int(_env_float("GATEHOUSE_BENCH_SCALE_PROFILE", 0))
    gateway: contextlib.AbstractContextManager[_InProcess | Any]
    if top and workers == 1:
        gateway = profiled_gateway(world, dsn, top)
    else:
        gateway = serve(
            world.data,
            dsn,
            tmp / f"gateway-{workers}.log",
            workers=workers,
            extra=("--pool-size", str(POOL_SIZE)),
        )
    with gateway as served:
        own = isinstance(served, _InProcess)
        gateway_pids = [served.pid] if own else _tree(served.process.pid)
        postgres_pids = _tree(_postmaster_pid(server_dir))
        cpu_before = (_cpu_seconds(gateway_pids), _cpu_seconds(postgres_pids))
        start_at = time.time() + 2.0
        end_at = start_at + shape.ramp_s + shape.seconds
        jobs = [
            ClientJob(
                served.url,
                pin_bytes(world.data),
                tuple(world.laptops[c::clients]),
                world.site_of,
                world.patients_of,
                start_at,
                end_at,
                seed=c,
                ramp_s=shape.ramp_s,
                every_s=shape.every_s,
            )
            for c in range(clients)
        ]
        context = multiprocessing.get_context("spawn")
        wall = time.perf_counter()
        with context.Pool(clients) as pool:
            async_result = pool.map_async(run_client, jobs)
            client_pids = [p.pid for p in multiprocessing.active_children() if p.pid]
            client_cpu, loads = 0.0, []
            while not async_result.ready():
                client_cpu = max(client_cpu, _cpu_seconds(client_pids))
                loads.append(os.getloadavg()[0])
                async_result.wait(1.0)
            tallies = async_result.get()
        wall = time.perf_counter() - wall
        gateway_pids = [served.pid] if own else _tree(served.process.pid)
        postgres_pids = _tree(_postmaster_pid(server_dir))
        cpu = {
            "wall": wall,
            "gateway": _cpu_seconds(gateway_pids) - cpu_before[0],
            "postgres": _cpu_seconds(postgres_pids) - cpu_before[1],
            "laptops": client_cpu,
            "load_max": max(loads, default=0.0),
            "load_mean": statistics.fmean(loads) if loads else 0.0,
        }
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    return total, cpu


def report(tally: Tally, cpu: dict[str, float], workers: int) -> tuple[float, float, int, int]:
    print(f"-- {workers} worker(s): {tally.syncs} syncs, {tally.received} resources received")
    everything: list[float] = []
    for kind in sorted(tally.latencies):
        values = tally.latencies[kind]
        p50, p95, p99 = _quantiles(values)
        cells = f"p50 {p50:7.0f} ms  p95 {p95:7.0f} ms  p99 {p99:7.0f} ms"
        print(f"   {kind:<22} n={len(values):>6}  {cells}")
        if not kind.startswith("sync:"):
            everything.extend(values)
    _, p95, p99 = _quantiles(everything)
    steady = [
        v
        for kind, values in tally.latencies.items()
        if not kind.startswith("sync:") and "(initial)" not in kind
        for v in values
    ]
    _, steady_p95, steady_p99 = _quantiles(steady)
    served = [
        v
        for kind, values in tally.latencies.items()
        if not kind.startswith("sync:") and not kind.endswith("(busy)")
        for v in values
    ]
    _, served_p95, served_p99 = _quantiles(served)
    print(
        f"   every request: p95 {p95:.0f} ms, p99 {p99:.0f} ms; without the busy answers:"
        f" p95 {served_p95:.0f} ms, p99 {served_p99:.0f} ms; after the initial syncs:"
        f" p95 {steady_p95:.0f} ms, p99 {steady_p99:.0f} ms"
    )
    errors = sum(tally.errors.values())
    for kind, count in sorted(tally.errors.items()):
        print(f"   error: {kind} x{count}")
    busy = sum(tally.busy.values())
    print(
        f"   busy answers (503 + Retry-After, retried by the transport; timed as '… (busy)' and"
        f" counted in 'every request'): {busy} of {len(everything)} requests"
        + "".join(f"; {kind} x{count}" for kind, count in sorted(tally.busy.items()))
    )
    used = cpu["gateway"] + cpu["postgres"] + cpu["laptops"]
    print(
        f"   CPU over {cpu['wall']:.0f} s wall (2 cores = {2 * cpu['wall']:.0f} CPU-s): gateway"
        f" {cpu['gateway']:.0f} s ({cpu['gateway'] / max(used, 1e-9):.0%}), PostgreSQL"
        f" {cpu['postgres']:.0f} s ({cpu['postgres'] / max(used, 1e-9):.0%}), simulated laptops"
        f" {cpu['laptops']:.0f} s ({cpu['laptops'] / max(used, 1e-9):.0%}); 1-minute load"
        f" average over the round: mean {cpu['load_mean']:.1f}, max {cpu['load_max']:.1f}"
    )
    return p95, p99, errors, busy


def main() -> None:
    scale = _env_float("GATEHOUSE_BENCH_SCALE", 1.0)
    devices = max(2, round(FULL_DEVICES * scale))
    sites = max(1, min(devices, round(FULL_SITES * scale)))
    worker_counts = [
        int(w) for w in os.environ.get("GATEHOUSE_BENCH_SCALE_WORKERS", "2").split(",") if w
    ]
    shape = Shape(
        ramp_s=_env_float("GATEHOUSE_BENCH_SCALE_RAMP", RAMP_S),
        seconds=_env_float("GATEHOUSE_BENCH_SCALE_SECONDS", 120.0),
        every_s=_env_float("GATEHOUSE_BENCH_SCALE_INTERVAL", SYNC_EVERY_S),
        clients=int(_env_float("GATEHOUSE_BENCH_SCALE_CLIENTS", 2)),
    )
    per_site = int(_env_float("GATEHOUSE_BENCH_SCALE_PATIENTS", 10))
    try:
        server = shared_server()
    except PgUnavailable as err:
        print(f"skipped: {err.reason}")
        return
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        started = time.perf_counter()
        world = build_world(tmp, devices, sites, per_site)
        print(
            f"{devices} laptops at {sites} sites, {len(world.resources)} resources"
            f" ({per_site} patients a site); set up in {time.perf_counter() - started:.0f} s;"
            f" ramp {shape.ramp_s:.0f} s then {shape.seconds:.0f} s of syncs every"
            f" {shape.every_s * 0.5:.0f}-{shape.every_s * 1.5:.0f} s, {PUSH_CHANCE:.0%} with a"
            f" push; {shape.clients} client processes",
            flush=True,
        )
        line = ""
        for workers in worker_counts:
            dsn = server.new_database("scale")
            load_s = prepare_database(world, dsn)
            print(
                f"-- loaded {len(world.resources)} resources into PostgreSQL in {load_s:.1f} s"
                f" ({len(world.resources) / load_s:,.0f}/s)",
                flush=True,
            )
            tally, cpu = run_round(world, server.data_dir, dsn, tmp, workers, shape)
            p95, p99, errors, busy = report(tally, cpu, workers)
            line = (
                f"scale: {devices} devices, {sites} sites, {workers} workers, p95 {p95:.0f} ms,"
                f" p99 {p99:.0f} ms, errors {errors}, leaks {tally.leaks}, busy {busy}"
            )
            print(line, flush=True)
        if len(worker_counts) > 1:
            print(line)


if __name__ == "__main__":
    main()
