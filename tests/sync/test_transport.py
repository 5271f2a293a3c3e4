"""NW-1, NW-2, NW-3: the pinned mutual-TLS transport against a real TLS 1.3 server on 127.0.0.1."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync.device.transport import (
    JITTER,
    MAX_BUSY_WAIT_S,
    Transport,
    TransportConfig,
    TransportError,
    spki_sha256,
)
from tests.support.tls_server import DropConnection, RawTlsServer, server_context
from tests.support.transport_pki import Pki, pinned_config, serve, transport_config


def _ok(
    method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, b'{"ok": true}'


@pytest.fixture
def gateway(pki: Pki) -> Iterator[RawTlsServer]:
    yield from serve(pki, _ok)


def test_NW1_request_with_matching_pin_presents_the_client_certificate(
    pki: Pki, gateway: RawTlsServer
) -> None:
    with Transport(pinned_config(pki, gateway.port)) as transport:
        response = transport.get("fhir/metadata")
    assert response.status == 200
    assert response.body == b'{"ok": true}'
    assert gateway.peer_subjects == ["device-1"]


def test_NW1_backup_pin_is_accepted(pki: Pki, gateway: RawTlsServer) -> None:
    pins = (b"\x00" * 32, spki_sha256(pki.server.der))
    with Transport(transport_config(pki, gateway.port, pins)) as transport:
        assert transport.get("x").status == 200


def test_NW1_chain_verification_against_the_gateway_ca_also_works(
    pki: Pki, gateway: RawTlsServer
) -> None:
    config = pinned_config(pki, gateway.port, server_ca_file=pki.ca.cert)
    with Transport(config) as transport:
        assert transport.get("x").status == 200


def test_NW1_pin_mismatch_aborts_before_any_request_byte(pki: Pki, gateway: RawTlsServer) -> None:
    with Transport(transport_config(pki, gateway.port, (b"\x01" * 32,))) as transport:
        with pytest.raises(TransportError) as caught:
            transport.request("POST", "fhir", body=b"secret clinical note")
    assert caught.value.reason == "pin_mismatch"
    gateway.wait_finished(1)  # the laptop closed it: anything it sent has been read
    assert gateway.handshakes == 1
    assert bytes(gateway.received) == b""


def test_NW1_a_tls12_server_is_refused(pki: Pki) -> None:
    for server in serve(pki, _ok, tls12_only=True):
        with Transport(pinned_config(pki, server.port)) as transport:
            with pytest.raises(TransportError) as caught:
                transport.get("x")
        assert caught.value.reason == "tls"
        assert bytes(server.received) == b""


def test_NW2_mitm_with_an_os_trusted_ca_is_refused_before_any_request_byte(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A MITM whose CA the machine trusts (via every trust-store variable) still fails the pin."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, str(pki.rogue_ca.cert))
    context = server_context(pki.rogue_server.cert, pki.rogue_server.key, None)
    for mitm in RawTlsServer(context, _ok).serve():
        with Transport(pinned_config(pki, mitm.port)) as transport:
            with pytest.raises(TransportError) as caught:
                transport.get("fhir/Patient")
        assert caught.value.reason == "pin_mismatch"
        mitm.wait_finished(1)  # the laptop closed it: anything it sent has been read
        assert mitm.handshakes == 1
        assert bytes(mitm.received) == b""


def test_NW2_hostile_proxy_ca_bundle_and_netrc_change_nothing(
    pki: Pki, gateway: RawTlsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login stolen password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text(netrc.read_text())
    (tmp_path / ".netrc").chmod(0o600)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("NO_PROXY", "")
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, str(tmp_path / "does-not-exist.pem"))
    with Transport(pinned_config(pki, gateway.port)) as transport:
        assert transport.get("x").status == 200
    assert all("authorization" not in headers for _, _, headers in gateway.requests)


def test_NW2_redirects_are_not_followed(pki: Pki) -> None:
    def redirect(*_: object) -> tuple[int, dict[str, str], bytes]:
        return 302, {"Location": "https://evil.example/steal"}, b""

    for server in serve(pki, redirect):
        with Transport(pinned_config(pki, server.port)) as transport:
            with pytest.raises(TransportError) as caught:
                transport.get("x")
        assert caught.value.reason == "redirect_refused"
        assert len(server.requests) == 1


def test_NW2_only_the_gateway_origin_and_allowed_hosts(pki: Pki, gateway: RawTlsServer) -> None:
    config = pinned_config(pki, gateway.port)
    with Transport(config) as transport:
        for url in (
            "https://evil.example/fhir",
            f"https://localhost:{gateway.port}/fhir",  # same machine, different origin
            f"http://127.0.0.1:{gateway.port}/fhir",
            "//evil.example/x",
        ):
            with pytest.raises(TransportError) as caught:
                transport.get(url)
            assert caught.value.reason == "host_not_allowed"
    assert gateway.connections == 0
    not_allowed = TransportConfig(
        gateway_url=config.gateway_url,
        allowed_hosts=["gateway.example"],
        spki_pins=config.spki_pins,
        client_cert_file=config.client_cert_file,
        client_key_file=config.client_key_file,
    )
    with pytest.raises(TransportError) as caught:
        Transport(not_allowed)
    assert caught.value.reason == "host_not_allowed"


def test_NW3_oversized_and_gzip_bomb_answers_are_cut_off(pki: Pki) -> None:
    bomb = gzip.compress(b"\0" * (4 * 1024 * 1024))

    def huge(method: str, path: str, *_: object) -> tuple[int, dict[str, str], bytes]:
        if path == "/bomb":
            return 200, {"Content-Encoding": "gzip"}, bomb
        return 200, {}, b"x" * (2 * 1024 * 1024)

    for server in serve(pki, huge):
        config = pinned_config(pki, server.port, max_response_bytes=1024 * 1024)
        with Transport(config) as transport:
            for path in ("big", "bomb"):
                with pytest.raises(TransportError) as caught:
                    transport.get(path)
                assert caught.value.reason == "too_large"
    assert len(bomb) < 1024 * 1024  # the compressed bomb itself was under the limit


def test_gzip_answers_are_decoded(pki: Pki) -> None:
    payload = b'{"resourceType": "Bundle"}' * 100

    def zipped(*_: object) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Encoding": "gzip"}, gzip.compress(payload)

    for server in serve(pki, zipped):
        with Transport(pinned_config(pki, server.port)) as transport:
            assert transport.get("x").body == payload
            assert transport.counters.bytes_received < len(payload)
        assert server.requests[0][2]["accept-encoding"] == "gzip"


def test_only_idempotent_requests_are_retried(pki: Pki) -> None:
    calls: list[str] = []

    def busy(method: str, *_: object) -> tuple[int, dict[str, str], bytes]:
        calls.append(method)
        if calls.count(method) < 3:
            return 503, {}, b"busy"
        return 200, {}, b"ok"

    sleeps: list[float] = []
    for server in serve(pki, busy):
        config = pinned_config(pki, server.port)
        with Transport(config, sleep=sleeps.append, jitter=lambda: 0.0) as transport:
            assert transport.get("x").status == 200
            assert transport.request("POST", "x", body=b"{}").status == 503
            assert transport.request("POST", "x", body=b"{}", idempotent=True).status == 200
    assert calls == ["GET", "GET", "GET", "POST", "POST", "POST"]
    assert sleeps == [0.5, 1.0, 0.5]


def test_a_busy_answer_s_retry_after_is_honoured_with_jitter(pki: Pki) -> None:
    """Issue 15 item 4: 503 + Retry-After: the laptop waits at least what the gateway asked,
    spread by the jitter so laptops told "busy" together do not return together; a wait longer
    than MAX_RETRY_AFTER_S is not sat out (the sync reports busy and the next sync retries)."""
    answers = iter(
        [
            (503, {"Retry-After": "3"}, b"busy"),
            (200, {}, b"ok"),
            (503, {"Retry-After": "3"}, b"busy"),
            (200, {}, b"ok"),
            (503, {"Retry-After": "600"}, b"busy"),
        ]
    )

    def busy(*_: object) -> tuple[int, dict[str, str], bytes]:
        return next(answers)

    sleeps: list[float] = []
    fractions = iter([0.0, 0.99, 0.5])
    for server in serve(pki, busy):
        config = pinned_config(pki, server.port)
        with Transport(config, sleep=sleeps.append, jitter=lambda: next(fractions)) as transport:
            assert transport.get("x").status == 200
            assert transport.get("x").status == 200
            assert transport.get("x").status == 503  # 10 minutes asked: not waited for here
    assert sleeps[0] == 3.0 and 3.0 < sleeps[1] <= 3.0 * (1 + JITTER)
    assert len(sleeps) == 2


def test_a_herd_told_busy_many_times_waits_it_out_within_the_busy_budget(pki: Pki) -> None:
    """Issue 15 item 3: a gateway shedding a herd of first syncs answers "busy, come back in
    2 s" as often as it must; an idempotent request keeps coming back (each wait jittered, none
    using up one of the MAX_ATTEMPTS) until it is served, and gives up with the busy answer only
    once its waits would pass MAX_BUSY_WAIT_S. A POST not declared idempotent is never retried."""
    served_after = 12  # more busy answers than MAX_ATTEMPTS allows
    calls: list[str] = []

    def busy(method: str, path: str, *_: object) -> tuple[int, dict[str, str], bytes]:
        calls.append(path)
        if path.endswith("/forever") or calls.count(path) <= served_after:
            return 503, {"Retry-After": "2"}, b"busy"
        return 200, {}, b"ok"

    sleeps: list[float] = []
    for server in serve(pki, busy):
        config = pinned_config(pki, server.port)
        with Transport(config, sleep=sleeps.append, jitter=lambda: 0.5) as transport:
            assert transport.get("x").status == 200
            assert sleeps == [2.0 * (1 + JITTER * 0.5)] * served_after
            sleeps.clear()
            assert transport.get("forever").status == 503
            assert sum(sleeps) <= MAX_BUSY_WAIT_S < sum(sleeps) + 2.0 * (1 + JITTER * 0.5)
            sleeps.clear()
            assert transport.request("POST", "y", body=b"{}").status == 503
    assert sleeps == [] and calls.count("/y") == 1


def test_a_connection_the_server_is_closing_as_idle_is_never_sent_a_request(pki: Pki) -> None:
    """Issue 15: a server closes a kept-alive connection idle for its keep-alive timeout; a
    request sent just then is lost with the connection, and a POST is not retried. The laptop
    never reuses a connection idle for ``reuse_idle_s`` (below the server's timeout): it opens
    a new one, so even a non-idempotent request after a pause goes through."""
    keep_alive_s = 3.0  # back-to-back requests are never this far apart, even on a busy CI
    last_answer: list[tuple[int, float]] = []
    servers: list[RawTlsServer] = []

    def closing_idle(*_: object) -> tuple[int, dict[str, str], bytes]:
        connection = servers[0].handshakes
        same = bool(last_answer) and last_answer[-1][0] == connection
        if same and time.monotonic() - last_answer[-1][1] >= keep_alive_s:
            raise DropConnection  # closed as idle just as the request arrived
        last_answer.append((connection, time.monotonic()))
        return 200, {}, b"ok"

    for server in serve(pki, closing_idle):
        servers.append(server)
        config = pinned_config(pki, server.port, reuse_idle_s=keep_alive_s - 0.2)
        with Transport(config, sleep=lambda _: None) as transport:
            for _ in range(3):  # a sync's requests, back to back, share one connection
                assert transport.request("POST", "fhir", body=b"{}").status == 200
            assert transport.counters.connections == 1
            time.sleep(keep_alive_s + 0.1)  # the laptop applies a long page
            assert transport.request("POST", "fhir", body=b"{}").status == 200
            assert transport.counters.connections == 2
        assert len(server.requests) == 4  # nothing was sent twice


def test_one_connection_is_reused_for_a_whole_sync(pki: Pki, gateway: RawTlsServer) -> None:
    with Transport(pinned_config(pki, gateway.port)) as transport:
        for _ in range(5):
            assert transport.get("x").status == 200
        assert transport.counters.connections == 1
    assert gateway.handshakes == 1


def test_a_silent_server_times_out(pki: Pki) -> None:
    def silent(*_: object) -> tuple[int, dict[str, str], bytes]:
        time.sleep(2)
        return 200, {}, b""

    for server in serve(pki, silent):
        config = pinned_config(pki, server.port, read_timeout_s=0.3)
        with Transport(config, sleep=lambda _: None) as transport:
            with pytest.raises(TransportError) as caught:
                transport.get("x")
        assert caught.value.reason == "timeout"


def test_NW2_mitm_under_chain_verification_is_named_as_such_before_any_request_byte(
    pki: Pki,
) -> None:
    """With the gateway's CA pinned (chain verification), a server with another CA's
    certificate fails the handshake: the clinician reads the unsafe-network sentence
    (``pin_mismatch``: do not retry on this network), not a generic TLS failure."""
    context = server_context(pki.rogue_server.cert, pki.rogue_server.key, None)
    for mitm in RawTlsServer(context, _ok).serve():
        config = pinned_config(pki, mitm.port, server_ca_file=pki.ca.cert)
        with Transport(config) as transport:
            with pytest.raises(TransportError) as caught:
                transport.request("POST", "fhir", body=b"secret clinical note")
        assert caught.value.reason == "pin_mismatch"
        mitm.wait_finished(1)  # the laptop closed it: anything it sent has been read
        assert bytes(mitm.received) == b""
