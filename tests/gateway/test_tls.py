"""Mutual TLS 1.3 serving: who may connect, and the device identity reaching the app."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from sync.gateway import pki
from sync.gateway.api.fhir import DEVICE_SCOPE_KEY
from sync.gateway.server import (
    BackgroundGateway,
    DeviceAuthMiddleware,
    build_ssl_context,
    parse_trusted_proxies,
)
from sync.gateway.store.base import Store
from tests.support.gateway import (
    SITE_A,
    SITE_B,
    Gateway,
    make_store,
    patient,
    running_gateway,
    session_for,
)
from tests.support.tls import PkiFiles, foreign_device, make_test_pki


def _refused(session: requests.Session, url: str) -> None:
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        session.get(url, timeout=10)


CERTIFIED_ROUTES = [
    ("GET", "/fhir/metadata"),
    ("GET", "/fhir/Patient"),
    ("POST", "/fhir"),
    ("POST", "/device/renew"),
    ("POST", "/device/login"),
    ("GET", "/device/policy"),
    ("GET", "/device/commands"),
    ("POST", "/device/commands/x/receipt"),
    ("POST", "/device/time"),
    ("POST", "/device/audit"),
    ("GET", "/audit/AuditEvent"),
    ("GET", "/audit/chains"),
    ("GET", "/device/enrol"),  # only POST is the way in
]


def test_NW1_without_a_client_certificate_only_enrolment_is_reachable(gateway: Gateway) -> None:
    gateway.load(patient("p1", SITE_A))
    anonymous = gateway.session(None)
    for method, path in CERTIFIED_ROUTES:
        answer = anonymous.request(method, f"{gateway.url}{path}", json={}, timeout=10)
        assert answer.status_code == 401, (method, path)
        if path.startswith("/fhir"):
            assert answer.json()["issue"][0]["details"]["text"] == "certificate_required"
        else:
            assert answer.json()["error"] == "certificate_required"
        assert "Smith" not in answer.text
    # Enrolment is reached (and refuses a made-up token), and a certified device gets in.
    answer = anonymous.post(f"{gateway.url}/device/enrol", json={"token": "x"}, timeout=10)
    assert answer.status_code in (400, 403)
    assert answer.json()["error"] in ("token_unknown", "bad_request")
    assert gateway.a.get(f"{gateway.fhir}/metadata", timeout=10).status_code == 200


def test_certificate_from_another_ca_is_refused(gateway: Gateway, tmp_path: Path) -> None:
    stranger = foreign_device(tmp_path / "evil", "dev-a", SITE_A)  # same names, wrong CA
    _refused(gateway.session(stranger), f"{gateway.fhir}/metadata")


def test_expired_certificate_is_refused(gateway: Gateway) -> None:
    expired = gateway.pki.device("dev-a", SITE_A, expired=True)
    _refused(gateway.session(expired), f"{gateway.fhir}/metadata")


def test_NW1_tls12_only_client_is_refused(gateway: Gateway) -> None:
    context = ssl.create_default_context(cafile=str(gateway.pki.ca_path))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(*gateway.device_a.requests_cert)
    with (
        socket.create_connection(("127.0.0.1", gateway.server.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="127.0.0.1").close()
    # The same client allowed TLS 1.3 gets in, and it is TLS 1.3.
    context13 = ssl.create_default_context(cafile=str(gateway.pki.ca_path))
    context13.load_cert_chain(*gateway.device_a.requests_cert)
    with (
        socket.create_connection(("127.0.0.1", gateway.server.port), timeout=10) as raw,
        context13.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.3"


def test_revoked_device_is_refused_on_the_control_plane_too(gateway: Gateway) -> None:
    session = gateway.a
    assert session.get(f"{gateway.url}/device/policy", timeout=10).status_code == 200
    gateway.store.set_device("dev-a", SITE_A, "revoked")
    answer = session.get(f"{gateway.url}/device/policy", timeout=10)
    assert answer.status_code == 403
    assert answer.json()["error"] == "device_revoked"
    # ... except for fetching a pending wipe: revoke-then-wipe a lost laptop still works.
    assert session.get(f"{gateway.url}/device/commands", timeout=10).status_code == 200


@pytest.mark.parametrize("status", ["revoked", "wiped"])
def test_revoked_or_wiped_device_gets_403_even_on_an_open_connection(
    gateway: Gateway, status: str
) -> None:
    gateway.load(patient("p1", SITE_A))
    session = gateway.a
    assert session.get(f"{gateway.fhir}/Patient/p1", timeout=10).status_code == 200
    gateway.store.set_device("dev-a", SITE_A, status)  # type: ignore[arg-type]
    answer = session.get(f"{gateway.fhir}/Patient/p1", timeout=10)  # same keep-alive socket
    assert answer.status_code == 403
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert answer.json()["issue"][0]["details"]["text"] == f"device_{status}"
    assert "Smith" not in answer.text


def test_unknown_device_and_site_mismatch_get_403(gateway: Gateway) -> None:
    unknown = gateway.pki.device("dev-unknown", SITE_A)
    answer = gateway.session(unknown).get(f"{gateway.fhir}/metadata", timeout=10)
    assert answer.status_code == 403
    assert answer.json()["issue"][0]["details"]["text"] == "unknown_device"
    moved = gateway.pki.device("dev-a", SITE_B)  # valid CA, but the register says site A
    answer = gateway.session(moved).get(f"{gateway.fhir}/metadata", timeout=10)
    assert answer.status_code == 403
    assert answer.json()["issue"][0]["details"]["text"] == "device_site_mismatch"


# -- the identity reaching the application ---------------------------------------------------


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    identity = scope.get(DEVICE_SCOPE_KEY)
    chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain", [])
    body = {
        "device": getattr(identity, "device_id", None),
        "site": getattr(identity, "site", None),
        "chain": chain,
        "client": request.client.host if request.client else None,
    }
    await JSONResponse(body)(scope, receive, send)


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[tuple[PkiFiles, BackgroundGateway, Store]]:
    files = make_test_pki(tmp_path / "pki")
    store = make_store(tmp_path)
    store.set_device("dev-a", SITE_A, "active")
    context = build_ssl_context(files.server_cert_path, files.server_key_path, files.ca_path)
    app = DeviceAuthMiddleware(_echo, store=store, ca_cert=files.ca_cert)
    server = BackgroundGateway(app, context)
    server.start()
    try:
        yield files, server, store
    finally:
        server.stop()
        store.close()


def test_verified_peer_certificate_and_device_identity_reach_the_app(
    echo: tuple[PkiFiles, BackgroundGateway, Store],
) -> None:
    files, server, _ = echo
    device = files.device("dev-a", SITE_A)
    with session_for(device, files) as session:
        answer = session.get(f"{server.url}/anything", timeout=10).json()
    assert (answer["device"], answer["site"]) == ("dev-a", SITE_A)
    assert answer["chain"] == [pki.cert_to_pem(device.cert).decode()]


def test_x_forwarded_for_cannot_fake_the_peer_address(
    echo: tuple[PkiFiles, BackgroundGateway, Store],
) -> None:
    files, server, _ = echo
    with session_for(files.device("dev-a", SITE_A), files) as session:
        answer = session.get(
            f"{server.url}/x", headers={"X-Forwarded-For": "10.9.9.9"}, timeout=10
        ).json()
    assert answer["client"] == "127.0.0.1"


# -- forwarded client certificates -----------------------------------------------------------


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(tmp_path, trusted_proxies=("127.0.0.1",)) as gw:
        yield gw


def _forwarded(creds_pem: bytes) -> dict[str, str]:
    return {"X-Client-Cert": quote(creds_pem.decode())}


def test_forwarded_certificate_is_honoured_from_a_trusted_proxy(proxied: Gateway) -> None:
    proxied.load(patient("pa", SITE_A), patient("pb", SITE_B))
    # The TLS connection is dev-a's (site A); the proxy forwards dev-b (site B).
    headers = _forwarded(pki.cert_to_pem(proxied.device_b.cert))
    session = proxied.a
    assert session.get(f"{proxied.fhir}/Patient/pb", headers=headers, timeout=10).status_code == (
        200
    )
    assert session.get(f"{proxied.fhir}/Patient/pa", headers=headers, timeout=10).status_code == (
        404
    )


def test_forwarded_certificate_is_ignored_from_anyone_else(gateway: Gateway) -> None:
    gateway.load(patient("pa", SITE_A), patient("pb", SITE_B))
    headers = _forwarded(pki.cert_to_pem(gateway.device_b.cert))
    session = gateway.a
    assert session.get(f"{gateway.fhir}/Patient/pb", headers=headers, timeout=10).status_code == (
        404
    )
    assert session.get(f"{gateway.fhir}/Patient/pa", headers=headers, timeout=10).status_code == (
        200
    )


def test_forwarded_certificate_is_verified_even_from_a_trusted_proxy(
    proxied: Gateway, tmp_path: Path
) -> None:
    proxied.load(patient("pb", SITE_B))
    stranger = foreign_device(tmp_path / "evil", "dev-b", SITE_B)
    for header in (_forwarded(pki.cert_to_pem(stranger.cert)), {"X-Client-Cert": "garbage"}):
        answer = proxied.a.get(f"{proxied.fhir}/Patient/pb", headers=header, timeout=10)
        assert answer.status_code == 403
        assert "pb" not in answer.text


def test_trusted_proxy_list_parses_networks() -> None:
    nets = parse_trusted_proxies(["10.0.0.0/8", "::1"])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "::1/128"]
    assert json.dumps([str(n) for n in parse_trusted_proxies([])]) == "[]"
