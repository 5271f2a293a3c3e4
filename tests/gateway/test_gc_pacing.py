"""An import pass runs with the cyclic garbage collector paced for it (``gc_pacing``): raised
thresholds while inside, never disabled, and the process's own thresholds back afterwards,
however the pass ended and however many passes overlapped."""

from __future__ import annotations

import datetime as dt
import gc
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.upstream import load
from sync.gateway.upstream.gc_pacing import IMPORT_THRESHOLDS, paced_for_import

PROCESS_THRESHOLDS = (700, 10, 10)


@pytest.fixture(autouse=True)
def process_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(*PROCESS_THRESHOLDS)
    yield
    gc.set_threshold(*before)


def test_thresholds_are_raised_inside_and_restored_after_an_exception() -> None:
    with pytest.raises(RuntimeError):
        with paced_for_import():
            assert gc.get_threshold() == IMPORT_THRESHOLDS
            raise RuntimeError("the pass failed")
    assert gc.get_threshold() == PROCESS_THRESHOLDS
    assert gc.isenabled()


def test_overlapping_passes_share_the_raised_setting_and_the_last_out_restores() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, tuple[int, int, int]] = {}

    def first() -> None:
        with paced_for_import():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with paced_for_import():
            second_in.set()
            first_out.wait(5)
            seen["after the first left"] = gc.get_threshold()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen["after the first left"] == IMPORT_THRESHOLDS
    assert gc.get_threshold() == PROCESS_THRESHOLDS


class _Cyclic:
    def __init__(self) -> None:
        self.me = self


def test_a_cycle_made_inside_is_still_collected_without_an_explicit_collect() -> None:
    gc.collect()
    with paced_for_import():
        cycle = _Cyclic()
        gone = weakref.ref(cycle)
        del cycle
        assert gone() is not None  # only the cyclic collector can free it
        kept = [[n] for n in range(3 * IMPORT_THRESHOLDS[0])]  # net allocations: a collection
        assert gone() is None
        del kept


def test_an_import_pass_runs_paced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SqliteStore(tmp_path / "gateway.sqlite3")
    now = dt.datetime.now(dt.UTC)
    store.add_site("hmp-brixton", "HMP Brixton", now)
    store.link_site("hmp-brixton", "group", "brixton", now)
    during: list[tuple[int, int, int]] = []

    def the_pass(*args: Any, **kwargs: Any) -> dict[str, int]:
        during.append(gc.get_threshold())
        raise RuntimeError("upstream went away")

    monkeypatch.setattr(load, "_import_pass", the_pass)
    try:
        with pytest.raises(RuntimeError):
            load.import_records(None, store, now=now)  # type: ignore[arg-type]
    finally:
        store.close()
    assert during == [IMPORT_THRESHOLDS]
    assert gc.get_threshold() == PROCESS_THRESHOLDS
