"""The import's NDJSON lines screened in a worker process (``upstream.screening``): the same
items in the same order as parsing them here, ``validated`` only for what the strict validator
accepts, a clinical resource that the validator and the store's checks accept already
serialised (``ReadyLine``), and nothing lost when the worker is killed mid-file."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.gateway.store.resources import ResourceError, check_resource
from sync.gateway.store.serialised import serialise
from sync.gateway.upstream import bulk, screening
from sync.gateway.upstream.bulk import ndjson_lines
from sync.gateway.upstream.screening import BadLine, Line, ReadyLine, screened
from sync.protocol.fhir.validate import InvalidResource, validate_resource
from sync.protocol.fhir.vocabulary import CLINICAL_TYPES
from tests.support.gateway import SITE_A, observation, patient


def _upstream(resource: dict[str, object]) -> dict[str, object]:
    """As an upstream serves it: with ``meta`` (the validator requires it)."""
    return {**resource, "meta": {"versionId": "1", "lastUpdated": "2026-03-01T09:00:00Z"}}


def _deep(levels: int) -> dict[str, object]:
    value: dict[str, object] = {"resourceType": "Observation", "id": "deep"}
    node = value
    for _ in range(levels):
        child: dict[str, object] = {}
        node["extension"] = child
        node = child
    return value


def _bad_code() -> dict[str, object]:
    resource = _upstream(observation("o-bad", "p1"))
    resource["status"] = "not-a-status"
    return resource


def _long_system() -> dict[str, object]:
    resource = _upstream(observation("o-long", "p1"))
    resource["identifier"] = [{"system": "urn:" + "x" * 300, "value": "v"}]
    return resource


LINES: list[bytes] = [
    orjson.dumps(_upstream(patient("p1", SITE_A))),
    orjson.dumps(_upstream(observation("o1", "p1"))),
    orjson.dumps(_bad_code()),  # parses, fails validation: the writer quarantines it
    b'{"resourceType": "Observation", "id": "o2", "id": "twice"}',  # duplicate key
    b"{not json",
    b"[1, 2, 3]",
    b'{"id": "no-type"}',
    orjson.dumps(_deep(200)),  # past the page depth: unreadable
    orjson.dumps(_deep(40)),  # parses; the store's depth check refuses it
    orjson.dumps(_long_system()),  # valid; the store's identifier check refuses it
]


def _resource(item: Line | ReadyLine) -> dict[str, object]:
    return item.resource if isinstance(item, Line) else orjson.loads(item.raw)


def _numbered(lines: list[bytes]) -> Iterator[tuple[int, bytes | None]]:
    return ndjson_lines(iter([b"\n".join(lines) + b"\n"]), max_line=4096)


def _valid(resource: dict[str, object]) -> bool:
    try:
        validate_resource(resource)
    except InvalidResource:
        return False
    return True


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    workers = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    yield workers
    workers.shutdown()


def test_a_worker_gives_the_same_lines_in_the_same_order_as_parsing_here(
    pool: ProcessPoolExecutor,
) -> None:
    lines = [*LINES, b"x" * 5000]  # over the line bound
    here = list(screened(_numbered(lines), None))
    there = list(screened(_numbered(lines), pool))
    # the Patient, the Observation (serialised), the bad code, five unreadable, too deep, a
    # system too long for the store, a line too long
    assert [type(item) for item in there] == [
        Line,
        ReadyLine,
        Line,
        *[BadLine] * 5,
        Line,
        Line,
        BadLine,
    ]
    assert [type(item) for item in here] == [Line] * 3 + [BadLine] * 5 + [Line] * 2 + [BadLine]
    for mine, theirs in zip(here, there, strict=True):
        if isinstance(mine, BadLine):
            assert theirs == mine
            continue
        assert isinstance(theirs, Line | ReadyLine)
        assert _resource(theirs) == mine.resource
        assert not mine.validated  # parsed here: the writer validates
        if isinstance(theirs, ReadyLine):
            meta = mine.resource["meta"]
            assert (theirs.rid, theirs.version) == (mine.resource["id"], meta["versionId"])
            assert theirs.serialised == serialise(mine.resource, mine.depth)
            continue
        assert theirs.depth == mine.depth
        assert theirs.validated == _valid(mine.resource)
        if theirs.validated and mine.resource["resourceType"] in CLINICAL_TYPES:
            with pytest.raises(ResourceError):  # why it was not serialised: the writer says
                check_resource(mine.resource, depth=mine.depth)
    reasons = [item.reason for item in there if isinstance(item, BadLine)]
    assert reasons == [
        "ndjson_unreadable",
        "ndjson_unreadable",
        "ndjson_not_a_resource",
        "ndjson_not_a_resource",
        "ndjson_unreadable",
        "ndjson_line_too_large",
    ]
    assert [isinstance(item, Line) and item.validated for item in there] == [
        True,
        False,
        False,
        *[False] * 5,
        False,
        True,
        False,
    ]


def test_the_next_file_is_requested_before_the_last_lines_of_the_one_before_are_taken(
    pool: ProcessPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export's files are one stream to the workers (``bulk.read_ndjson``): the next file is
    requested and screened while the writer still takes the lines of the one before; read one
    at a time, the workers would sit idle at the end of every file. Each line keeps its file."""
    files = {
        name: [orjson.dumps(_upstream(observation(f"{name}{i}", "p1"))) for i in range(30)]
        for name in ("a", "b", "c")
    }
    events: list[str] = []

    def file_lines(_connection: Any, url: str, _with_token: bool) -> Iterator[Any]:
        events.append(f"request {url}")
        yield from _numbered(files[url])

    monkeypatch.setattr(bulk, "_file_lines", file_lines)
    got = []
    for index, item in bulk.read_ndjson(cast(Any, None), ["a", "b", "c"], pool):
        events.append(f"took {index}")
        got.append((index, _resource(item)["id"]))
    last_of = {
        index: max(i for i, e in enumerate(events) if e == f"took {index}") for index in (0, 1)
    }
    assert events.index("request b") < last_of[0]
    assert events.index("request c") < last_of[1]
    assert got == [(n, f"{name}{i}") for n, name in enumerate("abc") for i in range(30)]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40).filter(lambda b: b"\n" not in b),
            st.recursive(
                st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["resourceType", "id", "status", "x"]), inner)
                ),
                max_leaves=12,
            ).map(orjson.dumps),
        ),
        max_size=30,
    )
)
def test_whatever_the_lines_the_worker_and_here_agree(
    pool: ProcessPoolExecutor, lines: list[bytes]
) -> None:
    here = list(screened(_numbered(lines), None))
    there = list(screened(_numbered(lines), pool))
    assert [getattr(i, "reason", None) for i in there] == [getattr(i, "reason", None) for i in here]
    for mine, theirs in zip(here, there, strict=True):
        if isinstance(mine, Line):
            assert isinstance(theirs, Line | ReadyLine)
            assert _resource(theirs) == mine.resource
            valid = isinstance(theirs, ReadyLine) or theirs.validated
            assert valid == _valid(mine.resource)


def test_a_worker_killed_mid_file_loses_no_line_and_the_next_file_gets_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(screening, "BATCH", 4)
    monkeypatch.setattr(screening, "IN_FLIGHT", 2)
    monkeypatch.setattr(screening, "_pool", None)
    monkeypatch.setenv(screening.ENV_SCREENERS, "1")
    pool = screening.screening_pool()
    assert pool is not None
    lines = [orjson.dumps(_upstream(observation(f"o{i}", "p1"))) for i in range(60)]
    seen: list[str] = []
    for item in screened(_numbered(lines), pool):
        assert isinstance(item, Line | ReadyLine)
        seen.append(str(_resource(item)["id"]))
        if len(seen) == 10:
            for pid in list(pool._processes):  # the real worker, killed as the OOM killer would
                os.kill(pid, signal.SIGKILL)
    assert seen == [f"o{i}" for i in range(60)]
    assert screening.screening_pool() is not pool  # a new worker for the next file
    again = list(screened(_numbered(lines[:8]), screening.screening_pool()))
    assert all(isinstance(item, ReadyLine) for item in again)
    screening.screening_pool().shutdown()  # type: ignore[union-attr]


_PARENT = """
import sys, time
from sync.gateway.upstream.screening import screened, screening_pool
if __name__ == "__main__":
    pool = screening_pool()
    list(screened(iter([(1, b'{"resourceType": "Patient", "id": "x"}')]), pool))
    print(" ".join(str(pid) for pid in pool._processes), flush=True)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone for our purpose
        return stat.read().split(") ", 1)[1][0] != "Z"


def test_a_gateway_killed_with_minus_9_leaves_no_screening_worker_behind(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    env = {**os.environ, screening.ENV_SCREENERS: "1", "PYTHONPATH": str(Path.cwd())}
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert parent.stdout is not None
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert workers and all(_alive(pid) for pid in workers)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


@pytest.mark.parametrize(("cores", "configured", "expected"), [
    (1, "", 0), (2, "", 2), (8, "", 2), (2, "0", 0), (2, "1", 1),
])  # fmt: skip
def test_two_workers_where_there_is_a_second_core_unless_configured(
    monkeypatch: pytest.MonkeyPatch, cores: int, configured: str, expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    monkeypatch.setenv(screening.ENV_SCREENERS, configured)
    assert screening._screeners() == expected


def test_two_workers_give_every_line_back_in_file_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(screening, "BATCH", 3)
    monkeypatch.setattr(screening, "_pool", None)
    monkeypatch.setenv(screening.ENV_SCREENERS, "2")
    pool = screening.screening_pool()
    assert pool is not None and pool._max_workers == 2
    lines = [orjson.dumps(_upstream(observation(f"o{i}", "p1"))) for i in range(200)]
    lines[57] = b"{not json"
    got = list(screened(_numbered(lines), pool))
    assert isinstance(got[57], BadLine) and got[57].number == 58
    assert [str(_resource(item)["id"]) for i, item in enumerate(got) if i != 57] == [
        f"o{i}" for i in range(200) if i != 57
    ]
    screening._discard(pool)


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="no process priorities here")
def test_workers_run_below_the_gateway_processs_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the cores are busy, the process that writes the import and answers laptops runs
    before the screening workers."""
    monkeypatch.setattr(screening, "_pool", None)
    monkeypatch.setenv(screening.ENV_SCREENERS, "2")
    pool = screening.screening_pool()
    assert pool is not None
    try:
        list(screened(_numbered([orjson.dumps(_upstream(observation("o1", "p1")))]), pool))
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        workers = [os.getpriority(os.PRIO_PROCESS, pid) for pid in pool._processes]
        assert workers and all(nice == min(mine + screening.NICENESS, 19) for nice in workers), (
            mine,
            workers,
        )
    finally:
        screening._discard(pool)
