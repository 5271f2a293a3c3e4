"""A multi-process hammer of the PostgreSQL change feed: writer and reader PROCESSES on one
database (``tests/gateway/test_pg_feed_hammer.py``).

Writers commit small transactions (creates and updates of their own Observations, for
patients of one site or of two sites at once); between taking their seqs and COMMIT each
transaction is held a few random milliseconds (a slow link to the database: the window in
which a naive SEQUENCE lets a later seq commit first). Readers page one site's ``history``
with a cursor (``after_seq`` = the last seq seen) until told to stop, then read to the end.

``naive=True`` takes the site locks away (every other part of the write path unchanged), so
the test can show that the locks, not luck, keep the feed commit-ordered.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from dataclasses import dataclass
from typing import Any

from sync.gateway.store.base import DatabaseFailure, HistoryQuery
from sync.gateway.store.pg_write import PgWriteTx
from sync.gateway.store.postgres import PgStore
from tests.support.gateway import observation

HOLD_MAX_S = 0.004  # the longest a transaction is held between its flush and COMMIT


@dataclass(frozen=True)
class WriterResult:
    number: int
    committed: list[tuple[str, str, int]]  # (site, id, version) in commit order
    failures: list[str]  # reasons of transactions that did not commit


@dataclass(frozen=True)
class ReaderResult:
    site: str
    seen: list[tuple[int, str, int, int]]  # (seq, id, version, lastUpdated µs), as read
    pages: int


def _hold_commits(rng: random.Random) -> None:
    """Hold every write transaction a few ms after its writes (and seqs) reach the database."""
    flush = PgWriteTx.flush

    def slow_flush(self: PgWriteTx) -> None:
        pending = bool(self._changes)
        flush(self)
        if pending:
            time.sleep(rng.uniform(0, HOLD_MAX_S))

    PgWriteTx.flush = slow_flush  # type: ignore[method-assign]


def _take_no_site_locks() -> None:
    """The naive write path: a SEQUENCE and nothing ordering commits."""

    def no_lock(self: PgWriteTx, sites: set[str], then: object = ()) -> None:
        self._locked.update(sites)
        return None  # as if every site were held already: nothing locked, nothing re-read

    PgWriteTx._lock_sites = no_lock  # type: ignore[method-assign]


def write(
    dsn: str,
    number: int,
    patients: dict[str, list[str]],
    transactions: int,
    naive: bool,
    out: Any,
) -> None:
    """One writer process: ``transactions`` transactions of 1-3 puts each."""
    rng = random.Random(number)
    _hold_commits(rng)
    if naive:
        _take_no_site_locks()
    store = PgStore(dsn, pool_size=1)
    sites = sorted(patients)
    mine: dict[str, tuple[str, str]] = {}  # id -> (site, patient)
    result = WriterResult(number, [], [])
    for step in range(transactions):
        chosen = rng.sample(sites, 2) if rng.random() < 0.3 else [rng.choice(sites)]
        puts: list[tuple[str, str, str]] = []  # (site, id, patient)
        for part in range(rng.randint(1, 3)):
            site = rng.choice(chosen)
            own = [oid for oid, (s, _) in mine.items() if s == site]
            if own and rng.random() < 0.4:
                oid = rng.choice(own)
                puts.append((site, oid, mine[oid][1]))
            else:
                puts.append((site, f"w{number}-{step}-{part}", rng.choice(patients[site])))
        try:
            written: list[tuple[str, str, int]] = []
            with store.write() as tx:
                tx.prefetch(
                    [("Observation", oid) for _, oid, _ in puts]
                    + [("Patient", pid) for _, _, pid in puts]
                )
                for site, oid, pid in puts:
                    stored = tx.put("Observation", oid, observation(oid, pid, float(step)))
                    written.append((site, oid, stored.version_id))
        except DatabaseFailure as err:
            result.failures.append(err.reason)
            continue
        result.committed.extend(written)
        for site, oid, pid in puts:
            mine[oid] = (site, pid)
    store.close()
    out.put(result)


def read(dsn: str, site: str, page: int, stop: Any, out: Any) -> None:
    """One reader process: page ``site``'s feed by cursor until ``stop``, then to its end."""
    store = PgStore(dsn, pool_size=1)
    result = ReaderResult(site, [], 0)
    cursor = 0

    def to_the_end() -> None:
        nonlocal cursor, result
        while True:
            changes = store.history(HistoryQuery(site=site, count=page, after_seq=cursor))
            result = ReaderResult(site, result.seen, result.pages + 1)
            for change in changes:
                micros = int(change.last_updated.timestamp() * 1_000_000)
                result.seen.append((change.seq, change.rid, change.version_id, micros))
            if changes:
                cursor = changes[-1].seq
            if len(changes) < page:
                return

    while not stop.is_set():
        to_the_end()
    to_the_end()  # every writer has finished: what is left
    store.close()
    out.put(result)


@dataclass(frozen=True)
class HammerRun:
    writers: list[WriterResult]
    readers: list[ReaderResult]
    seconds: float


def hammer(
    dsn: str,
    patients: dict[str, list[str]],
    *,
    writers: int,
    transactions: int,
    readers_per_site: int,
    page: int,
    naive: bool = False,
    timeout: float = 90,
) -> HammerRun:
    """Run the writer and reader processes (spawned) and collect what each did."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    stop = context.Event()
    started = time.monotonic()
    reading = [
        context.Process(target=read, args=(dsn, site, page, stop, out))
        for site in sorted(patients)
        for _ in range(readers_per_site)
    ]
    writing = [
        context.Process(target=write, args=(dsn, n, patients, transactions, naive, out))
        for n in range(writers)
    ]
    for process in reading + writing:
        process.start()
    results: list[Any] = []
    try:
        while len([r for r in results if isinstance(r, WriterResult)]) < writers:
            results.append(out.get(timeout=timeout))
        stop.set()
        while len(results) < writers + len(reading):
            results.append(out.get(timeout=timeout))
    finally:
        stop.set()
        for process in reading + writing:
            process.join(10)
            if process.is_alive():
                process.kill()
    return HammerRun(
        [r for r in results if isinstance(r, WriterResult)],
        [r for r in results if isinstance(r, ReaderResult)],
        time.monotonic() - started,
    )


def feed_problems(run: HammerRun, initial: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Every way a reader's view differs from "every committed change of its site exactly
    once, in increasing seq order, lastUpdated never going back" (empty: none)."""
    problems: list[str] = []
    committed: dict[str, set[tuple[str, int]]] = {site: set(initial[site]) for site in initial}
    for writer in run.writers:
        for site, rid, version in writer.committed:
            committed[site].add((rid, version))
    for reader in run.readers:
        seqs = [seq for seq, _, _, _ in reader.seen]
        got = [(rid, version) for _, rid, version, _ in reader.seen]
        stamps = [micros for _, _, _, micros in reader.seen]
        label = f"reader of {reader.site}"
        if seqs != sorted(set(seqs)):
            problems.append(f"{label}: seqs out of cursor order")
        if len(got) != len(set(got)):
            problems.append(f"{label}: {len(got) - len(set(got))} changes delivered twice")
        missed = committed[reader.site] - set(got)
        if missed:
            problems.append(f"{label}: skipped {len(missed)} committed changes")
        extra = set(got) - committed[reader.site]
        if extra:
            problems.append(f"{label}: {len(extra)} changes never committed")
        if stamps != sorted(stamps):
            problems.append(f"{label}: lastUpdated went backwards")
    return problems
