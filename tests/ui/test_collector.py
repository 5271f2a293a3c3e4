"""Cyclic garbage is collected on the GUI thread only (``client.ui.collector``): a cycle a
worker thread drops is left alone however much that worker allocates, and the GUI thread's
timer collects it."""

from __future__ import annotations

import gc
import threading
from typing import Any

from client.ui.collector import INTERVAL_MS, GuiThreadCollector


def test_a_cycle_dropped_on_a_worker_is_collected_on_the_gui_thread(qtbot: Any) -> None:
    assert not gc.isenabled()  # the collector the app (and tests/ui/conftest.py) starts
    collected_on: list[str] = []

    class Cyclic:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            collected_on.append(threading.current_thread().name)

    def worker() -> None:
        dropped = Cyclic()
        del dropped
        kept = [[n] for n in range(300_000)]  # far past the automatic collector's threshold
        del kept

    thread = threading.Thread(target=worker, name="sync-worker")
    thread.start()
    thread.join(10)
    assert collected_on == []
    qtbot.waitUntil(lambda: bool(collected_on), timeout=3 * INTERVAL_MS)
    assert collected_on == [threading.main_thread().name]


def test_each_tick_collects_the_young_and_every_full_every_th_the_whole_heap(qtbot: Any) -> None:
    freed: list[str] = []

    class Cyclic:
        def __init__(self, name: str) -> None:
            self.me, self.name = self, name

        def __del__(self) -> None:
            freed.append(self.name)

    collector = GuiThreadCollector(full_every=3)
    old = Cyclic("old")
    gc.collect(1)  # it survives the young generations: now in the oldest
    del old
    Cyclic("young")  # dropped at once, a cycle in the youngest generation
    collector.collect()
    assert freed == ["young"]  # a tick: the young only, about a millisecond
    collector.collect()
    assert freed == ["young"]
    collector.collect()  # every third tick here: the whole heap
    assert freed == ["young", "old"]
