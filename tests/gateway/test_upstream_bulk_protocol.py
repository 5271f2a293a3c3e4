"""Bulk Data from an upstream that misbehaves or is slow (a stand-in TLS server: sekmet-fhir never
does these, and finishes its jobs in about a second): a job that never finishes is polled as its
``Retry-After`` asks and given up at the deadline with a clear reason; an unreadable NDJSON line
is quarantined with its line number and the rest of the file is imported; a gateway killed
while a job runs resumes that job."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sync.gateway import datadir
from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.upstream import bulk
from sync.gateway.upstream.config import load_config, set_upstream
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.opening import open_connection
from sync.gateway.upstream.passes import LEASE_TTL, run_pass
from tests.support.gateway import SITE_A, observation, patient
from tests.support.smart_server import running_smart
from tests.support.tls import make_test_pki
from tests.support.tls_server import RawTlsServer, server_context
from tests.support.upstream import (
    STAND_IN_BASE,
    capability_statement,
    gateway_data,
    signing_jwk,
    stand_in_upstream,
    write_jwk,
)

BASE = STAND_IN_BASE
JSON = {"Content-Type": "application/fhir+json"}


def _statement() -> bytes:
    resources = [
        {"type": "Group", "interaction": [{"code": "read"}], "operation": [{"name": "export"}]},
        *(
            {"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}]}
            for t in ("Patient", "Observation")
        ),
    ]
    return orjson.dumps(capability_statement(resource=resources))


def _group(*patients: str) -> bytes:
    """The stand-in upstream's Group ``g`` with these members."""
    group = {"resourceType": "Group", "id": "g", "type": "person", "actual": True}
    members = [{"entity": {"reference": f"Patient/{pid}"}} for pid in patients]
    return orjson.dumps({**group, "member": members})


def _manifest(origin: str, outputs: list[tuple[str, str]], requires_token: bool = False) -> bytes:
    """A completed export's manifest listing (type, url) files (by default no token needed)."""
    return orjson.dumps(
        {
            "transactionTime": "2026-01-01T00:00:01.000Z",
            "request": f"{origin}/Group/g/$export",
            "requiresAccessToken": requires_token,
            "output": [{"type": rtype, "url": url} for rtype, url in outputs],
            "error": [],
        }
    )


def _one_job(
    route: str,
    headers: dict[str, str],
    origin: str,
    members: tuple[str, ...],
    files_at: list[tuple[str, str]],
    requires_token: bool = False,
) -> Any:
    """The stand-in's answer to its metadata, to Group ``g`` of ``members``, and to one export
    job ``j1`` whose manifest lists ``files_at`` (type, url); None for any other route."""
    if route == "/metadata":
        return 200, JSON, _statement()
    if route == "/Group/g":
        return 200, JSON, _group(*members)
    if route == "/Group/g/$export" and headers.get("prefer") == "respond-async":
        return 202, {"Content-Location": f"{origin}/bulk-status/j1"}, b""
    if route == "/bulk-status/j1":
        return 200, JSON, _manifest(origin, files_at, requires_token)
    return None


def test_a_job_that_never_ends_is_polled_as_asked_then_given_up_at_the_deadline(
    tmp_path: Path,
) -> None:
    def handler(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        return 202, {"Retry-After": "7", "X-Progress": "still collecting"}, b""

    data, server, serving = stand_in_upstream(tmp_path, handler)
    waits: list[float] = []
    clock = [0.0]

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    try:
        with open_connection(load_config(data)) as connection:
            with pytest.raises(UpstreamError) as late:
                bulk.await_manifest(
                    connection,
                    f"https://127.0.0.1:{server.port}/fhir/bulk-status/j1",
                    deadline_s=30,
                    sleep=sleep,
                    clock=lambda: clock[0],
                )
    finally:
        serving.close()
    assert late.value.reason == "export_timeout"
    assert waits == [7, 7, 7, 7]  # Retry-After honoured; the fifth wait would pass 30 s
    assert len(server.requests) == 5


@pytest.mark.parametrize("odd", ["\u00b2", "9" * 5000, "Tue, 99 Foo 2026 25:61:61 GMT", "-5"])
def test_an_odd_retry_after_while_a_job_runs_never_stops_the_poll(tmp_path: Path, odd: str) -> None:
    """The upstream answers its status URL with an unreadable ``Retry-After`` (a superscript
    digit, which ``str.isdigit`` takes for a digit; 5,000 digits; a broken date; a negative
    number), then the manifest: the poll waits within its bounds and reads the manifest."""
    polls: list[int] = []

    def handler(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        polls.append(1)
        if len(polls) < 3:
            return 202, {"Retry-After": odd}, b""
        return 200, JSON, _manifest(f"https://127.0.0.1{BASE}", [])

    data, server, serving = stand_in_upstream(tmp_path, handler)
    waits: list[float] = []
    try:
        with open_connection(load_config(data)) as connection:
            manifest = bulk.await_manifest(
                connection,
                f"https://127.0.0.1:{server.port}/fhir/bulk-status/j1",
                sleep=waits.append,
            )
    finally:
        serving.close()
    assert manifest.outputs == () and len(polls) == 3
    assert len(waits) == 2 and all(bulk.MIN_POLL_S <= w <= bulk.MAX_POLL_S for w in waits)


@given(st.text())
@example("\u00b2")
@example("1" * 400)
def test_any_retry_after_text_is_read_without_error(value: str) -> None:
    asked = bulk._retry_after(value, time.time())
    assert asked is None or asked == asked  # a number, never NaN, never an exception


@contextlib.contextmanager
def _one_pass(
    tmp_path: Path, members: tuple[str, ...], files: dict[str, tuple[str, bytes]]
) -> Iterator[tuple[dict[str, int], SqliteStore]]:
    """One reconciling pass of a fresh store, its site linked to the stand-in's Group ``g`` of
    ``members``, whose one export job lists ``files`` (name: type and NDJSON bytes) in that
    order: the pass's counts and the store (open for the block)."""
    port: list[int] = []

    def handler(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        route = path.split("?")[0].removeprefix(BASE)
        origin = f"https://127.0.0.1:{port[0]}{BASE}"
        files_at = [(t, f"{origin}/bulk-files/j1/{name}.ndjson") for name, (t, _) in files.items()]
        answer = _one_job(route, headers, origin, members, files_at)
        if answer is not None:
            return answer
        if route.startswith("/bulk-files/j1/"):
            name = route.rsplit("/", 1)[1].removesuffix(".ndjson")
            return 200, {"Content-Type": "application/fhir+ndjson"}, files[name][1]
        return 404, JSON, b"{}"

    data, server, serving = stand_in_upstream(tmp_path, handler)
    port.append(server.port)
    store = SqliteStore(tmp_path / "gateway.sqlite3")
    try:
        store.add_site(SITE_A, SITE_A, dt.datetime.now(dt.UTC))
        store.link_site(SITE_A, "group", "g", dt.datetime.now(dt.UTC))
        yield run_pass(data, store, reconcile=True).counts, store
    finally:
        store.close()
        serving.close()


def test_an_unreadable_ndjson_line_is_quarantined_and_the_rest_of_the_file_imported(
    tmp_path: Path,
) -> None:
    good = patient("good", "x")
    other = patient("other", "x")
    good["meta"] = other["meta"] = {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z"}
    obs = observation("obs-good", "good")
    obs["meta"] = {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00.000Z"}
    files = {  # Patient last: read first anyway
        "obs": ("Observation", orjson.dumps(obs)),  # no final newline: still read
        "pat": ("Patient", orjson.dumps(good) + b"\n{not json\n\n" + orjson.dumps(other) + b"\n"),
    }
    with _one_pass(tmp_path, ("good", "other"), files) as (counts, store):
        assert counts["quarantined"] == 1 and counts["written"] == 3
        assert [(q.rtype, q.rid, q.reason) for q in store.upstream_quarantine()] == [
            ("Patient", "ndjson-line-2", "ndjson_unreadable")
        ]
        for rtype, rid in (("Patient", "good"), ("Patient", "other"), ("Observation", "obs-good")):
            assert store.read(rtype, rid) is not None


def test_the_record_files_are_read_as_one_stream_and_each_bad_line_is_named_by_its_file(
    tmp_path: Path,
) -> None:
    """The record files follow one another through the screening workers without a pause;
    each item still belongs to its own file: a bad line is quarantined as its file's type and
    line number, and every good record of every file is written once."""
    pat = patient("p1", "x")
    pat["meta"] = {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z"}
    observations = []
    for i in range(7):
        obs = observation(f"obs-{i}", "p1", value=60.0 + i)
        obs["meta"] = {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z"}
        observations.append(orjson.dumps(obs))
    files = {  # two Observation files and an Encounter file (a type with nothing good)
        "obs-a": ("Observation", b"\n".join([*observations[:3], b"{not json"]) + b"\n"),
        "enc": ("Encounter", b"[1]\n"),
        "patients": ("Patient", orjson.dumps(pat)),
        "obs-b": ("Observation", b"\n".join([b"{bad", *observations[3:]]) + b"\n"),
    }
    with _one_pass(tmp_path, ("p1",), files) as (counts, store):
        assert counts["export_files"] == 4 and counts["written"] == 8
        assert sorted((q.rtype, q.rid, q.reason) for q in store.upstream_quarantine()) == [
            ("Encounter", "ndjson-line-1", "ndjson_not_a_resource"),
            ("Observation", "ndjson-line-1", "ndjson_unreadable"),  # obs-b's first line
            ("Observation", "ndjson-line-4", "ndjson_unreadable"),  # obs-a's last line
        ]
        for i in range(7):
            assert store.read("Observation", f"obs-{i}") is not None


def test_kill_9_while_the_export_job_runs_resumes_that_job_and_imports_each_record_once(
    tmp_path: Path,
) -> None:
    """The gateway is killed while it polls a job the upstream is still running: the next pass
    polls the same job (no second kick-off, whose work the server would do again) and imports
    each record once."""
    people = [patient(p, "x") for p in ("p1", "p2")]
    for one in people:
        one["meta"] = {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z"}
    ready = threading.Event()
    kick_offs: list[str] = []
    port: list[int] = []

    def handler(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        route = path.split("?")[0].removeprefix(BASE)
        origin = f"https://127.0.0.1:{port[0]}{BASE}"
        if route == "/metadata":
            return 200, JSON, _statement()
        if route == "/Group/g":
            return 200, JSON, _group(*(p["id"] for p in people))
        if route == "/Group/g/$export":
            kick_offs.append(path)
            return 202, {"Content-Location": f"{origin}/bulk-status/j{len(kick_offs)}"}, b""
        if route.startswith("/bulk-status/") and not ready.is_set():
            return 202, {"Retry-After": "1", "X-Progress": "collecting"}, b""
        if route.startswith("/bulk-status/"):
            job = route.rsplit("/", 1)[1]
            patients_at = f"{origin}/bulk-files/{job}/Patient.ndjson"
            return 200, JSON, _manifest(origin, [("Patient", patients_at)])
        if route.startswith("/bulk-files/"):
            lines = b"".join(orjson.dumps(p) + b"\n" for p in people)
            return 200, {"Content-Type": "application/fhir+ndjson"}, lines
        return 404, JSON, b"{}"

    data, server, serving = stand_in_upstream(tmp_path, handler)
    port.append(server.port)
    store = SqliteStore(data / datadir.DATABASE)
    store.add_site(SITE_A, SITE_A, dt.datetime.now(dt.UTC))
    store.link_site(SITE_A, "group", "g", dt.datetime.now(dt.UTC))
    store.close()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "sync.gateway.cli", "upstream", "sync", "--data", str(data)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while sum("/bulk-status/" in path for _, path, _ in server.requests) < 2:
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)  # mid-poll: the job is still running upstream
        child.wait(10)
        assert len(kick_offs) == 1
        ready.set()
        store = SqliteStore(data / datadir.DATABASE)
        try:
            later = dt.datetime.now(dt.UTC) + LEASE_TTL * 2  # the dead process's lease expired
            counts = run_pass(data, store, now=later, reconcile=True).counts
            assert len(kick_offs) == 1  # the same job, polled again: not kicked off twice
            assert counts["written"] == 2
            for one in people:
                stored = store.read("Patient", one["id"])
                assert stored is not None and stored.version_id == 1  # once, not twice
        finally:
            store.close()
    finally:
        serving.close()


def test_an_unreadable_line_leaves_the_quarantine_once_a_reconciliation_read_it_all_again(
    tmp_path: Path,
) -> None:
    """The export's ``Patient/ndjson-line-2`` stays listed until a later reconciliation has
    read every record of the site afresh (by id lists): then it is closed ``superseded``, kept
    in the log, and ``upstream status`` no longer lists it."""
    good = patient("good", "x")
    good["meta"] = {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z"}
    obs = observation("obs-good", "good")
    obs["meta"] = {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00.000Z"}
    port: list[int] = []

    def bundle(resources: list[dict[str, Any]]) -> bytes:
        entries = [{"resource": r, "search": {"mode": "match"}} for r in resources]
        return orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries})

    def handler(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        route = path.split("?")[0].removeprefix(BASE)
        origin = f"https://127.0.0.1:{port[0]}{BASE}"
        patients_at = [("Patient", f"{origin}/bulk-files/j1/Patient.ndjson")]
        answer = _one_job(route, headers, origin, ("good",), patients_at)
        if answer is not None:
            return answer
        if route == "/bulk-files/j1/Patient.ndjson":
            return (
                200,
                {"Content-Type": "application/fhir+ndjson"},
                (orjson.dumps(good) + b"\n{not json\n"),
            )
        if route == "/Patient":
            return 200, JSON, bundle([good])
        if route == "/Observation":
            return 200, JSON, bundle([obs])
        if route.count("/") == 1:  # every other type: nothing
            return 200, JSON, bundle([])
        return 404, JSON, b"{}"

    data, server, serving = stand_in_upstream(tmp_path, handler)
    port.append(server.port)
    store = SqliteStore(tmp_path / "gateway.sqlite3")
    try:
        store.add_site(SITE_A, SITE_A, dt.datetime.now(dt.UTC))
        store.link_site(SITE_A, "group", "g", dt.datetime.now(dt.UTC))
        first = dt.datetime.now(dt.UTC)
        assert run_pass(data, store, now=first, reconcile=True).counts["quarantined"] == 1
        assert [q.rid for q in store.upstream_quarantine()] == ["ndjson-line-2"]
        later = first + dt.timedelta(hours=1)
        counts = run_pass(data, store, now=later, reconcile=True).counts
        assert counts["exported_sites"] == 0 and counts["quarantine_closed"] == 1
        assert store.upstream_quarantine() == []
        closed = store.closed_quarantine()
        assert [(q.rtype, q.rid, q.cause, q.cleared_at) for q in closed] == [
            ("Patient", "ndjson-line-2", "superseded", later)
        ]
        assert store.read("Observation", "obs-good") is not None
    finally:
        store.close()
        serving.close()


@pytest.mark.parametrize("requires_token", [False, True])
def test_bulk_files_on_another_origin_are_read_only_from_one_it_named(
    tmp_path: Path, requires_token: bool
) -> None:
    """A manifest whose files are on a storage host: refused (``origin_refused``, nothing asked
    of that host) until IT names that origin (``upstream set --bulk-origin``); then the files
    are read from it under the same CA and with the gateway's client certificate (the storage
    host requires one). The gateway uses SMART Backend Services: the bearer token goes to the
    storage host exactly when the manifest says ``requiresAccessToken: true`` (that host then
    refuses a request without a token it recognises), and never otherwise."""
    good = patient("good", "x")
    good["meta"] = {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z"}
    pki = make_test_pki(tmp_path / "pki")
    private, public = signing_jwk("ES384")
    storage_asked: list[dict[str, str]] = []
    smarts: list[Any] = []  # the token server, once running

    def storage(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        storage_asked.append(headers)
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        if requires_token and bearer not in smarts[0].issued:
            return 401, {"WWW-Authenticate": "Bearer"}, b""
        if path == "/files/Patient.ndjson":
            return 200, {"Content-Type": "application/fhir+ndjson"}, orjson.dumps(good)
        return 404, JSON, b"{}"

    store_server = RawTlsServer(
        server_context(pki.server_cert_path, pki.server_key_path, pki.ca_path), storage
    )
    store_serving = store_server.serve()
    next(store_serving)
    files_origin = f"https://127.0.0.1:{store_server.port}"
    port: list[int] = []

    def upstream(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        route = path.split("?")[0].removeprefix(BASE)
        origin = f"https://127.0.0.1:{port[0]}{BASE}"
        patients_at = [("Patient", f"{files_origin}/files/Patient.ndjson")]
        answer = _one_job(route, headers, origin, ("good",), patients_at, requires_token)
        return (404, JSON, b"{}") if answer is None else answer

    server = RawTlsServer(server_context(pki.server_cert_path, pki.server_key_path, None), upstream)
    serving = server.serve()
    next(serving)
    port.append(server.port)
    data = gateway_data(tmp_path)
    creds = pki.device("gw", "upstream")
    store = SqliteStore(tmp_path / "gateway.sqlite3")
    with running_smart(pki, client_id="gatehouse-gw", public_jwk=public) as smart:
        smarts.append(smart)
        settings: dict[str, Any] = {
            "base": f"https://127.0.0.1:{server.port}{BASE}",
            "ca": str(pki.ca_path),
            "cert": str(creds.cert_path),
            "key": str(creds.key_path),
            "token_url": smart.token_url,
            "client_id": "gatehouse-gw",
            "jwk_path": str(write_jwk(tmp_path / "key.jwk", private)),
        }
        set_upstream(data, **settings)
        try:
            store.add_site(SITE_A, SITE_A, dt.datetime.now(dt.UTC))
            store.link_site(SITE_A, "group", "g", dt.datetime.now(dt.UTC))
            with pytest.raises(UpstreamError) as refused:
                run_pass(data, store, reconcile=True)
            assert refused.value.reason == "origin_refused" and storage_asked == []
            with pytest.raises(UpstreamError) as bad:
                set_upstream(data, **settings, bulk_origins=(f"{files_origin}/files",))
            assert bad.value.reason == "bad_bulk_origin"  # an origin, not a URL with a path
            set_upstream(data, **settings, bulk_origins=(files_origin,))
            counts = run_pass(data, store, reconcile=True).counts
            assert counts["export_files"] == 1 and store.read("Patient", "good") is not None
            assert len(storage_asked) == 1 and smart.issued  # the upstream was asked with one
            sent = storage_asked[0].get("authorization", "").removeprefix("Bearer ")
            if requires_token:
                assert sent in smart.issued
            else:
                assert "authorization" not in storage_asked[0]
        finally:
            store.close()
            serving.close()
            store_serving.close()
