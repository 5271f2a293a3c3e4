"""Running a write transaction again when the database broke a deadlock or conflict with it.

Two transactions that lock two sites in opposite orders deadlock on PostgreSQL
(``store.pg_write``); PostgreSQL rolls one back (after ``deadlock_timeout``) and the other goes
on. The one rolled back committed nothing, so running it again is safe and, the other having
finished, succeeds: a laptop never sees the deadlock.

Invariants:
- ``retry_conflicts(run)`` calls ``run`` (one whole write transaction, built afresh from its
  input each time) again only after a ``DatabaseFailure`` with ``conflict`` set, at most
  ``CONFLICT_ATTEMPTS`` times in all, after a short random pause that grows with each attempt
  (so two transactions that deadlocked do not meet again in step). Any other failure, and
  the last conflict, are raised as they are.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sync.gateway.store.base import DatabaseFailure

log = logging.getLogger(__name__)

CONFLICT_ATTEMPTS = 5
PAUSE_S = 0.02  # up to this times the attempt number, at random, before running it again

T = TypeVar("T")


def retry_conflicts(
    run: Callable[[], T],
    *,
    sleep: Callable[[float], None] = time.sleep,
    attempts: int = CONFLICT_ATTEMPTS,
) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return run()
        except DatabaseFailure as err:
            if not err.conflict or attempt == attempts:
                raise
            log.info("write transaction rolled back by the database (%s): run again", err.reason)
            sleep(random.uniform(0, PAUSE_S * attempt))  # noqa: S311 - spreading, not secrecy
    raise AssertionError("unreachable")  # pragma: no cover
