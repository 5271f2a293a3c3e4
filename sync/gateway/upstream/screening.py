"""The import's NDJSON lines, parsed (and, on a second core, validated) in file order.

A Bulk Data import spends most of its CPU parsing and validating resources and writing them to
the store; the first two need nothing but the line's bytes (``sync.protocol.fhir.screen``), so
where the machine has a second core they run in worker processes while this one writes.

Invariants:
- ``screened`` yields one item per line, in file order: a ``Line`` (the resource, its nesting
  depth, and whether the strict validator already accepted it) or a ``BadLine`` with the same
  reason the in-process parse gives (``ndjson_line_too_large``, ``ndjson_unreadable``,
  ``ndjson_not_a_resource``).
- A line the worker screened is parsed again here from the very same bytes (strict JSON:
  equal value); ``validated`` is True only when the worker's ``validate_resource`` accepted
  it, and the writer then does not validate it again. Every other line is validated by the
  writer, as without a worker: same reason, same JSON path.
- A clinical resource the worker validated and the store's checks accepted comes back as a
  ``ReadyLine``: already ``Serialised`` (checked, its patient and identifiers read), with its
  upstream id and version, and is not parsed here at all (the writer parses ``raw`` only
  where it must rewrite a reference). One the store's checks refuse comes back as a ``Line``,
  and the writer gives the reason. What crosses from the worker is plain tuples of strings
  and bytes (cheap to pickle).
- At most ``IN_FLIGHT`` batches of ``BATCH`` lines are outstanding: memory does not grow with
  the file's size.
- On a one-core machine (or with ``GATEHOUSE_IMPORT_SCREENERS=0``) lines are parsed here. A
  worker that dies (``BrokenProcessPool``) costs nothing but speed: its batches are parsed
  here and the next file starts a new worker.
- Worker processes are spawned (never forked from a process that runs threads) and hold no
  connection, secret or store; only the lines' bytes reach them. A worker exits within a
  second of the gateway process that started it going away, kill -9 included.
- Workers run ``NICENESS`` steps below the gateway process's priority (where the platform has
  ``os.nice``): when the cores are busy, the process that writes the import and answers the
  laptops runs first, and the workers take what it leaves (they run ahead of it, up to
  ``IN_FLIGHT`` batches, so it seldom waits for them).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import orjson

from sync.gateway.store.resources import ResourceError
from sync.gateway.store.serialised import Serialised, serialise
from sync.protocol.fhir.bounded_json import (
    MAX_PAGE_DEPTH,
    BoundedJsonError,
    loads_bounded_with_depth,
)
from sync.protocol.fhir.screen import (
    NOT_A_RESOURCE,
    UNREADABLE,
    screen_parsed,
    watch_parent,
)

BATCH = 256  # lines per task
IN_FLIGHT = 8  # tasks outstanding at once (about 2,000 lines)
NICENESS = 10  # how far below the gateway process's priority the workers run
TOO_LARGE = "ndjson_line_too_large"
ENV_SCREENERS = "GATEHOUSE_IMPORT_SCREENERS"


@dataclass(frozen=True)
class BadLine:
    number: int
    reason: str


@dataclass(frozen=True, slots=True)
class Line:
    """A resource read from an NDJSON line: the nesting depth its bounded parse measured (the
    store's depth check needs no second walk), and whether the strict validator accepted it."""

    resource: dict[str, Any]
    depth: int
    validated: bool = False


@dataclass(frozen=True, slots=True)
class ReadyLine:
    """A line the worker validated and serialised: the resource's upstream id and
    ``meta.versionId``, and ``raw``, its bytes (for the rare writer that must rewrite a
    reference in it)."""

    raw: bytes
    rid: str
    version: str
    serialised: Serialised


# (upstream id, version, then the fields of ``Serialised``)
Ready = tuple[str, str, str, str, tuple[tuple[str, str], ...], bytes, bytes]


def _ready(resource: dict[str, Any], depth: int) -> Ready | None:
    version = (resource.get("meta") or {}).get("versionId")
    if not isinstance(version, str):
        return None
    try:
        serialised = serialise(resource, depth)
    except ResourceError:
        return None  # the writer checks it again and quarantines it with the reason
    if serialised is None:
        return None
    return (str(resource["id"]), version, *serialised)


def ready_line(raw: bytes, ready: Ready) -> ReadyLine:
    """The ``ReadyLine`` of ``raw`` from its worker's ``Ready`` form."""
    return ReadyLine(raw, ready[0], ready[1], Serialised(*ready[2:]))


def screen_and_serialise(lines: list[bytes]) -> list[tuple[str, int, bool, Ready | None]]:
    """One worker task: each line's verdict and, where it is a valid clinical resource the
    store's checks accept, its ``Ready`` form (module docstring)."""
    out: list[tuple[str, int, bool, Ready | None]] = []
    for line in lines:
        (reason, depth, valid), value = screen_parsed(line)
        ready = _ready(value, depth) if value is not None and valid else None
        out.append((reason, depth, valid, ready))
    return out


def _screeners() -> int:
    """Worker processes for screening: two where there is a second core, none on one core.
    Two even on two cores: screening is the import's slower half, and a second worker runs
    whenever the writing thread waits (on its commit's disk writes, for a batch), so the two
    cores stay busy (measured: 90-105 µs a resource against 103-110 µs with one)."""
    configured = os.environ.get(ENV_SCREENERS, "").strip()
    if configured:
        return max(0, int(configured))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 2 if (cores or 1) > 1 else 0


_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _start_worker(parent: int) -> None:
    """Worker initializer: below the gateway's priority, and gone when it is (module
    docstring)."""
    if hasattr(os, "nice"):
        os.nice(NICENESS)
    watch_parent(parent)


def screening_pool() -> ProcessPoolExecutor | None:
    """The process's screening workers (started on first use), or None on a one-core machine."""
    global _pool
    with _lock:
        if _pool is None and (workers := _screeners()) > 0:
            _pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(os.getpid(),),
            )
        return _pool


def _discard(pool: ProcessPoolExecutor) -> None:
    """A broken pool is never used again; the next ``screening_pool`` starts a new one."""
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def _parsed_here(number: int, line: bytes | None) -> Line | BadLine:
    if line is None:
        return BadLine(number, TOO_LARGE)
    try:
        resource, depth = loads_bounded_with_depth(line, max_depth=MAX_PAGE_DEPTH)
    except BoundedJsonError:
        return BadLine(number, UNREADABLE)
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return BadLine(number, NOT_A_RESOURCE)
    return Line(resource, depth)


Batch = list[tuple[int, bytes | None]]
Screened = Line | ReadyLine | BadLine


Task = Future[list[tuple[str, int, bool, Ready | None]]]


def _collect(batch: Batch, task: Task, pool: ProcessPoolExecutor) -> Iterator[Screened]:
    try:
        verdicts = task.result()
    except BrokenProcessPool:
        _discard(pool)
        yield from (_parsed_here(number, line) for number, line in batch)
        return
    for (number, line), (reason, depth, valid, ready) in zip(batch, verdicts, strict=True):
        if line is None:
            yield BadLine(number, TOO_LARGE)
        elif reason:
            yield BadLine(number, reason)
        elif ready is not None:
            yield ready_line(line, ready)
        else:
            yield Line(orjson.loads(line), depth, valid)


def screened(
    numbered: Iterator[tuple[int, bytes | None]], pool: ProcessPoolExecutor | None
) -> Iterator[Screened]:
    """Each numbered line (``bulk.ndjson_lines``; None: over the size bound) as a ``Line``, a
    ``ReadyLine`` (screened by a worker) or a ``BadLine``, in order (module docstring)."""
    if pool is None:
        yield from (_parsed_here(number, line) for number, line in numbered)
        return
    waiting: deque[tuple[Batch, Task]] = deque()
    batch: Batch = []
    working = True

    def submit() -> None:
        nonlocal batch, working
        task: Task = Future()
        if working:
            try:
                task = pool.submit(screen_and_serialise, [line or b"" for _, line in batch])
            except (BrokenProcessPool, RuntimeError):  # broken, or shut down meanwhile
                working = False
        if not working:
            task.set_exception(BrokenProcessPool("no screening worker"))
        waiting.append((batch, task))
        batch = []

    for item in numbered:
        batch.append(item)
        if len(batch) >= BATCH:
            submit()
            if len(waiting) >= IN_FLIGHT:
                yield from _collect(*waiting.popleft(), pool)
    if batch:
        submit()
    while waiting:
        yield from _collect(*waiting.popleft(), pool)
