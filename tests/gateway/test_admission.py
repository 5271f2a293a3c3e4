"""Admitting a device on every request without re-verifying and re-reading it every time
(issue 15): one certificate verification per certificate, one device-state read per
``STATE_TTL_S``, and a revocation still refused on a connection kept alive across it."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sync.gateway import admission, pki
from sync.gateway.server import BackgroundGateway, build_app, build_ssl_context
from sync.gateway.store.base import DeviceAdmission, DeviceRecord
from sync.gateway.store.loader import load_resources
from sync.gateway.store.sql import SqlStore
from sync.gateway.store.sqlite import SqliteStore
from tests.support.gateway import SITE_A, patient
from tests.support.tls import DeviceCredentials, PkiFiles, make_test_pki

ROOT = Path(__file__).resolve().parents[2]


class Counting(SqlStore):
    """The real store (SQLite or PostgreSQL below it), counting the device reads that admitting
    a request makes."""

    reads = 0

    def device(self, device_id: str) -> DeviceRecord | None:
        self.reads += 1
        return super().device(device_id)

    def current_cert_serial(self, device_id: str) -> str | None:
        self.reads += 1
        return super().current_cert_serial(device_id)

    def device_admission(self, device_id: str) -> DeviceAdmission | None:
        self.reads += 1
        return super().device_admission(device_id)


class CountingSqlite(Counting, SqliteStore):
    pass


def _store(tmp_path: Path) -> tuple[Counting, str, str]:
    """The store under test, its backend name and the address another process opens it by."""
    if os.environ.get("GATEHOUSE_TEST_STORE", "sqlite") == "postgres":
        from sync.gateway.store.postgres import PgStore
        from tests.support.postgres import require_server

        class CountingPg(Counting, PgStore):
            pass

        dsn = require_server().new_database()
        return CountingPg(dsn), "postgres", dsn
    path = tmp_path / "gateway.sqlite3"
    return CountingSqlite(path), "sqlite", str(path)


class Clocks:
    """The wall clock (certificate validity) and the monotonic clock (the cache's age)."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)
        self.mono = 1000.0

    def wall(self) -> dt.datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono


@dataclass
class Served:
    pki: PkiFiles
    store: Counting
    backend: str
    address: str
    server: BackgroundGateway
    clocks: Clocks
    device: DeviceCredentials

    def connection(self) -> http.client.HTTPSConnection:
        """One kept-alive connection with the device's certificate."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_path))
        context.load_cert_chain(*self.device.requests_cert)
        return http.client.HTTPSConnection(
            "127.0.0.1", self.server.port, context=context, timeout=10
        )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    files = make_test_pki(tmp_path / "pki")
    store, backend, address = _store(tmp_path)
    store.set_device("dev-a", SITE_A, "active")
    load_resources(store, [patient("p1", SITE_A)])
    clocks = Clocks()
    app = build_app(store, ca_cert=files.ca_cert, clock=clocks.wall, monotonic=clocks.monotonic)
    context = build_ssl_context(files.server_cert_path, files.server_key_path, files.ca_path)
    server = BackgroundGateway(app, context)
    server.start()
    try:
        yield Served(files, store, backend, address, server, clocks, files.device("dev-a", SITE_A))
    finally:
        server.stop()
        store.close()


def _get(conn: http.client.HTTPSConnection, path: str) -> tuple[int, str]:
    conn.request("GET", path)
    answer = conn.getresponse()
    return answer.status, answer.read().decode()


def _reason(body: str) -> str:
    document = json.loads(body)
    if document.get("resourceType") == "OperationOutcome":
        return str(document["issue"][0]["details"]["text"])
    return str(document["error"])


_SET_STATUS = """
import sys
backend, address, device, site, status = sys.argv[1:]
if backend == "postgres":
    from sync.gateway.store.postgres import PgStore as Store
else:
    from sync.gateway.store.sqlite import SqliteStore as Store
store = Store(address)
store.set_device(device, site, status)
store.close()
"""


def _set_status_in_another_process(served: Served, status: str) -> None:
    """What ``gatehouse-gateway device revoke`` does, from a process of its own."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            _SET_STATUS,
            served.backend,
            served.address,
            "dev-a",
            SITE_A,
            status,
        ],
        check=True,
        cwd=ROOT,
        timeout=60,
    )


@pytest.mark.parametrize("status", ["revoked", "wiped"])
def test_a_device_revoked_by_another_process_is_refused_on_its_kept_alive_connection(
    served: Served, status: str
) -> None:
    conn = served.connection()
    try:
        assert _get(conn, "/fhir/Patient/p1")[0] == 200
        socket_before = conn.sock
        _set_status_in_another_process(served, status)
        served.clocks.mono += admission.STATE_TTL_S  # the documented bound has passed
        code, body = _get(conn, "/fhir/Patient/p1")
        assert conn.sock is socket_before  # the same kept-alive TLS connection
        assert (code, _reason(body)) == (403, f"device_{status}")
        assert "Smith" not in body
    finally:
        conn.close()


def test_a_revocation_made_in_this_process_is_refused_on_the_very_next_request(
    served: Served,
) -> None:
    conn = served.connection()
    try:
        assert _get(conn, "/fhir/Patient/p1")[0] == 200
        served.store.set_device("dev-a", SITE_A, "revoked")  # no time passes at all
        code, body = _get(conn, "/fhir/Patient/p1")
        assert (code, _reason(body)) == (403, "device_revoked")
    finally:
        conn.close()


def test_a_kept_alive_sync_reads_the_device_once_and_verifies_its_certificate_once(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified = []
    real_verify = pki.verify_device_certificate

    def counting_verify(*args: object, **kwargs: object) -> pki.DeviceIdentity:
        verified.append(1)
        return real_verify(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pki, "verify_device_certificate", counting_verify)
    monkeypatch.setattr(admission, "verify_device_certificate", counting_verify, raising=False)
    conn = served.connection()
    try:
        for _ in range(10):  # a sync's worth of requests within STATE_TTL_S
            assert _get(conn, "/fhir/Patient/p1")[0] == 200
        assert (served.store.reads, len(verified)) == (1, 1)
        served.clocks.mono += admission.STATE_TTL_S
        assert _get(conn, "/fhir/Patient/p1")[0] == 200
        assert (served.store.reads, len(verified)) == (2, 1)  # re-read, never re-verified
    finally:
        conn.close()


def test_a_remembered_certificate_is_refused_once_it_has_expired(served: Served) -> None:
    conn = served.connection()
    try:
        assert _get(conn, "/fhir/Patient/p1")[0] == 200
        served.clocks.now = served.device.cert.not_valid_after_utc + dt.timedelta(seconds=1)
        code, body = _get(conn, "/fhir/Patient/p1")
        assert (code, _reason(body)) == (403, "certificate_expired")
    finally:
        conn.close()


def test_the_device_state_cache_is_bounded(served: Served) -> None:
    cache = admission.Admission(served.store, served.pki.ca_cert)
    state = cache.read_state("dev-a")
    for i in range(admission.MAX_DEVICES + 10):
        cache._states.put(f"dev-{i}", state)
    assert len(cache._states._items) == admission.MAX_DEVICES
