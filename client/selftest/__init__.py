"""``gatehouse --self-test``: prove this installation can do its security work, offline.

This package runs the checks; each group lives in its own module: ``database`` (SQLCipher,
FTS5), ``crypto`` (Argon2id, signed policy), ``tls`` (TLS 1.3), ``os_keyring`` (keyring
backend), ``bundle`` (frozen bundle contents, ``client.never_ship``), ``environment`` (NW-5: no
variable left that loads code or changes trust) and ``gui`` (Qt); ``base``
holds the report and failure types.

Invariants:
- Runs offscreen and without a gateway or network: every check uses a private temporary
  directory (removed afterwards), keys generated at run time and in-memory TLS; no key material
  is committed or printed, and nothing outside the temp directory is written.
- Importing this package imports no Qt: the Qt check imports the UI shim (``client.ui.qt``)
  lazily, so a broken Qt is reported as a failure line, not an import crash. Before any Qt
  object exists, the requested platform plugin must be present on disk, because Qt aborts the
  process (not an exception) when it cannot load one.
- A check passes only by positive evidence: SQLCipher reports 4.x, ``cipher_memory_security``
  reads back 1, the database file does not start with ``SQLite format 3`` and contains no
  plaintext canary, the wrong key is refused; Argon2id reproduces a known answer at the
  product's floor parameters; a policy signed with a fresh Ed25519 key verifies and a tampered
  or foreign-signed copy is refused; TLS 1.3 is negotiated in memory; FTS5 answers a match;
  the keyring resolution never picks a forbidden backend; a QWidget is shown on the platform.
- Every check failure is one :class:`Failure` with a stable ``reason`` code; an unexpected
  exception inside a check is a failure too (``unexpected_error``, exception type only).
- ``main()`` prints exactly one line ``self-test ok (N checks)`` on stdout and returns 0, or one
  ``FAIL`` line per failure and returns 1. Notes and warnings (which keyring backend, none in a
  headless build) go to stderr and never change the exit code.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from client.selftest.base import CheckFailed, Context, Failure, SelfTestReport
from client.selftest.bundle import check_bundle_contents
from client.selftest.crypto import check_argon2id, check_signed_policy
from client.selftest.database import check_fts5, check_sqlcipher
from client.selftest.environment import check_environment
from client.selftest.gui import check_qt
from client.selftest.os_keyring import check_keyring
from client.selftest.tls import check_tls13

__all__ = [
    "CHECKS",
    "CheckFailed",
    "Context",
    "Failure",
    "SelfTestReport",
    "main",
    "run_checks",
    "run_self_test",
]


CHECKS: Final[dict[str, Callable[[Context], None]]] = {
    "environment": check_environment,
    "sqlcipher": check_sqlcipher,
    "fts5": check_fts5,
    "argon2id": check_argon2id,
    "signed_policy": check_signed_policy,
    "tls13": check_tls13,
    "keyring": check_keyring,
    "bundle": check_bundle_contents,
    "qt": check_qt,
}


@contextlib.contextmanager
def _private_workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gatehouse-selftest-") as name:
        os.chmod(name, 0o700)
        yield Path(name)


def run_checks(
    *, now: datetime | None = None, only: Collection[str] | None = None
) -> SelfTestReport:
    """Run the checks (all, or those named in ``only``) and collect the report."""
    now = now if now is not None else datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    report = SelfTestReport()
    with _private_workdir() as workdir:
        for name, check in CHECKS.items():
            if only is not None and name not in only:
                continue
            report.checks.append(name)
            try:
                check(Context(now, workdir, report))
            except CheckFailed as exc:
                report.failures.append(Failure(name, exc.reason, exc.detail))
            except Exception as exc:
                report.failures.append(Failure(name, "unexpected_error", type(exc).__name__))
    return report


def run_self_test(
    *, now: datetime | None = None, only: Collection[str] | None = None
) -> list[Failure]:
    """Every failure of the self-test; an empty list means this installation is sound."""
    return run_checks(now=now, only=only).failures


def main() -> int:
    """``gatehouse --self-test``: exit 0 with one ok line, or 1 with one line per failure."""
    report = run_checks()
    for text in report.notes:
        print(f"note: {text}", file=sys.stderr)
    for text in report.warnings:
        print(f"warning: {text}", file=sys.stderr)
    if report.ok:
        print(f"self-test ok ({len(report.checks)} checks)")
        return 0
    for failure in report.failures:
        print(failure.line())
    return 1
