"""``gatehouse-gateway``: set up and serve the gateway.

Commands: ``init --data DIR [--hostname H]…``, ``serve --data DIR [--host] [--port]
[--database URL] [--trusted-proxy ADDR]… [--workers N] [--pool-size P] [--syncs-per-worker S]``
(``workers``, ``capacity``), the
administration commands of ``sync.gateway.admin_cli`` (site, user, enroll-token, policy,
device, audit, seed) and ``upstream set|status|sync`` (``sync.gateway.upstream.cli``).
``serve`` also runs the upstream pass on its poll interval in each worker when an upstream is
configured (one pass at a time across workers: the upstream lease). Never prints key
material; pins are public.

Invariant: a command that fails on purpose (any ``errors.GatewayError``: a refusal, a store or
database failure, a bad data folder) or on a file it cannot read or write prints ONE line to
standard error, ``gatehouse-gateway: refused: <sentence> (<reason>)`` (or ``gatehouse-gateway:
<file>: <why>``), and exits 2; never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sync.gateway import admin_cli, datadir
from sync.gateway.capacity import DEFAULT_SLOTS, default_slots
from sync.gateway.errors import GatewayError, refusal
from sync.gateway.upstream import cli as upstream_cli

POOL_SIZE = 10  # PostgreSQL connections per worker process (store.postgres.POOL_SIZE)


def _init(args: argparse.Namespace) -> int:
    result = datadir.init_data_dir(
        Path(args.data), now=dt.datetime.now(dt.UTC), hostnames=tuple(args.hostname)
    )
    print(f"initialised {args.data}")
    print("SPKI SHA-256 pins for the policy (network.spki_pins):")
    print(f"  current: {result.server_pin}")
    print(f"  backup:  {result.backup_pin}")
    print(f"device CA SPKI SHA-256: {result.ca_pin}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from sync.gateway import workers
    from sync.gateway.store.opening import open_store

    data = Path(args.data)
    if not (data / datadir.CA_CERT).exists():
        raise datadir.DataDirError("not_initialised")
    if args.workers < 1 or args.pool_size < 1 or (args.syncs_per_worker or 1) < 1:
        raise workers.WorkersRefused("bad_workers")
    if args.workers > 1 and not args.database:
        raise workers.WorkersRefused("workers_need_postgresql")
    settings = workers.ServeSettings(
        data=str(data),
        database=args.database,
        trusted_proxies=tuple(args.trusted_proxy),
        pool_size=args.pool_size,
        slots=args.syncs_per_worker or default_slots(args.workers, os.cpu_count()),
    )
    # The schema is created (and the database reached) once, before anything listens.
    open_store(data, args.database, pool_size=1).close()
    if args.database:
        workers.check_capacity(args.database, args.workers, args.pool_size)
    sock = workers.bind_socket(args.host, args.port)
    try:
        if args.workers == 1:
            workers.run_worker(settings, sock)
            return 0
        logging.basicConfig(level=logging.INFO)
        return workers.Supervisor(settings, args.workers, sock).run()
    finally:
        sock.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatehouse-gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create CA, server keys, escrow/audit keys, database")
    init.add_argument("--data", required=True)
    init.add_argument("--hostname", action="append", default=[], help="extra server name")
    init.set_defaults(run=_init)
    serve = commands.add_parser("serve", help="serve mutual TLS 1.3 on HOST:PORT")
    serve.add_argument("--data", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument(
        "--database", default=None, help="postgresql://… URL (default: SQLite in --data)"
    )
    serve.add_argument("--trusted-proxy", action="append", default=[])
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes (more than 1 needs --database)"
    )
    serve.add_argument(
        "--pool-size",
        type=int,
        default=POOL_SIZE,
        help="PostgreSQL connections per worker (workers x this must fit max_connections)",
    )
    serve.add_argument(
        "--syncs-per-worker",
        type=int,
        default=None,
        help=(
            "connections each worker serves at once; more are told 503 busy + Retry-After"
            f" (default {DEFAULT_SLOTS}, shared when there are more workers than cores)"
        ),
    )
    serve.set_defaults(run=_serve)
    admin_cli.register(commands)
    upstream_cli.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except GatewayError as err:
        print(f"gatehouse-gateway: {refusal(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a file named on the command line: missing, unreadable, …
        where = f"{err.filename}: " if err.filename else ""
        print(f"gatehouse-gateway: {where}{err.strerror or type(err).__name__}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
