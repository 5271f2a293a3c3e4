"""Checks shared by the SQLite and PostgreSQL store tests (one property, two engines)."""

from __future__ import annotations

import threading
import time

import pytest

from sync.gateway.store.base import DatabaseFailure, HistoryQuery, SearchQuery, Store, StoreError
from sync.gateway.store.loader import load_resources
from tests.support.gateway import SITE_A, observation


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


def assert_a_failed_write_leaves_nothing(store: Store, other: Store) -> None:
    """A write transaction that fails half-way commits none of its writes and releases the
    writer lock: ``other`` (the same store, or a second one on the database) sees nothing of
    it and can write at once. Needs patient ``p1`` in ``SITE_A``."""
    head = store.head_seq()
    with pytest.raises(StoreError) as err, store.write() as tx:
        tx.put("Observation", "o1", observation("o1", "p1"))
        tx.put("Observation", "o2", observation("o2", "nobody"))
    assert err.value.reason == "unknown_patient"
    assert other.head_seq() == head and other.read("Observation", "o1") is None
    assert other.search(SearchQuery(rtype="Observation", site=SITE_A, count=10)) == []
    load_resources(other, [observation("o3", "p1")])  # the lock was released
    assert store.head_seq() == head + 1


def assert_a_writer_waiting_too_long_gives_up_busy(first: Store, second: Store) -> None:
    """While ``first`` holds a write transaction, ``second`` (configured with a short lock
    wait) gives up with ``StoreError("database_busy")``, writing nothing; ``first`` commits."""
    with first.write() as tx:
        tx.put("Observation", "held", observation("held", "p1"))
        with pytest.raises(StoreError) as err, second.write() as other:
            other.put("Observation", "late", observation("late", "p1"))
    assert isinstance(err.value, DatabaseFailure) and err.value.reason == "database_busy"
    assert second.read("Observation", "held") is not None
    assert second.read("Observation", "late") is None
