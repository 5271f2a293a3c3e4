"""Issue 15 item 4: overload behaves. A busy database pool answers 503 with Retry-After at once
(never a hang, never a 500), and slow clients cannot hold connections while a laptop syncs.

Real gateway over real mutual TLS on 127.0.0.1; the pool test on a real PostgreSQL; the
laptop is a real SQLCipher vault synced by the product's engine.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sync.gateway import server as gateway_server
from sync.gateway.server import BackgroundGateway, build_app, build_ssl_context
from sync.gateway.store.postgres import PgStore
from tests.support.gateway import SITE_A, Gateway, running_gateway, session_for
from tests.support.postgres import require_server
from tests.support.sync import SITE, DeviceVault, seed_resources, sync_once, transport_config
from tests.support.tls import make_test_pki

CLOSE = {"Connection": "close"}  # no idle keep-alive left for the server's shutdown to wait on


def test_issue15_an_exhausted_pool_answers_503_with_retry_after_at_once(tmp_path: Path) -> None:
    store = PgStore(require_server().new_database("pool"), pool_size=1, pool_wait_s=0.5)
    pki = make_test_pki(tmp_path / "pki")
    creds = pki.device("dev-a", SITE_A)
    store.set_device("dev-a", SITE_A, "active")
    context = build_ssl_context(pki.server_cert_path, pki.server_key_path, pki.ca_path)
    served = BackgroundGateway(build_app(store, ca_cert=pki.ca_cert), context)
    served.start()
    holding, release = threading.Event(), threading.Event()

    def hold_the_only_connection() -> None:
        with store.write():
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_only_connection)
    holder.start()
    try:
        assert holding.wait(10)
        with session_for(creds, pki) as http:
            started = time.monotonic()
            answer = http.get(f"{served.url}/fhir/Patient", headers=CLOSE, timeout=30)
            took = time.monotonic() - started
            assert answer.status_code == 503, answer.text
            assert int(answer.headers["retry-after"]) > 0
            assert answer.json()["issue"][0]["code"] == "transient"
            assert took < 5  # the pool wait (0.5 s), not a hang
            release.set()
            holder.join(10)
            after = http.get(f"{served.url}/fhir/Patient", headers=CLOSE, timeout=30)
            assert after.status_code == 200
    finally:
        release.set()
        holder.join(10)
        served.stop()
        store.close()


HEAD_TIMEOUT_S = 1.5
SLOW_CLIENTS = 60
REQUEST = b"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200


@pytest.fixture
def quick_head_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(gateway_server, "REQUEST_HEAD_TIMEOUT_S", HEAD_TIMEOUT_S)
    yield


class Slowloris:
    """``count`` TLS connections that each send one byte of a request head at a time, and the
    moment the server closed each (None while it is open)."""

    def __init__(self, gw: Gateway, count: int) -> None:
        context = ssl.create_default_context(cafile=str(gw.pki.ca_path))
        self.opened: list[float] = []
        self.closed: list[float | None] = []
        self.socks: list[ssl.SSLSocket] = []
        for _ in range(count):
            raw = socket.create_connection(("127.0.0.1", gw.server.port), timeout=10)
            self.socks.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
            self.opened.append(time.monotonic())
            self.closed.append(None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def _trickle(self) -> None:
        position = 0
        while not self._stop.is_set() and position < len(REQUEST):
            for i, sock in enumerate(self.socks):
                if self.closed[i] is None:
                    try:
                        sock.send(REQUEST[position : position + 1])
                    except OSError:
                        self.closed[i] = time.monotonic()
            position += 1
            readable, _, _ = select.select(
                [s for i, s in enumerate(self.socks) if self.closed[i] is None], [], [], 0.1
            )
            for sock in readable:
                i = self.socks.index(sock)
                try:
                    if sock.recv(1024) == b"":
                        self.closed[i] = time.monotonic()
                except (OSError, ssl.SSLError):
                    self.closed[i] = time.monotonic()

    def __enter__(self) -> Slowloris:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.socks:
            sock.close()


def test_issue15_slow_clients_are_cut_off_while_a_laptop_syncs(
    tmp_path: Path, quick_head_timeout: None
) -> None:
    with running_gateway(tmp_path) as gw:
        gw.load(*seed_resources(patients=6, seed=4))
        creds = gw.pki.device("dev-sync", SITE)
        gw.store.set_device("dev-sync", SITE, "active")
        laptop = DeviceVault.create(tmp_path / "vault.db", "dev-sync")
        config = transport_config(gw.url, gw.pki.server_pin, creds)
        with Slowloris(gw, SLOW_CLIENTS) as slow, laptop.open() as vault:
            result = sync_once(vault, config)  # a real sync while the slow clients trickle
            assert result.ok, result.error
            assert result.summary().pulled > 0
            deadline = time.monotonic() + HEAD_TIMEOUT_S + 8
            while any(c is None for c in slow.closed) and time.monotonic() < deadline:
                time.sleep(0.1)
            still_open = sum(1 for c in slow.closed if c is None)
            assert still_open == 0, f"{still_open} slow connections were never closed"
            held = [c - o for c, o in zip(slow.closed, slow.opened, strict=True) if c is not None]
            assert max(held) < HEAD_TIMEOUT_S + 5
        # A normal client is still served afterwards.
        with session_for(gw.device_a, gw.pki) as http:
            assert http.get(f"{gw.fhir}/metadata", timeout=10).status_code == 200


def test_issue15_a_request_head_may_take_its_time_within_the_limit(
    tmp_path: Path, quick_head_timeout: None
) -> None:
    """A slow but honest client (a head in well under the limit) is served normally."""
    with running_gateway(tmp_path) as gw:
        context = ssl.create_default_context(cafile=str(gw.pki.ca_path))
        context.load_cert_chain(str(gw.device_a.cert_path), str(gw.device_a.key_path))
        with (
            socket.create_connection(("127.0.0.1", gw.server.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            head = b"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            for part in (head[:10], head[10:30], head[30:]):
                tls.sendall(part)
                time.sleep(HEAD_TIMEOUT_S / 5)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")


def test_issue15_keep_alive_requests_each_get_a_fresh_head_deadline(
    tmp_path: Path, quick_head_timeout: None
) -> None:
    """A laptop's kept-alive connection (several requests in one sync) is not cut off."""
    with running_gateway(tmp_path) as gw, requests.Session() as http:
        http.trust_env = False
        http.verify = str(gw.pki.ca_path)
        http.cert = gw.device_a.requests_cert
        for _ in range(4):
            assert http.get(f"{gw.fhir}/metadata", timeout=10).status_code == 200
            time.sleep(HEAD_TIMEOUT_S * 0.8)  # idle, within uvicorn's keep-alive
