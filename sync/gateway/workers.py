"""``serve --workers N``: N gateway processes on one listening socket and one PostgreSQL.

The parent binds the socket once, then starts N worker processes (``spawn``: a fresh
interpreter each, no state copied from the parent) that each open their own store (a bounded
pool of ``pool_size`` connections), build their own TLS context and serve the same socket with
uvicorn and ``PeerCertH11Protocol``; the kernel hands each new connection to one of them.

Invariants:
- Nothing another process needs lives in a worker's memory. What is in process memory, and why
  that is safe (issue 15 item 1): ``DeviceAuthMiddleware._seen`` (when this process last wrote
  a device's ``last_seen``: at most one write per device per minute PER PROCESS, so N
  processes write at most N a minute); ``users._DUMMY_HASHES`` (a random hash for unknown users,
  any process's serves); the store's next ``ANALYZE`` threshold and its statistics thread (an
  extra ANALYZE is harmless);
  the statement cache of ``to_pg_sql``. Enrolment tokens, bearer sessions, the sign-in throttle,
  audit chain state (compare-and-set), commands, policies and alerts are all in the database;
  the trusted-time nonce is echoed in a signed answer and never stored. The background work
  (the upstream pass, the statistics refresh) may run in every process: the upstream pass
  runs only under the store's upstream lease, so nothing must run in one process.
- More than one worker needs PostgreSQL (``workers_need_postgresql``): the SQLite store
  serialises its writers with a lock inside ONE process.
- Before any worker starts, ``workers x pool_size`` must fit in the server's
  ``max_connections`` minus its reserved slots and ``RESERVE_CONNECTIONS`` (for an operator,
  ``psql``, backups and a rolling restart); otherwise ``pool_exceeds_max_connections``.
- The parent restarts a worker that dies (a crash, the OOM killer, ``kill -9``) after
  ``RESTART_DELAY_S``; the other workers keep serving meanwhile. SIGTERM or SIGINT to the parent
  stops every worker (uvicorn's graceful shutdown) and then the parent.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import uvicorn

from sync.gateway.capacity import DEFAULT_SLOTS
from sync.gateway.errors import GatewayError

log = logging.getLogger(__name__)

BACKLOG = 2048  # the kernel's queue of new connections on the shared socket
ACCEPT_BATCH = 8  # connections one worker accepts at a time (see SharedSocketServer)
RESERVE_CONNECTIONS = 10  # kept free for an operator, psql, backups, a rolling restart
RESTART_DELAY_S = 1.0
POLL_S = 0.2
STOP_TIMEOUT_S = 15.0


class WorkersRefused(GatewayError):
    """``serve --workers`` cannot run as asked; ``reason`` says why."""


@dataclass(frozen=True)
class ServeSettings:
    """What every worker needs to build its gateway (picklable: it crosses ``spawn``)."""

    data: str
    database: str | None
    trusted_proxies: tuple[str, ...]
    pool_size: int
    slots: int = DEFAULT_SLOTS  # connections served at once per worker (``capacity``)
    log_level: str = "info"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that worker processes can share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP,
    # and without it every answer written in two parts waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def connection_budget(max_connections: int, reserved: int) -> int:
    """How many connections the gateway processes together may hold (the pool formula:
    workers x pool_size <= max_connections - superuser_reserved_connections - RESERVE)."""
    return max_connections - reserved - RESERVE_CONNECTIONS


def check_capacity(dsn: str, workers: int, pool_size: int) -> None:
    """Refuse before serving when ``workers x pool_size`` cannot fit on the server."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT name, setting FROM pg_settings"
                " WHERE name IN ('max_connections', 'superuser_reserved_connections')"
            ).fetchall()
    except psycopg.Error:
        raise WorkersRefused("database_unavailable") from None
    settings = {str(name): int(value) for name, value in rows}
    budget = connection_budget(
        settings.get("max_connections", 100), settings.get("superuser_reserved_connections", 3)
    )
    if workers * pool_size > budget:
        log.error(
            "%d workers x %d connections exceed the %d the server allows the gateway",
            workers,
            pool_size,
            budget,
        )
        raise WorkersRefused("pool_exceeds_max_connections")


def run_worker(settings: ServeSettings, sock: socket.socket) -> None:
    """One worker process: its own store, TLS context and app, serving the shared socket."""
    from sync.gateway import datadir
    from sync.gateway.authority import load_authority
    from sync.gateway.server import (
        build_app,
        build_ssl_context,
        parse_trusted_proxies,
        uvicorn_config,
    )
    from sync.gateway.store.opening import open_store
    from sync.gateway.store.sql import SqlStore
    from sync.gateway.upstream.worker import start_worker

    logging.basicConfig(level=settings.log_level.upper())
    data = Path(settings.data)
    store = open_store(data, settings.database, pool_size=settings.pool_size)
    # Every worker runs the upstream poll when one is configured; the upstream lease lets one
    # pass run at a time across all of them (sync.gateway.store.upstream_tables).
    upstream = start_worker(data, store if isinstance(store, SqlStore) else None)
    try:
        context = build_ssl_context(
            data / datadir.SERVER_CERT, data / datadir.SERVER_KEY, data / datadir.CA_CERT
        )
        authority = load_authority(data)
        app = build_app(
            store,
            ca_cert=authority.ca_cert,
            authority=authority,
            trusted_proxies=parse_trusted_proxies(settings.trusted_proxies),
            slots=settings.slots,
        )
        host, port = sock.getsockname()[:2]
        config = uvicorn_config(app, context, host=host, port=port, log_level=settings.log_level)
        config.backlog = ACCEPT_BATCH
        SharedSocketServer(config).run(sockets=[sock])
    finally:
        if upstream is not None:
            upstream.stop()
        store.close()


class SharedSocketServer(uvicorn.Server):
    """uvicorn on a socket shared by several workers, taking few connections at a time.

    asyncio accepts up to ``backlog`` connections each time the socket is ready, so one worker
    with uvicorn's default (2048) could take a whole burst of new laptops for itself and
    handshake them one after another while the other workers idle. The server starts with
    ``backlog = ACCEPT_BATCH`` (asyncio's batch), then the kernel queue is set back to
    ``BACKLOG`` on the shared socket."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for sock in sockets or ():
            sock.listen(BACKLOG)


class Supervisor:
    """Starts ``workers`` processes on ``sock``, restarts any that dies, stops them all."""

    def __init__(self, settings: ServeSettings, workers: int, sock: socket.socket) -> None:
        self._settings = settings
        self._sock = sock
        self._context = multiprocessing.get_context("spawn")
        self._slots: list[BaseProcess | None] = [None] * workers
        self._stopping = False

    def _start(self, slot: int) -> None:
        process = self._context.Process(
            target=run_worker,
            args=(self._settings, self._sock),
            name=f"gatehouse-gateway-worker-{slot}",
            daemon=False,
        )
        process.start()
        self._slots[slot] = process
        log.info("worker %d running as pid %s", slot, process.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for slot in range(len(self._slots)):
                self._start(slot)
            while not self._stopping:
                time.sleep(POLL_S)
                for slot, process in enumerate(self._slots):
                    if process is not None and not process.is_alive() and not self._stopping:
                        log.warning(
                            "worker %d (pid %s) exited with %s; restarting it",
                            slot,
                            process.pid,
                            process.exitcode,
                        )
                        process.close()
                        time.sleep(RESTART_DELAY_S)
                        if not self._stopping:
                            self._start(slot)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _stop_all(self) -> None:
        running = [p for p in self._slots if p is not None and p.is_alive()]
        for process in running:
            process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in running:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)
