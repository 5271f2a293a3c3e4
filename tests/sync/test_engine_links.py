"""M3: links a gateway hands back are checked before a cursor is stored; pages cannot loop."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from sync.device.engine import SyncEngine, SyncResult
from sync.device.transport import Transport
from tests.support.memory_replica import MemoryReplica
from tests.support.tls_server import RawTlsServer
from tests.support.transport_pki import Pki, pinned_config, serve


def _history(next_url: str | None, resume: str | None) -> bytes:
    links = [{"relation": "self", "url": "x"}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    if resume:
        links.append({"relation": "x-resume", "url": resume})
    return json.dumps(
        {"resourceType": "Bundle", "type": "history", "link": links, "entry": []}
    ).encode()


def _serve(pki: Pki, body: bytes) -> Iterator[RawTlsServer]:
    def answer(*_: object) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/fhir+json"}, body

    yield from serve(pki, answer)


def _pull_patients(pki: Pki, server: RawTlsServer, replica: MemoryReplica) -> SyncResult:
    with Transport(pinned_config(pki, server.port)) as transport:
        return SyncEngine(transport, replica, resource_types=["Patient"]).run()


@pytest.mark.parametrize(
    "next_url,resume",
    [
        ("https://evil.example/fhir/Patient/_history?_cursor=1", None),
        (None, "https://127.0.0.1:99999x/fhir/Patient/_history"),
        (None, "https://user:pw@127.0.0.1/fhir"),
    ],
)
def test_M3_a_link_outside_the_gateway_is_refused_and_not_stored(
    pki: Pki, next_url: str | None, resume: str | None
) -> None:
    for server in _serve(pki, _history(next_url, resume)):
        replica = MemoryReplica()
        result = _pull_patients(pki, server, replica)
        assert result.failed_phases == {"pull": "bad_link"}
        assert replica.cursors == {}  # nothing poisoned for the next sync


def test_M3_a_next_link_that_loops_is_stopped(pki: Pki) -> None:
    loop = "/fhir/Patient/_history?_cursor=same"
    for server in _serve(pki, _history(loop, None)):
        replica = MemoryReplica()
        result = _pull_patients(pki, server, replica)
        assert result.failed_phases == {"pull": "bad_link"}
        pages = [path for _, path, _ in server.requests if not path.endswith("/metadata")]
        assert len(pages) == 2


def test_a_server_without_history_is_read_with_a_lastupdated_search(pki: Pki) -> None:
    """docs/sync.md: no type-level _history → _lastUpdated search; the cursor resumes there."""
    from sync.gateway.seed.generator import generate

    patient = next(
        r for r in generate(sites=1, patients=1, seed=2) if r["resourceType"] == "Patient"
    )
    searchset = json.dumps(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"fullUrl": "Patient/x", "resource": patient, "search": {"mode": "match"}}],
        }
    ).encode()
    paths: list[str] = []

    def answer(method: str, path: str, *_: object) -> tuple[int, dict[str, str], bytes]:
        if path.endswith("/metadata"):  # a server that does not describe itself: probed
            return 404, {"Content-Type": "application/fhir+json"}, b"{}"
        paths.append(path)
        if "/_history" in path:
            return (
                404,
                {"Content-Type": "application/fhir+json"},
                b'{"resourceType": "OperationOutcome"}',
            )
        return 200, {"Content-Type": "application/fhir+json"}, searchset

    for server in serve(pki, answer):
        replica = MemoryReplica()
        for _ in range(2):
            result = _pull_patients(pki, server, replica)
            assert result.ok, result.failed_phases
            # The search cannot see deletions; the id check of every held Patient that follows
            # it does, so the caseload is confirmed (issue 13 item 4).
            assert result.caseload_confirmed
            assert result.reconciled["Patient"]["listed"] == 1
        assert [r["id"] for r in replica.of_type("Patient")] == [patient["id"]]
        cursor = replica.cursors["history:Patient"]
        assert cursor.startswith("fhir/Patient?") and "_lastUpdated=ge" in cursor
        searches = [path for path in paths if "_elements=" not in path]
        listings = [path for path in paths if "_elements=" in path]
        assert searches[0].startswith("/fhir/Patient/_history")
        assert searches[1].startswith("/fhir/Patient?_sort=_lastUpdated")
        assert "_lastUpdated=ge" in searches[2]  # the second sync resumed from the cursor
        assert len(listings) == 2  # one id check of the held patients per sync


def test_issue13_a_patient_id_check_that_does_not_add_up_removes_nothing(pki: Pki) -> None:
    """The id check of the held Patients removes those the server no longer has, but only
    when its answer adds up: one whose Bundle.total exceeds what it sent (a server that
    returns one patient and says there are two), or that holds an id it was not asked for (a
    server ignoring ``_id``), is an error: nothing is removed, the caseload is not
    confirmed."""
    from sync.gateway.seed.generator import generate

    first, second = [
        r for r in generate(sites=1, patients=2, seed=3) if r["resourceType"] == "Patient"
    ]
    second["meta"] = dict(second["meta"], lastUpdated=first["meta"]["lastUpdated"])  # sorted
    mode = ["short"]
    stranger = dict(first, id="not-asked-for")

    def searchset(patients: list[dict[str, object]], total: int) -> bytes:
        entries = [{"resource": p, "search": {"mode": "match"}} for p in patients]
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": total, "entry": entries}
        return json.dumps(bundle).encode()

    def answer(method: str, path: str, *_: object) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/fhir+json"}
        if path.endswith("/metadata") or "/_history" in path:
            return 404, headers, b'{"resourceType": "OperationOutcome"}'
        if "_elements=" in path and mode[0] == "short":
            return 200, headers, searchset([first], total=2)  # the second is "somewhere"
        if "_elements=" in path and mode[0] == "ignores_id":
            return 200, headers, searchset([first, stranger], total=2)  # _id not applied
        if "_elements=" in path:
            return 200, headers, searchset([first], total=1)  # the second was deleted
        return 200, headers, searchset([first, second], total=2)

    for server in serve(pki, answer):
        replica = MemoryReplica()
        for mode[0] in ("short", "ignores_id"):
            result = _pull_patients(pki, server, replica)
            assert result.failed_types == {"Patient": "incomplete_pull"}
            assert not result.caseload_confirmed
            assert {r["id"] for r in replica.of_type("Patient")} == {first["id"], second["id"]}
        mode[0] = "honest"
        result = _pull_patients(pki, server, replica)
        assert result.ok and result.caseload_confirmed
        assert {r["id"] for r in replica.of_type("Patient")} == {first["id"]}
