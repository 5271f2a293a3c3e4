"""``WriteTx.put_many`` (the import's and the seed's batched write) leaves exactly the rows that
``put`` one by one leaves: resources, history, the change feed, identifiers and patient stays,
the same versions, seqs and times, and the same error (with nothing written) where ``put``
refuses, whatever mix of patients, moves, repeats and unknown patients a batch holds; and the
same again when its clinical resources come ``Serialised`` (the import's, from its worker),
their stored JSON equal in value."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings

from sync.gateway.store.sqlite import SqliteStore
from tests.support.put_many import BACK_ELSEWHERE, Clock, apply_batch, batches, sqlite_tables


def _same_rows_both_ways(batches: list[list[Any]], *, serialised: bool) -> None:
    """Each batch written with ``put`` one by one into one store and with ``put_many`` (its
    clinical resources ``Serialised`` when ``serialised``: their JSON compared as values)
    into another: the same outcome each time, the same rows at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        one_path, many_path = Path(tmp) / "one.sqlite3", Path(tmp) / "many.sqlite3"
        one = SqliteStore(one_path, clock=Clock())
        many = SqliteStore(many_path, clock=Clock())
        try:
            for batch in batches:
                expected = apply_batch(one, batch, many=False)
                assert apply_batch(many, batch, many=True, serialised=serialised) == expected
            assert sqlite_tables(many_path, parsed=serialised) == sqlite_tables(
                one_path, parsed=serialised
            )
        finally:
            one.close()
            many.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
@example(BACK_ELSEWHERE)
def test_put_many_writes_exactly_what_put_one_by_one_writes(batches: list[list[Any]]) -> None:
    _same_rows_both_ways(batches, serialised=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_put_many_of_serialised_resources_writes_what_put_of_the_dicts_writes(
    batches: list[list[Any]],
) -> None:
    _same_rows_both_ways(batches, serialised=True)
