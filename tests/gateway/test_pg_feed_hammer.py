"""The PostgreSQL change feed under a multi-process hammer (``tests/support/feed_hammer.py``).

Several writer PROCESSES commit concurrently to the same and to different sites (some
transactions touch two sites at once), each transaction held a few ms between taking its
seqs and COMMIT, while reader PROCESSES page every site's feed by cursor. Every reader must
see every committed change of its site exactly once, in increasing seq order, with
``lastUpdated`` never going back. The same run without the site locks (a plain SEQUENCE)
skips changes: the locks, not luck, keep the feed commit-ordered.
"""

from __future__ import annotations

import pytest

from sync.gateway.store.loader import load_resources
from sync.gateway.store.postgres import PgStore
from tests.support.feed_hammer import HammerRun, feed_problems, hammer
from tests.support.gateway import SITE_A, SITE_B, patient
from tests.support.postgres import PgServer, require_server

SITES = (SITE_A, SITE_B, "hmp-charlie")
WRITERS = 4
TRANSACTIONS = 40
PAGE = 3
NAIVE_ATTEMPTS = 3


@pytest.fixture(scope="module")
def pg_server() -> PgServer:
    return require_server()


def _run(pg_server: PgServer, *, naive: bool) -> tuple[HammerRun, dict[str, list[tuple[str, int]]]]:
    dsn = pg_server.new_database("hammer")
    patients = {site: [f"{site}-p{n}" for n in range(3)] for site in SITES}
    store = PgStore(dsn)
    load_resources(store, [patient(pid, site) for site, ids in patients.items() for pid in ids])
    store.close()
    run = hammer(
        dsn,
        patients,
        writers=WRITERS,
        transactions=TRANSACTIONS,
        readers_per_site=1,
        page=PAGE,
        naive=naive,
    )
    initial = {site: [(pid, 1) for pid in ids] for site, ids in patients.items()}
    return run, initial


@pytest.mark.postgres
def test_every_reader_sees_every_committed_change_of_its_site_once_in_seq_order(
    pg_server: PgServer,
) -> None:
    run, initial = _run(pg_server, naive=False)
    assert [w.failures for w in run.writers] == [[]] * WRITERS
    assert sum(len(w.committed) for w in run.writers) >= WRITERS * TRANSACTIONS
    assert len(run.readers) == len(SITES)
    assert all(r.pages > 10 for r in run.readers)  # the readers paged while writers wrote
    assert feed_problems(run, initial) == []  # (a hang fails on the hammer's own 90 s wait)


@pytest.mark.postgres
def test_the_same_hammer_without_site_locks_skips_changes(pg_server: PgServer) -> None:
    """Shows the hammer has teeth. A skip needs a reader to page inside the few ms a later
    seq is committed and an earlier one is not: every run so far had several, but up to
    ``NAIVE_ATTEMPTS`` runs are allowed so that a lucky run cannot fail the suite."""
    problems: list[str] = []
    for _ in range(NAIVE_ATTEMPTS):
        run, initial = _run(pg_server, naive=True)
        problems = feed_problems(run, initial)
        if any("skipped" in p for p in problems):
            return
    raise AssertionError(f"a feed without site locks skipped nothing: {problems}")
