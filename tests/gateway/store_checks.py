"""Checks shared by the SQLite and PostgreSQL store tests (one property, two engines)."""

from __future__ import annotations

import threading
import time

from sync.gateway.store.base import HistoryQuery, Store
from tests.gateway.conftest import SITE_A, observation


def assert_commit_order_is_seq_order(first: Store, second: Store, *, wait: float) -> None:
    """A transaction that commits later never gets a smaller change seq.

    ``first`` opens a write and holds it; ``second`` tries to write meanwhile. The second
    writer must wait for the writer lock, a reader sees neither change while the first is
    open, and the seqs come out in commit order. ``first`` and ``second`` may be the same
    store (one process) or two stores on one database (two processes).
    """
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow_writer() -> None:
        with first.write() as tx:
            tx.put("Observation", "slow", observation("slow", "p1"))
            holding.set()
            release.wait(wait)
            order.append("slow-commit")

    def fast_writer() -> None:
        with second.write() as tx:
            tx.put("Observation", "fast", observation("fast", "p1"))
        order.append("fast-commit")

    slow = threading.Thread(target=slow_writer)
    slow.start()
    assert holding.wait(wait)
    fast = threading.Thread(target=fast_writer)
    fast.start()
    time.sleep(0.3)
    assert second.history(HistoryQuery(site=SITE_A, count=100, after_seq=1)) == []
    assert order == []  # the fast writer waits for the writer lock
    release.set()
    slow.join(wait)
    fast.join(wait)
    assert order == ["slow-commit", "fast-commit"]
    changes = second.history(HistoryQuery(site=SITE_A, count=100, after_seq=1))
    assert [c.rid for c in changes] == ["slow", "fast"]
    assert changes[0].seq < changes[1].seq
    assert changes[0].last_updated <= changes[1].last_updated
