"""Serving the gateway: TLS 1.3 with client certificates, device identity, revocation.

Invariants:
- The TLS context accepts TLS 1.3 only and requires a client certificate that chains to the
  device CA (``CERT_REQUIRED``); OpenSSL refuses expired or foreign certificates in the
  handshake, before any HTTP byte is read.
- ``PeerCertH11Protocol`` (uvicorn's h11 protocol, extended) puts the verified peer
  certificate into ``scope["extensions"]["tls"]`` (ASGI TLS extension shape) and the TCP peer
  address into ``scope["gatehouse.tcp_peer"]`` for every request on the connection.
- ``DeviceAuthMiddleware`` turns that into ``scope["gatehouse.device"]`` (a ``DeviceIdentity``)
  on every request, or answers 403 before the app runs: the certificate must verify against the
  device CA at ``now`` and the device must be ``active`` in the devices table with the same
  site (a revoked or wiped device is refused at once, even on an open connection).
- A forwarded certificate header (``X-Client-Cert``, URL-encoded PEM) is honoured ONLY when the
  TCP peer is a configured trusted proxy, and then verified exactly like a TLS certificate; from
  anyone else it is ignored. uvicorn's own proxy-header rewriting is switched off.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from sync.gateway.fhir_api import DEVICE_SCOPE_KEY, create_fhir_app
from sync.gateway.outcome import FhirError, error_response
from sync.gateway.pki import PkiError, verify_device_certificate
from sync.gateway.store import Store

log = logging.getLogger(__name__)

TCP_PEER_KEY = "gatehouse.tcp_peer"
FORWARDED_CERT_HEADER = b"x-client-cert"
MAX_FORWARDED_CERT_CHARS = 16_384  # a P-256 device certificate is under 1 KiB of PEM
STARTUP_TIMEOUT_S = 10.0
GRACEFUL_SHUTDOWN_S = 5  # idle keep-alive peers that never answer close_notify cannot stall exit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def build_ssl_context(cert_file: Path, key_file: Path, ca_file: Path) -> ssl.SSLContext:
    """Server context: TLS 1.3 only, client certificate from the device CA required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(ca_file))
    context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    context.set_alpn_protocols(["http/1.1"])
    return context


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that hands the verified peer certificate to the ASGI app."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        chain: list[str] = []
        tls: dict[str, Any] | None = None
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                cert = x509.load_der_x509_certificate(der)
                chain = [cert.public_bytes(serialization.Encoding.PEM).decode("ascii")]
            cipher = ssl_object.cipher()
            tls = {
                "server_cert": None,
                "client_cert_chain": chain,
                "client_cert_name": None,
                "client_cert_error": None,
                "tls_version": 0x0304 if ssl_object.version() == "TLSv1.3" else None,
                "cipher_suite": None,
                "cipher_name": cipher[0] if cipher else None,
            }
        peer = transport.get_extra_info("peername")
        peer_ip = peer[0] if isinstance(peer, tuple) else None
        inner = self.app

        async def with_peer(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] in ("http", "websocket"):
                if tls is not None:
                    scope.setdefault("extensions", {})["tls"] = dict(tls)
                scope[TCP_PEER_KEY] = peer_ip
            await inner(scope, receive, send)

        self.app = with_peer


def parse_trusted_proxies(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


class DeviceAuthMiddleware:
    """Every request carries a verified, active device identity, or gets 403."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: Store,
        ca_cert: x509.Certificate,
        trusted_proxies: tuple[Network, ...] = (),
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.app = app
        self.store = store
        self.ca_cert = ca_cert
        self.trusted_proxies = trusted_proxies
        self.clock = clock

    def _from_trusted_proxy(self, scope: Scope) -> bool:
        peer = scope.get(TCP_PEER_KEY)
        if not isinstance(peer, str):
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in net for net in self.trusted_proxies)

    def _certificate(self, scope: Scope) -> x509.Certificate:
        forwarded = [v for k, v in scope.get("headers", []) if k == FORWARDED_CERT_HEADER]
        if forwarded and self._from_trusted_proxy(scope):
            if len(forwarded) != 1 or len(forwarded[0]) > MAX_FORWARDED_CERT_CHARS:
                raise PkiError("bad_forwarded_certificate")
            try:
                return x509.load_pem_x509_certificate(unquote(forwarded[0].decode()).encode())
            except ValueError:
                raise PkiError("bad_forwarded_certificate") from None
        if forwarded:
            log.warning("forwarded certificate header ignored from an untrusted peer")
        chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or []
        if not chain:
            raise PkiError("no_client_certificate")
        return x509.load_pem_x509_certificate(chain[0].encode("ascii"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.pop(DEVICE_SCOPE_KEY, None)  # only this layer may set it
        try:
            identity = verify_device_certificate(
                self._certificate(scope), self.ca_cert, now=self.clock()
            )
        except PkiError as err:
            log.info("device refused: %s", err.reason)
            await error_response(FhirError(403, "security", err.reason))(scope, receive, send)
            return
        record = await run_in_threadpool(self.store.device, identity.device_id)
        reason = None
        if record is None:
            reason = "unknown_device"
        elif record.status != "active":
            reason = f"device_{record.status}"
        elif record.site != identity.site:
            reason = "device_site_mismatch"
        if reason is not None:
            log.info("device refused: %s", reason)
            await error_response(FhirError(403, "security", reason))(scope, receive, send)
            return
        scope[DEVICE_SCOPE_KEY] = identity
        await self.app(scope, receive, send)


def build_app(
    store: Store,
    *,
    ca_cert: x509.Certificate,
    trusted_proxies: tuple[Network, ...] = (),
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> ASGIApp:
    """The whole gateway application: device authentication around the FHIR data plane."""
    return DeviceAuthMiddleware(
        create_fhir_app(store, clock=clock),
        store=store,
        ca_cert=ca_cert,
        trusted_proxies=trusted_proxies,
        clock=clock,
    )


def uvicorn_config(
    app: ASGIApp, context: ssl.SSLContext, *, host: str, port: int, log_level: str = "warning"
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=PeerCertH11Protocol,
        ssl_context_factory=lambda _config, _default: context,
        lifespan="off",
        proxy_headers=False,  # client addresses come from TCP, never from headers
        server_header=False,
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


class BackgroundGateway:
    """uvicorn in a thread on ``host``: ``start()`` returns the bound port, ``stop()`` joins."""

    def __init__(self, app: ASGIApp, context: ssl.SSLContext, host: str = "127.0.0.1") -> None:
        self.host = host
        self._server = uvicorn.Server(uvicorn_config(app, context, host=host, port=0))
        self._thread = threading.Thread(target=self._server.run, name="gateway", daemon=True)
        self.port = 0

    def start(self) -> int:
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])
        return self.port

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=STARTUP_TIMEOUT_S)
