"""How many syncs one gateway process serves at once (issue 15 item 4: the first-sync herd).

A laptop syncs over one kept-alive connection, one request at a time, so a worker serving many
connections at once only shares its one core ever more thinly: every request of every sync gets
slower, and a herd of a thousand first syncs makes every request take seconds. Instead each
worker serves at most ``slots`` connections at a time and tells the others to come back.

Invariants:
- A connection takes a slot with its first request that finds one free, and holds it until the
  connection closes (the laptop ends its sync, or the server closes it idle after
  ``server.KEEP_ALIVE_S``): a sync that has started is not turned away halfway while its
  connection lasts. (A laptop that opens a new connection mid-sync — it paused for longer
  than its ``REUSE_IDLE_S``, or the connection broke — may be told busy on it, and waits.)
- A request on a connection without a slot while every slot is taken is answered at once,
  before the device is even looked up: ``503`` with reason ``gateway_busy`` and ``Retry-After:
  BUSY_RETRY_AFTER_S`` (shorter than the keep-alive, so the laptop's retry, spread by its
  jitter, usually finds the same connection open). Nothing of the request is processed, so any
  request may be retried.
- The count lives on the worker's event loop (no lock): taken in the ASGI call, given back in
  the protocol's ``connection_lost``, exactly once per connection whatever the order.
- A request that did not come through ``PeerCertH11Protocol`` (no connection in its scope) is
  not counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

CONNECTION_KEY = "gatehouse.connection"
DEFAULT_SLOTS = 32  # per worker with a core of its own; docs/deploy.md (the scale benchmark)
BUSY_RETRY_AFTER_S = 2  # < server.KEEP_ALIVE_S, even spread by the laptop's jitter (x1.5)
BUSY_REASON = "gateway_busy"


def default_slots(workers: int, cores: int | None) -> int:
    """``DEFAULT_SLOTS`` per worker that has a core of its own: more workers than cores share
    the host's ``DEFAULT_SLOTS x cores`` (serving more syncs at once than the cores can run
    only makes every one of them slower)."""
    cores = max(1, cores or 1)
    return max(1, DEFAULT_SLOTS * min(workers, cores) // max(1, workers))


class Connection:
    """One TCP/TLS connection as the capacity gate sees it."""

    def __init__(self) -> None:
        self._gate: Slots | None = None
        self._closed = False

    @property
    def has_slot(self) -> bool:
        return self._gate is not None

    @property
    def is_closed(self) -> bool:
        return self._closed

    def take(self, gate: Slots) -> None:
        self._gate = gate

    def closed(self) -> None:
        """The connection is gone: give its slot back (once)."""
        self._closed = True
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.give_back()


class Slots:
    """At most ``limit`` connections served at once in this worker."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a worker needs at least one slot")
        self.limit = limit
        self.taken = 0
        self.refused = 0  # busy answers given, for the logs

    def try_take(self, connection: Connection) -> bool:
        if connection.has_slot:
            return True
        if connection.is_closed or self.taken >= self.limit:
            return False
        self.taken += 1
        connection.take(self)
        return True

    def give_back(self) -> None:
        self.taken -= 1


class CapacityGate:
    """ASGI middleware: a request runs only on a connection holding a slot."""

    def __init__(self, app: ASGIApp, *, slots: Slots, busy: Callable[[Scope], ASGIApp]) -> None:
        self.app = app
        self.slots = slots
        self._busy = busy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection = scope.get(CONNECTION_KEY)
        if scope["type"] != "http" or not isinstance(connection, Connection):
            await self.app(scope, receive, send)
            return
        if not self.slots.try_take(connection):
            self.slots.refused += 1
            if self.slots.refused % 1000 == 1:
                log.info("all %d slots busy: answered %s", self.slots.limit, BUSY_REASON)
            await self._busy(scope)(scope, receive, send)
            return
        await self.app(scope, receive, send)
