"""A real PostgreSQL server for the test session (and the benchmarks), in a temp directory.

Guarantees:
- The server is a real ``postgres`` from ``/usr/lib/postgresql/<version>/bin`` (15 preferred),
  listening on 127.0.0.1 on a free port and on a unix socket in its own temp directory; it is
  started at most once per process, lazily, and stopped (and its directory removed) at
  interpreter exit.
- When the binaries are missing (or we run as root and there is no ``postgres`` account to
  drop to), nothing is started and the caller is told why. Under ``make test``
  (``GATEHOUSE_REQUIRE_POSTGRES=1``; ``make sysdeps`` installs PostgreSQL first) a test that
  needs the server then FAILS with that reason, never skips; a plain ``pytest`` run skips with it.
- PostgreSQL refuses to run as root: as root, ``initdb`` and ``pg_ctl`` run through
  ``runuser -u postgres --`` (found on PATH or in /usr/sbin, /sbin, /usr/bin, /bin, so a minimal
  PATH does not lose it) in a directory chowned to ``postgres``.
- Durability is switched off (``fsync=off``): the cluster is disposable test data.
- ``new_database()`` hands every caller a fresh, empty database, so tests never share state.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

PG_ROOT = Path("/usr/lib/postgresql")
PREFERRED_VERSION = "15"
MAX_CONNECTIONS = 400  # several gateways x their threadpools x the writer threads of a test
START_TIMEOUT_S = 60


class PgUnavailable(Exception):
    """No PostgreSQL server can be started here; ``reason`` says why (shown as the skip)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def find_bin_dir() -> Path:
    """The ``bin`` directory of PostgreSQL 15, else of the newest installed version."""
    preferred = PG_ROOT / PREFERRED_VERSION / "bin"
    if (preferred / "initdb").exists() and (preferred / "pg_ctl").exists():
        return preferred
    found = sorted(
        (p.parent for p in PG_ROOT.glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise PgUnavailable(
            f"PostgreSQL server binaries not found under {PG_ROOT}/*/bin (install postgresql-15)"
        )
    return found[-1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PgServer:
    """One running cluster; ``dsn(db)`` is a libpq URL for database ``db`` on 127.0.0.1."""

    bin_dir: Path
    root: Path
    port: int
    as_user: list[str]
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "gh") -> str:
        """Create a fresh empty database and return its DSN."""
        with self._lock:
            name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        subprocess.run(
            [
                *self.as_user,
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            check=False,
            timeout=START_TIMEOUT_S,
        )
        shutil.rmtree(self.root, ignore_errors=True)


RUNUSER_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
REQUIRE_ENV = "GATEHOUSE_REQUIRE_POSTGRES"


def _as_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix that drops root to ``postgres`` (and its uid/gid), or nothing."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        raise PgUnavailable(
            "running as root and there is no 'postgres' account to run the server as "
            "(create it, or run as another user)"
        ) from None
    runuser = find_runuser()
    if runuser is None:
        raise PgUnavailable(
            f"running as root without runuser(1) (looked on PATH and in {', '.join(RUNUSER_DIRS)});"
            " install util-linux"
        )
    return [runuser, "-u", "postgres", "--"], account.pw_uid, account.pw_gid


def find_runuser() -> str | None:
    """runuser(1) on PATH, else where util-linux puts it: a minimal PATH (no /usr/sbin, as a
    newcomer's shell or CI may have) must not make PostgreSQL tests silently skip."""
    found = shutil.which("runuser")
    if found is not None:
        return found
    for folder in RUNUSER_DIRS:
        candidate = Path(folder) / "runuser"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def start_server() -> PgServer:
    """initdb + pg_ctl start a new cluster in a fresh temp directory; raise PgUnavailable."""
    bin_dir = find_bin_dir()
    as_user, uid, gid = _as_user()
    root = Path(tempfile.mkdtemp(prefix="gh-pg-"))
    (root / "sock").mkdir()
    if uid is not None and gid is not None:
        for path in (root, root / "sock"):
            os.chown(path, uid, gid)
    server = PgServer(bin_dir=bin_dir, root=root, port=0, as_user=as_user)
    init = subprocess.run(
        [
            *as_user,
            str(bin_dir / "initdb"),
            "-D",
            str(server.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=START_TIMEOUT_S * 2,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise PgUnavailable(f"initdb failed: {init.stderr.strip()[-500:]}")
    last_error = ""
    for _attempt in range(3):  # a free port can be taken between the probe and the bind
        port = free_port()
        options = (
            f"-p {port} -k {server.socket_dir} -c listen_addresses=127.0.0.1"
            f" -c max_connections={MAX_CONNECTIONS} -c fsync=off -c synchronous_commit=off"
            " -c full_page_writes=off -c shared_buffers=64MB"
        )
        started = subprocess.run(
            [
                *as_user,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(server.data_dir),
                "-l",
                str(root / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=START_TIMEOUT_S * 2,
        )
        if started.returncode == 0:
            server.port = port
            return server
        log = root / "server.log"
        last_error = log.read_text(errors="replace")[-500:] if log.exists() else started.stderr
    shutil.rmtree(root, ignore_errors=True)
    raise PgUnavailable(f"PostgreSQL did not start: {last_error.strip()}")


_shared: PgServer | None = None
_shared_error: PgUnavailable | None = None
_shared_lock = threading.Lock()


def shared_server() -> PgServer:
    """The process-wide server, started on first use and stopped at exit; or PgUnavailable."""
    global _shared, _shared_error
    with _shared_lock:
        if _shared_error is not None:
            raise _shared_error
        if _shared is None:
            try:
                _shared = start_server()
            except PgUnavailable as err:
                _shared_error = err
                raise
            atexit.register(_shared.stop)
        return _shared


def require_server() -> PgServer:
    """``shared_server()`` for tests. Where PostgreSQL cannot run: under ``make test``
    (``GATEHOUSE_REQUIRE_POSTGRES=1``, which installs it first) the test FAILS with the reason,
    so a suite never passes by skipping; elsewhere (a developer without PostgreSQL) it skips
    with the reason."""
    try:
        return shared_server()
    except PgUnavailable as err:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"PostgreSQL is required here ({REQUIRE_ENV}=1): {err.reason}", False)
        pytest.skip(err.reason)
