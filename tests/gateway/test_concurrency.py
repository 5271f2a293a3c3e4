"""No lost updates: a reader paging ``_history`` while several devices write sees every
committed version exactly once."""

from __future__ import annotations

import threading
from typing import Any

import requests

from tests.support.gateway import SITE_A, Gateway, create_entry, observation, patient

WRITERS = 4
TRANSACTIONS_PER_WRITER = 15
PAGE = 5


def _writer(
    gateway: Gateway, number: int, committed: list[tuple[str, int]], read_once: threading.Event
) -> None:
    session = gateway.session(gateway.device_a)
    mine: dict[str, int] = {}
    for step in range(TRANSACTIONS_PER_WRITER):
        if step == 1:  # the reader pages while these writers are still at work, on any machine
            read_once.wait(timeout=60)
        entries: list[dict[str, Any]] = []
        if step % 3 == 0 or not mine:  # create two observations in one transaction
            for _ in range(2):
                entry = create_entry(observation("x", f"p{number}", float(step)))
                entry["resource"].pop("id")
                entries.append(entry)
        else:  # update one of mine with ifMatch
            oid = sorted(mine)[step % len(mine)]
            resource = observation(oid, f"p{number}", float(step))
            entries.append(
                {
                    "resource": resource,
                    "request": {
                        "method": "PUT",
                        "url": f"Observation/{oid}",
                        "ifMatch": f'W/"{mine[oid]}"',
                    },
                }
            )
        answer = gateway.post_bundle(session, entries)
        assert answer.status_code == 200, answer.text
        for result in answer.json()["entry"]:
            _rtype, rid, _, version = result["response"]["location"].split("/")
            mine[rid] = int(version)
            committed.append((rid, int(version)))


def _page_until_caught_up(session: requests.Session, url: str, seen: list[tuple[str, int]]) -> str:
    """Follow next links to the end; return the resume link."""
    next_url: str | None = url
    resume = url
    while next_url is not None:
        page = session.get(next_url, timeout=30).json()
        for entry in page["entry"]:
            seen.append((entry["resource"]["id"], int(entry["resource"]["meta"]["versionId"])))
        resume = next(ln["url"] for ln in page["link"] if ln["relation"] == "x-resume")
        next_url = next((ln["url"] for ln in page["link"] if ln["relation"] == "next"), None)
    return resume


def test_concurrent_writers_reader_sees_every_version_exactly_once(gateway: Gateway) -> None:
    gateway.load(*(patient(f"p{n}", SITE_A) for n in range(WRITERS)))
    committed: list[tuple[str, int]] = [(f"p{n}", 1) for n in range(WRITERS)]
    results: list[list[tuple[str, int]]] = [[] for _ in range(WRITERS)]
    errors: list[BaseException] = []
    read_once = threading.Event()

    def run(number: int) -> None:
        try:
            _writer(gateway, number, results[number], read_once)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    reader = gateway.session(gateway.device_a)
    seen: list[tuple[str, int]] = []
    resume = f"{gateway.fhir}/_history?_count={PAGE}"
    passes = 0
    while any(t.is_alive() for t in threads):
        resume = _page_until_caught_up(reader, resume, seen)
        passes += 1
        read_once.set()
    for thread in threads:
        thread.join()
    _page_until_caught_up(reader, resume, seen)  # the last changes after the writers stopped
    assert errors == []
    for result in results:
        committed += result
    assert passes > 1  # the reader really did interleave with the writers
    assert len(seen) == len(set(seen)), "a version was delivered twice"
    assert sorted(seen) == sorted(committed), "a committed version was missed"
    assert len(committed) == WRITERS + sum(len(r) for r in results)
