"""Issue 15: a worker serves at most ``slots`` connections (syncs) at once; the others are told
503 ``gateway_busy`` with ``Retry-After`` before anything of their request is done, and are
served once a slot is free — a sync that has started is never turned away halfway. Real
gateway, real mutual TLS on 127.0.0.1, real store (SQLite or PostgreSQL)."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync.device.transport import JITTER, REUSE_IDLE_S
from sync.gateway.capacity import BUSY_RETRY_AFTER_S, DEFAULT_SLOTS, default_slots
from sync.gateway.server import KEEP_ALIVE_S, BackgroundGateway, build_app, build_ssl_context
from sync.gateway.store.loader import load_resources
from sync.gateway.store.sql import SqlStore
from tests.support.gateway import SITE_A, make_store, patient
from tests.support.tls import DeviceCredentials, PkiFiles, make_test_pki


class Served:
    def __init__(self, files: PkiFiles, store: SqlStore, server: BackgroundGateway) -> None:
        self.files = files
        self.store = store
        self.server = server
        self.laptops = [files.device(f"dev-{i}", SITE_A) for i in range(3)]
        for laptop in self.laptops:
            store.set_device(laptop.device_id, SITE_A, "active")

    def connection(self, laptop: DeviceCredentials) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=str(self.files.ca_path))
        context.load_cert_chain(*laptop.requests_cert)
        return http.client.HTTPSConnection(
            "127.0.0.1", self.server.port, context=context, timeout=10
        )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    files = make_test_pki(tmp_path / "pki")
    store = make_store(tmp_path)
    load_resources(store, [patient("p1", SITE_A)])
    context = build_ssl_context(files.server_cert_path, files.server_key_path, files.ca_path)
    server = BackgroundGateway(build_app(store, ca_cert=files.ca_cert, slots=2), context)
    server.start()
    try:
        yield Served(files, store, server)
    finally:
        server.stop()
        store.close()


def _get(conn: http.client.HTTPSConnection, path: str) -> tuple[int, dict[str, str], str]:
    conn.request("GET", path)
    answer = conn.getresponse()
    headers = {k.lower(): v for k, v in answer.getheaders()}
    return answer.status, headers, answer.read().decode()


def test_a_third_sync_is_told_busy_until_a_slot_is_free_and_started_syncs_go_on(
    served: Served,
) -> None:
    first, second, third = (served.connection(laptop) for laptop in served.laptops)
    try:
        assert _get(first, "/fhir/Patient/p1")[0] == 200
        assert _get(second, "/fhir/metadata")[0] == 200
        # Both slots are held by open syncs: the third laptop is told to come back, at once,
        # with nothing of the patient's record in the answer.
        for path in ("/fhir/Patient/p1", "/device/policy"):
            code, headers, body = _get(third, path)
            assert code == 503
            assert int(headers["retry-after"]) == BUSY_RETRY_AFTER_S < KEEP_ALIVE_S
            document = json.loads(body)
            reason = (
                document["issue"][0]["details"]["text"]
                if path.startswith("/fhir")
                else document["error"]
            )
            assert reason == "gateway_busy"
            assert "Smith" not in body
        # The syncs already running are never turned away halfway.
        for _ in range(3):
            assert _get(first, "/fhir/Patient/p1")[0] == 200
            assert _get(second, "/fhir/Patient/p1")[0] == 200
        # The first laptop ends its sync: the third one's retry on its open connection is served.
        first.close()
        served_now = False
        for _ in range(50):
            code, _, _ = _get(third, "/fhir/Patient/p1")
            if code == 200:
                served_now = True
                break
            assert code == 503
            time.sleep(0.05)  # the server sees the close a moment later
        assert served_now
    finally:
        for conn in (first, second, third):
            conn.close()


def test_the_laptop_reuses_a_connection_only_well_within_the_gateway_keep_alive() -> None:
    """The timeouts both ends rely on, side by side (the laptop's transport cannot import the
    gateway): a laptop drops a connection idle for REUSE_IDLE_S before the gateway closes it
    idle (KEEP_ALIVE_S), and comes back from a busy answer (Retry-After, jittered) soon enough
    to find its connection still open."""
    assert REUSE_IDLE_S + 0.5 <= KEEP_ALIVE_S
    assert BUSY_RETRY_AFTER_S * (1 + JITTER) < REUSE_IDLE_S


def test_more_workers_than_cores_share_the_host_s_slots() -> None:
    """A host serves at most DEFAULT_SLOTS syncs at once per core, however many workers it
    runs: four workers on two cores get half the slots each (the scale benchmark collapsed
    with 4 x 32 syncs at once on 2 cores)."""
    assert [default_slots(workers, 2) for workers in (1, 2, 4)] == [
        DEFAULT_SLOTS,
        DEFAULT_SLOTS,
        DEFAULT_SLOTS // 2,
    ]
    for cores in (1, 2, 4, 8):
        for workers in range(1, 17):
            assert workers * default_slots(workers, cores) <= DEFAULT_SLOTS * cores
            assert default_slots(workers, cores) >= 1
