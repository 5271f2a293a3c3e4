"""Issue 15 item 6: ``make test`` never skips the PostgreSQL suite silently.

A newcomer's shell (or CI) may have a minimal PATH without /usr/sbin, where runuser(1) lives;
that used to skip all PostgreSQL gateway tests with "running as root without runuser(1)". And
where PostgreSQL really cannot run, ``make test`` (GATEHOUSE_REQUIRE_POSTGRES=1) fails with the
reason instead of passing on skips.
"""

from __future__ import annotations

import os

import pytest

from tests.support import postgres


def test_runuser_is_found_with_a_minimal_path(monkeypatch: pytest.MonkeyPatch) -> None:
    on_this_machine = [
        f"{d}/runuser" for d in postgres.RUNUSER_DIRS if os.access(f"{d}/runuser", os.X_OK)
    ]
    if not on_this_machine:
        pytest.fail("runuser(1) is not installed here: install util-linux")
    monkeypatch.setenv("PATH", "/nonexistent")
    found = postgres.find_runuser()
    assert found is not None and os.path.isabs(found) and found in on_this_machine


def test_a_postgresql_that_cannot_run_fails_make_test_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unavailable() -> postgres.PgServer:
        raise postgres.PgUnavailable("no PostgreSQL binaries under /usr/lib/postgresql")

    monkeypatch.setattr(postgres, "shared_server", unavailable)
    monkeypatch.setenv(postgres.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="no PostgreSQL binaries"):
        postgres.require_server()
    monkeypatch.delenv(postgres.REQUIRE_ENV)  # a developer's plain pytest run: a skip, saying why
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL binaries"):
        postgres.require_server()
