"""The upstream worker of ``serve``: one pass at start, then one every poll interval.

Invariants:
- A failed pass is recorded (``upstream status`` shows it) and logged by reason code only; the
  worker goes on and tries again at the next interval: the gateway keeps serving laptops
  whatever the upstream does.
- ``stop`` ends the worker at its next wait (a pass in progress finishes first).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from sync.gateway.store.sql import SqlStore
from sync.gateway.upstream.config import load_config
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.passes import run_pass

log = logging.getLogger(__name__)


class UpstreamWorker:
    def __init__(self, data: Path, store: SqlStore | None, poll_s: float) -> None:
        self._data = data
        self._store = store
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upstream", daemon=True)
        self.passes = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                run_pass(self._data, self._store)
            except UpstreamError as err:
                log.warning("upstream pass failed (%s); next try in %s s", err.reason, self._poll_s)
            except Exception:  # never let the worker die: the next pass may succeed
                log.exception("upstream pass crashed")
            self.passes += 1
            self._stop.wait(self._poll_s)


def start_worker(data: Path, store: SqlStore | None) -> UpstreamWorker | None:
    """The worker for ``serve`` when an upstream is configured, started; else None."""
    try:
        config = load_config(data)
    except UpstreamError as err:
        if err.reason != "not_configured":
            log.warning("upstream configuration unreadable (%s): no upstream worker", err.reason)
        return None
    worker = UpstreamWorker(data, store, config.poll_s)
    worker.start()
    return worker
