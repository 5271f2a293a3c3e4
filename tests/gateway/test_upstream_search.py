"""Keyset search against an upstream holding more records at one ``lastUpdated`` instant than
it returns in a page (a migration loaded in one transaction: every record shares its commit
instant). A stand-in TLS server, because neither third-party server here caps its pages below
what such a test can fill in seconds: it caps ``_count`` at 50, pages by offset with ``next``
links, and honours ``_lastUpdated`` ``ge``/``gt``/``eq`` and ``_sort``.

The stand-in sends ``lastUpdated`` to the microsecond, some records a few hundred microseconds
apart within one millisecond: what ``eq`` and ``gt`` to the millisecond mean must hold them all.

Before the instant was listed on its own, such a search stopped with ``keyset_stuck`` and that
type's pass failed; a reconciliation could not run at all."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
import pytest

from sync.gateway.upstream.config import load_config
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.opening import open_connection
from sync.gateway.upstream.search import keyset_search
from sync.protocol.fhir.validate import parse_instant
from tests.support.upstream import STAND_IN_BASE as BASE
from tests.support.upstream import stand_in_upstream

CAP = 50
JSON = {"Content-Type": "application/fhir+json"}
MIGRATED = dt.datetime(2026, 3, 1, 9, 30, 0, 123000, tzinfo=dt.UTC)


class Upstream:
    """Observations with their ``lastUpdated``; ``on_page`` runs before each page is cut."""

    def __init__(self, stamps: dict[str, dt.datetime]) -> None:
        self.stamps = dict(stamps)
        self.on_page: Callable[[int], None] = lambda offset: None
        self.pages = 0

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        parts = urlsplit(path)
        if parts.path != f"{BASE}/Observation":
            return 404, JSON, b"{}"
        query = dict(parse_qsl(parts.query))
        offset = int(query.get("_offset", "0"))
        self.on_page(offset)
        self.pages += 1
        rows = sorted(self.stamps.items(), key=lambda kv: (kv[1], kv[0]))
        if query.get("_sort") == "_id":
            rows.sort(key=lambda kv: kv[0])
        bound = query.get("_lastUpdated")
        if bound:  # a bound to the millisecond covers that whole millisecond
            op, moment = bound[:2], parse_instant(bound[2:])
            test = {"ge": dt.datetime.__ge__, "gt": dt.datetime.__gt__, "eq": dt.datetime.__eq__}
            rows = [kv for kv in rows if test[op](_to_millisecond(kv[1]), moment)]
        count = min(int(query.get("_count", "20")), CAP)
        page = rows[offset : offset + count]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": _observation(rid, at), "search": {"mode": "match"}}
                      for rid, at in page],
        }  # fmt: skip
        if offset + count < len(rows):
            following = {**query, "_offset": str(offset + count)}
            bundle["link"] = [
                {"relation": "next", "url": f"{BASE}/Observation?{urlencode(following)}"}
            ]
        return 200, JSON, orjson.dumps(bundle)


def _to_millisecond(at: dt.datetime) -> dt.datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _observation(rid: str, at: dt.datetime) -> dict[str, Any]:
    """Its ``lastUpdated`` to the microsecond, as some servers send it."""
    stamp = at.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return {"resourceType": "Observation", "id": rid, "meta": {"lastUpdated": stamp}}


def _read_all(tmp_path: Path, upstream: Upstream, **search: Any) -> list[dict[str, Any]]:
    data, _, serving = stand_in_upstream(tmp_path, upstream.handle)
    try:
        with open_connection(load_config(data)) as connection:
            return [
                r for page in keyset_search(connection, "Observation", {}, **search) for r in page
            ]
    finally:
        serving.close()


def _migration(n: int) -> dict[str, dt.datetime]:
    stamps = {f"m{i:04d}": MIGRATED for i in range(n)}
    later = MIGRATED + dt.timedelta(microseconds=400)  # the same millisecond
    stamps |= {f"u{i}": later for i in range(5)}
    stamps |= {f"a{i}": MIGRATED - dt.timedelta(minutes=1 + i) for i in range(3)}
    stamps |= {f"z{i}": MIGRATED + dt.timedelta(minutes=1 + i) for i in range(3)}
    return stamps


def test_more_records_at_one_instant_than_a_page_holds_are_each_read_once(
    tmp_path: Path,
) -> None:
    upstream = Upstream(_migration(130))
    read = _read_all(tmp_path, upstream)
    ids = [str(r["id"]) for r in read]
    assert sorted(ids) == sorted(upstream.stamps) and len(ids) == len(set(ids))
    assert ids[-3:] == ["z0", "z1", "z2"]  # after the instant, in _lastUpdated order


def test_a_record_edited_mid_listing_neither_hides_another_nor_is_lost(tmp_path: Path) -> None:
    """While the instant's second page is cut, one of its first page's records is edited (it
    moves to a later instant): offset paging then skips a record that stayed. The listing is
    repeated until two agree, so the skipped record is read, and the edit is read after."""
    upstream = Upstream(_migration(130))
    edited = "m0003"

    def edit_once(offset: int) -> None:
        if offset == CAP and upstream.stamps[edited] == MIGRATED:
            upstream.stamps[edited] = MIGRATED + dt.timedelta(minutes=30)

    upstream.on_page = edit_once
    read = _read_all(tmp_path, upstream)
    ids = {str(r["id"]) for r in read}
    assert ids == set(upstream.stamps)  # nothing skipped
    stamps = [r["meta"]["lastUpdated"] for r in read if r["id"] == edited]
    assert parse_instant(stamps[-1]) == MIGRATED + dt.timedelta(minutes=30)  # its edit: last


def test_an_instant_that_never_settles_fails_rather_than_skips(tmp_path: Path) -> None:
    """An upstream whose instant changes at every listing: ``keyset_stuck`` after a bounded
    number of listings, with nothing claimed complete."""
    upstream = Upstream(_migration(130))
    moved = iter(f"m{i:04d}" for i in range(0, 130, 7))

    def keep_moving(offset: int) -> None:
        if offset == CAP:
            upstream.stamps[next(moved)] = MIGRATED + dt.timedelta(hours=1)

    upstream.on_page = keep_moving
    with pytest.raises(UpstreamError) as stuck:
        _read_all(tmp_path, upstream)
    assert stuck.value.reason == "keyset_stuck"
