"""The upstream lease held for one pass, renewed while the pass runs, and fenced.

Of several gateway processes sharing one database, only the holder of the store's upstream
lease (``store.upstream_tables``: one row, a holder and an expiry) files and imports.

Invariants:
- ``HeldLease`` claims the lease on entry (``upstream_busy`` when another holder's lease has
  not expired) and releases it on exit, whatever happened.
- While held it is renewed every ``ttl / 3`` by a daemon thread, so a step longer than the
  time-to-live (a large import, a slow upstream) never lets another process take over a live
  pass; only a process that is dead, or stalled for longer than ``ttl``, loses it.
- **Fenced.** ``check`` (called by the connection before every upstream request, and at the
  end of the pass) raises ``UpstreamError("upstream_lease_lost")`` once a renewal failed, i.e.
  another process took the lease over. Before a request that writes upstream (anything but
  GET/HEAD), and whenever the thread has not renewed for ``ttl / 2`` (this process stalled),
  it renews first, synchronously, so a process that lost its lease writes nothing more
  upstream; what it left pending is filed by the new holder (conditional creates make a row it
  was filing when it stalled safe to file again).
- Times written to the store are the pass's clock (``now``) moved on by the monotonic time
  elapsed, so a pass started at a given ``now`` renews consistently with it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from types import TracebackType

from sync.gateway.store.sql import SqlStore
from sync.gateway.upstream.errors import UpstreamError

log = logging.getLogger(__name__)

READS = frozenset({"GET", "HEAD"})
LEASE_LOST = "upstream_lease_lost"


class HeldLease:
    def __init__(self, store: SqlStore, holder: str, ttl: dt.timedelta, now: dt.datetime) -> None:
        self._store = store
        self._holder = holder
        self._ttl = ttl
        self._start = now
        self._started = time.monotonic()
        self._renewed = self._started
        self._lost = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="upstream-lease", daemon=True)

    def _now(self) -> dt.datetime:
        return self._start + dt.timedelta(seconds=time.monotonic() - self._started)

    def _renew(self) -> bool:
        with self._lock:
            if self._lost:
                return False
            at = time.monotonic()
            if self._store.claim_upstream_lease(self._holder, self._now(), self._ttl):
                self._renewed = at
                return True
            self._lost = True
            return False

    def _beat(self) -> None:
        interval = self._ttl.total_seconds() / 3
        while not self._stop.wait(interval):
            try:
                if not self._renew():
                    return
            except Exception as err:  # a store hiccup: ``check`` renews synchronously later
                log.warning("upstream lease renewal failed: %s", type(err).__name__)

    def check(self, method: str = "GET") -> None:
        """Raise ``upstream_lease_lost`` unless this pass still holds the lease: asked of the
        store (renewing it) before anything that writes upstream, or when the thread has not
        renewed for half the time-to-live; a read trusts the last renewal."""
        stale = time.monotonic() - self._renewed > self._ttl.total_seconds() / 2
        if stale or method not in READS:
            self.confirm()
        elif self._lost:
            raise UpstreamError(LEASE_LOST)

    def confirm(self) -> None:
        """Renew now, asking the store; raise ``upstream_lease_lost`` if another holds it."""
        if not self._renew():
            raise UpstreamError(LEASE_LOST)

    def __enter__(self) -> HeldLease:
        if not self._store.claim_upstream_lease(self._holder, self._start, self._ttl):
            raise UpstreamError("upstream_busy")
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            if not self._lost:
                self._store.release_upstream_lease(self._holder)
