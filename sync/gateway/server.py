"""Serving the gateway: TLS 1.3 with client certificates, device identity, revocation.

Invariants:
- The TLS context accepts TLS 1.3 only and asks for a client certificate (``CERT_OPTIONAL``):
  a certificate that is presented must chain to the device CA and be within its validity, or
  OpenSSL refuses the handshake before any HTTP byte is read. A connection without one gets
  through TLS but reaches only ``POST /device/enrol`` (which needs a one-time token) and
  ``POST /device/wipe-report`` (which needs a signature by the device's wipe-report key).
- ``PeerCertH11Protocol`` (uvicorn's h11 protocol, extended) puts the verified peer
  certificate into ``scope["extensions"]["tls"]`` (ASGI TLS extension shape) and the TCP peer
  address into ``scope["gatehouse.tcp_peer"]`` for every request on the connection.
- ``DeviceAuthMiddleware`` turns that into ``scope["gatehouse.device"]`` (a ``DeviceIdentity``)
  on every request but those two, or answers before the app runs: 401 ``certificate_required``
  without a certificate; 403 when the certificate does not verify against the device CA at
  ``now`` or the device is not ``active`` in the devices table with the same site and this
  certificate's serial. Each certificate's signature is verified once and a device's state read
  at most every ``admission.STATE_TTL_S`` (``sync/gateway/admission.py``): a revocation or wipe
  made through this process is refused on the very next request, one made by another process
  (the admin CLI, another worker) within ``STATE_TTL_S``, even on an open connection.
  ``/fhir`` errors are OperationOutcomes, ``/device`` and ``/audit`` errors are
  ``{"error", "message"}`` JSON.
- On ``/fhir`` a bearer token, when sent, must be valid for this certificate and belong to a
  clinician: auditors and admins never receive clinical resources.
- A forwarded certificate header (``X-Client-Cert``, URL-encoded PEM) is honoured ONLY when the
  TCP peer is a configured trusted proxy, and then verified exactly like a TLS certificate; from
  anyone else it is ignored. uvicorn's own proxy-header rewriting is switched off.
- ``last_seen`` of a device is written at most once per ``LAST_SEEN_EVERY`` per process.
- Slow clients cannot hold connections open (issue 15 item 4): a request head (request line
  and headers, at most ``MAX_HEAD_BYTES``) must arrive whole within ``REQUEST_HEAD_TIMEOUT_S``
  of its first byte (or of the connection, for the first request), else the connection is
  closed; an idle keep-alive connection is closed after ``KEEP_ALIVE_S``. A body is read
  without any thread (the event loop), bounded by the routes' size limits.
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
from starlette.concurrency import run_in_threadpool
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from sync.gateway.admission import Admission, refusal
from sync.gateway.api.audit import create_control_app
from sync.gateway.api.fhir import DEVICE_SCOPE_KEY, create_fhir_app
from sync.gateway.api.outcome import FhirError, error_response
from sync.gateway.api.responses import (
    RETRY_AFTER_S,
    control_error_response,
    retry_after_headers,
)
from sync.gateway.authority import GatewayAuthority
from sync.gateway.capacity import (
    BUSY_REASON,
    BUSY_RETRY_AFTER_S,
    CONNECTION_KEY,
    DEFAULT_SLOTS,
    CapacityGate,
    Connection,
    Slots,
)
from sync.gateway.errors import ControlError
from sync.gateway.login_throttle import LoginPolicy
from sync.gateway.pki import DeviceIdentity, PkiError
from sync.gateway.store.base import DatabaseFailure, Store
from sync.gateway.users import authenticate_bearer

log = logging.getLogger(__name__)

TCP_PEER_KEY = "gatehouse.tcp_peer"
FORWARDED_CERT_HEADER = b"x-client-cert"
MAX_FORWARDED_CERT_CHARS = 16_384  # a P-256 device certificate is under 1 KiB of PEM
STARTUP_TIMEOUT_S = 10.0
LAST_SEEN_EVERY = dt.timedelta(minutes=1)
MAX_SEEN_DEVICES = 50_000  # when each device's last_seen was written by this process
ENROL_PATH = "/device/enrol"
WIPE_REPORT_PATH = "/device/wipe-report"  # WP-3: signed by the report key, not the TLS key
UNAUTHENTICATED_POSTS = frozenset({ENROL_PATH, WIPE_REPORT_PATH})
CLINICAL_ROLES = frozenset({"clinician"})
GRACEFUL_SHUTDOWN_S = 5  # idle keep-alive peers that never answer close_notify cannot stall exit
REQUEST_HEAD_TIMEOUT_S = 10.0  # a whole request line + headers, from its first byte
KEEP_ALIVE_S = 5  # an idle connection between two requests (uvicorn's default, made explicit)
MAX_HEAD_BYTES = 32 * 1024  # request line + headers (h11's incomplete-event bound)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def build_ssl_context(cert_file: Path, key_file: Path, ca_file: Path) -> ssl.SSLContext:
    """Server context: TLS 1.3 only; a client certificate is asked for and, when presented,
    must verify against the device CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cafile=str(ca_file))
    context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    context.set_alpn_protocols(["http/1.1"])
    return context


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that hands the verified peer certificate to the ASGI app, and
    closes a connection whose request head does not arrive in time (uvicorn has no such
    timeout: one byte a second would hold a connection for ever)."""

    _head_timer: asyncio.TimerHandle | None = None
    _connection: Connection | None = None

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(REQUEST_HEAD_TIMEOUT_S, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._waiting_for_head() and not self.transport.is_closing():
            log.info("closing a connection whose request head was too slow")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_head():
            self._arm_head_timer()  # the first byte of a request after keep-alive
        super().data_received(data)
        if not self._waiting_for_head():
            self._cancel_head_timer()  # the head is in: the request runs

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._connection is not None:
            self._connection.closed()  # its capacity slot, if it held one, is free again
        super().connection_lost(exc)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()
        ssl_object = transport.get_extra_info("ssl_object")
        chain: list[str] = []
        tls: dict[str, Any] | None = None
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                chain = [ssl.DER_cert_to_PEM_cert(der)]
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
        connection = self._connection = Connection()

        async def with_peer(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] in ("http", "websocket"):
                if tls is not None:
                    scope.setdefault("extensions", {})["tls"] = dict(tls)
                scope[TCP_PEER_KEY] = peer_ip
                scope[CONNECTION_KEY] = connection
            await inner(scope, receive, send)

        self.app = with_peer


def parse_trusted_proxies(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _refusal(scope: Scope, status: int, reason: str) -> ASGIApp:
    if str(scope.get("path", "")).startswith("/fhir"):
        return error_response(FhirError(status, "security", reason))
    return control_error_response(ControlError(status, reason))


def _unavailable(scope: Scope, reason: str, retry_after: int = RETRY_AFTER_S) -> ASGIApp:
    """503 with ``Retry-After``: the database is busy or away (the pool is exhausted, a lock
    wait timed out), or every capacity slot is taken: the client backs off and comes back, it
    does not give up."""
    if str(scope.get("path", "")).startswith("/fhir"):
        response = error_response(FhirError(503, "transient", reason))
        response.headers.update(retry_after_headers(retry_after))
        return response
    return control_error_response(ControlError(503, reason, retry_after=retry_after))


def _busy(scope: Scope) -> ASGIApp:
    return _unavailable(scope, BUSY_REASON, BUSY_RETRY_AFTER_S)


class DeviceAuthMiddleware:
    """Every request but enrolment carries a verified, active device identity, or is refused."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: Store,
        ca_cert: x509.Certificate,
        trusted_proxies: tuple[Network, ...] = (),
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.store = store
        self.ca_cert = ca_cert
        self.trusted_proxies = trusted_proxies
        self.clock = clock
        self.admission = Admission(store, ca_cert, monotonic=monotonic)
        self._seen: dict[str, dt.datetime] = {}

    def _from_trusted_proxy(self, scope: Scope) -> bool:
        peer = scope.get(TCP_PEER_KEY)
        if not isinstance(peer, str):
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in net for net in self.trusted_proxies)

    def _certificate(self, scope: Scope) -> str | None:
        """The PEM of the request's certificate: forwarded by a trusted proxy, or from TLS."""
        forwarded = [v for k, v in scope.get("headers", []) if k == FORWARDED_CERT_HEADER]
        if forwarded and self._from_trusted_proxy(scope):
            if len(forwarded) != 1 or len(forwarded[0]) > MAX_FORWARDED_CERT_CHARS:
                raise PkiError("bad_forwarded_certificate")
            try:
                return unquote(forwarded[0].decode("ascii"))
            except UnicodeDecodeError:
                raise PkiError("bad_forwarded_certificate") from None
        if forwarded:
            log.warning("forwarded certificate header ignored from an untrusted peer")
        chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or []
        return str(chain[0]) if chain else None

    def _touch_due(self, device_id: str, now: dt.datetime) -> bool:
        """Whether to write the device's ``last_seen`` now (once per ``LAST_SEEN_EVERY``)."""
        last = self._seen.get(device_id)
        if last is not None and now - last < LAST_SEEN_EVERY:
            return False
        if len(self._seen) >= MAX_SEEN_DEVICES:
            self._seen.clear()  # bounded: forgetting only means one extra write per device
        self._seen[device_id] = now
        return True

    @staticmethod
    def _has_bearer(scope: Scope) -> bool:
        return any(k == b"authorization" for k, _ in scope.get("headers", []))

    def _clinical_bearer(self, scope: Scope, identity: DeviceIdentity, now: dt.datetime) -> None:
        """On /fhir, a bearer token (if any) must be this device's and a clinician's."""
        headers = [v for k, v in scope.get("headers", []) if k == b"authorization"]
        if not headers:
            return
        session = authenticate_bearer(self.store, headers[0].decode("latin-1"), identity, now=now)
        if session.role not in CLINICAL_ROLES:
            raise ControlError(403, "role_forbidden")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.pop(DEVICE_SCOPE_KEY, None)  # only this layer may set it
        if scope.get("path") in UNAUTHENTICATED_POSTS and scope.get("method") == "POST":
            # Enrolment (a one-time token) and a wiped laptop's report (its report key): the
            # two ways in without a certificate; both check their own proof.
            await self.app(scope, receive, send)
            return
        try:
            identity = await self._admit(scope, receive, send)
        except DatabaseFailure as err:
            log.warning("database failure while admitting a device: %s", err.reason)
            await _unavailable(scope, err.reason)(scope, receive, send)
            return
        if identity is None:
            return  # refused, and answered
        scope[DEVICE_SCOPE_KEY] = identity
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> DeviceIdentity | None:
        """The verified, active device of this request, or None after answering a refusal."""
        now = self.clock()
        try:
            pem = self._certificate(scope)
            if pem is None:
                await _refusal(scope, 401, "certificate_required")(scope, receive, send)
                return None
            try:
                identity = self.admission.identity(pem, now)
            except ValueError:  # only a forwarded PEM can be malformed; TLS gave a parsed one
                raise PkiError("bad_forwarded_certificate") from None
        except PkiError as err:
            log.info("device refused: %s", err.reason)
            await _refusal(scope, 403, err.reason)(scope, receive, send)
            return None
        state = self.admission.cached_state(identity.device_id)
        if state is None:
            state = await run_in_threadpool(self.admission.read_state, identity.device_id)
        reason = refusal(state.admission, identity, str(scope.get("path", "")))
        if reason is not None:
            log.info("device refused: %s", reason)
            await _refusal(scope, 403, reason)(scope, receive, send)
            return None
        if str(scope.get("path", "")).startswith("/fhir") and self._has_bearer(scope):
            try:
                await run_in_threadpool(self._clinical_bearer, scope, identity, now)
            except ControlError as err:
                await _refusal(scope, err.status, err.reason)(scope, receive, send)
                return None
        if self._touch_due(identity.device_id, now):
            await run_in_threadpool(self.store.touch_device, identity.device_id, now)
        return identity


class PathDispatch:
    """``/device`` and ``/audit`` to the control plane, everything else to the FHIR app."""

    def __init__(self, fhir: ASGIApp, control: ASGIApp) -> None:
        self.fhir = fhir
        self.control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if path.startswith(("/device/", "/audit/")):
            await self.control(scope, receive, send)
        else:
            await self.fhir(scope, receive, send)


GZIP_MIN_BYTES = 1024  # smaller answers are not worth compressing
# zlib's own default. Starlette's is 9: on a 450 KB history page of 490 resources, level 9
# took ~3x the CPU of level 6 for a 5 % smaller answer (16.9x vs 16.1x), and gzip was ~14 % of
# a worker's CPU in the scale benchmark's first-sync herd.
GZIP_LEVEL = 6


def build_app(
    store: Store,
    *,
    ca_cert: x509.Certificate,
    authority: GatewayAuthority | None = None,
    login_policy: LoginPolicy | None = None,
    trusted_proxies: tuple[Network, ...] = (),
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    monotonic: Callable[[], float] = time.monotonic,
    slots: int = DEFAULT_SLOTS,
) -> ASGIApp:
    """The whole gateway: device authentication around the FHIR data plane and, given the
    gateway's keys (``authority``), the control plane, behind the capacity gate (``slots``
    connections served at once: ``sync/gateway/capacity.py``). ``monotonic`` times the
    device-state cache (``admission.STATE_TTL_S``)."""
    inner: ASGIApp = create_fhir_app(store, clock=clock)
    if authority is not None:
        control = create_control_app(store, authority, clock=clock, login_policy=login_policy)
        inner = PathDispatch(inner, control)
    # Pages of FHIR JSON compress ~10-30x; the device asks for gzip and bounds the decoded size.
    inner = GZipMiddleware(inner, minimum_size=GZIP_MIN_BYTES, compresslevel=GZIP_LEVEL)
    admitted = DeviceAuthMiddleware(
        inner,
        store=store,
        ca_cert=ca_cert,
        trusted_proxies=trusted_proxies,
        clock=clock,
        monotonic=monotonic,
    )
    return CapacityGate(admitted, slots=Slots(slots), busy=_busy)


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
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
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
