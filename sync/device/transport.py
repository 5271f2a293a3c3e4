"""The only module that opens network connections (CONVENTIONS.md §3): pinned mutual TLS.

Invariants (SECURITY.md NW-1, NW-2, NW-3):
- TLS 1.3 only; the device's client certificate is presented on every connection.
- The server's SubjectPublicKeyInfo SHA-256 must equal one of the configured pins (a primary
  and at least one backup are supported). The check runs right after the handshake, inside
  ``connect()``, so on a mismatch the socket is closed before a single request byte is written.
- Requests go to exactly one origin: the gateway URL's scheme, host and port. That host must be
  in the policy's allowed hosts; any other URL (including a ``next`` link a server hands us) is
  refused before a connection is made. Plain ``http`` is refused.
- The environment changes nothing: ``trust_env`` is off (no ``HTTPS_PROXY``, ``REQUESTS_CA_BUNDLE``,
  ``CURL_CA_BUNDLE`` or ``.netrc``), explicit proxies are ignored, the adapter owns its SSL
  context and never loads the OS trust store. Redirects are never followed.
- Every response body is read through a hard size limit (counted after gzip decoding, so a
  compression bomb is cut off); connect and read timeouts always apply.
- Only idempotent requests are retried (with exponential backoff, at most ``MAX_ATTEMPTS``
  tries); a POST is retried only when the caller declares it idempotent (a transaction made
  idempotent by ``ifNoneExist``). A busy answer (503 with ``Retry-After`` in seconds, at most
  ``MAX_RETRY_AFTER_S``) is waited out as asked and does not use up a try: it is retried until
  the waits for this request would pass ``MAX_BUSY_WAIT_S``, then returned. Every wait is
  spread by up to ``JITTER`` so a thousand laptops told "busy" at once do not come back at
  once. The loop is the one both ends share (``sync.protocol.retry``) with this policy
  (``RETRY``).
- One connection is reused for a whole sync (a pool of one), but never after it has been idle
  for ``reuse_idle_s`` (``REUSE_IDLE_S``, below the gateway's keep-alive timeout): then a new
  one is opened, so no request is sent on a connection the server is closing as idle.
"""

from __future__ import annotations

import base64
import hashlib
import random
import ssl
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool

from sync.device.errors import DeviceError
from sync.protocol.pins import spki_der
from sync.protocol.retry import RetryPolicy, send_with_retries

# Timeouts in seconds: connecting to a gateway on a LAN or VPN takes well under 10 s; a page of
# resources is produced and streamed in well under 60 s even on a slow link.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
# Largest response body accepted, after content decoding. A page of 1,000 FHIR resources is
# typically 1-3 MiB; 32 MiB leaves room for large notes while bounding memory.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
# Idempotent requests are tried at most this many times, sleeping 0.5 s, 1 s, 2 s … between.
MAX_ATTEMPTS = 3
BACKOFF_BASE_S = 0.5
# Status codes worth retrying for an idempotent request: the gateway or a balancer is busy.
RETRY_STATUSES = frozenset({502, 503, 504})
MAX_RETRY_AFTER_S = 30  # a longer Retry-After ends this attempt; the next sync tries again
# A busy answer (503 + Retry-After) is waited out this long in all for one request, however
# many times it comes: a herd of first syncs is spread over the gateway's capacity instead of
# failing after MAX_ATTEMPTS. Longer than that, the sync reports the gateway busy.
MAX_BUSY_WAIT_S = 120.0
JITTER = 0.5  # each wait is multiplied by 1 + JITTER × a random fraction
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY = RetryPolicy(
    max_attempts=MAX_ATTEMPTS,
    backoff_base_s=BACKOFF_BASE_S,
    retry_statuses=RETRY_STATUSES,
    idempotent_methods=IDEMPOTENT_METHODS,
    max_retry_after_s=MAX_RETRY_AFTER_S,
    jitter=JITTER,
    max_busy_wait_s=MAX_BUSY_WAIT_S,
)
# A kept-alive connection idle this long is closed and a new one opened for the next request,
# so a request never races the server closing it idle: below the gateway's keep-alive timeout
# (sync.gateway.server.KEEP_ALIVE_S, 5 s) by more than a round trip, and above a busy answer's
# jittered wait (2 s x 1.5), so a laptop told "busy" comes back on the same connection.
REUSE_IDLE_S = 4.0
_READ_CHUNK = 64 * 1024


class TransportError(DeviceError):
    """Every transport failure, with a stable ``reason`` code for the sync result and audit.

    Reasons: ``pin_mismatch``, ``tls``, ``host_not_allowed``, ``redirect_refused``,
    ``too_large``, ``timeout``, ``connection``, ``config``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.detail = detail


def spki_sha256(der_certificate: bytes) -> bytes:
    """SHA-256 over the DER SubjectPublicKeyInfo of a certificate (the pinned value, raw)."""
    return hashlib.sha256(spki_der(der_certificate)).digest()


def decode_pin(pin: str) -> bytes:
    """A policy pin is base64 of a 32-byte SHA-256; anything else is a configuration error."""
    try:
        raw = base64.b64decode(pin, validate=True)
    except ValueError as exc:
        raise TransportError("config", "an SPKI pin is not valid base64") from exc
    if len(raw) != hashlib.sha256().digest_size:
        raise TransportError("config", "an SPKI pin is not a SHA-256 digest")
    return raw


@dataclass(frozen=True)
class TransportConfig:
    """Where and how to connect. Built from the installed policy and the device's enrolment.

    ``server_ca_file`` is optional defence in depth: when given, the chain and host name are
    also verified against the gateway's own CA. The pins are checked either way.
    """

    gateway_url: str
    allowed_hosts: Collection[str]
    spki_pins: tuple[bytes, ...]
    client_cert_file: Path | None  # None only for enrolment, which has no certificate yet
    client_key_file: Path | None
    server_ca_file: Path | None = None
    client_key_password: bytes | None = None  # the device key file is encrypted at rest
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S
    max_response_bytes: int = MAX_RESPONSE_BYTES
    reuse_idle_s: float = REUSE_IDLE_S


@dataclass(frozen=True)
class Response:
    """A complete, size-checked response."""

    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    url: str


@dataclass
class TransferCounters:
    """Bytes on the wire for the sync result (request bodies, response bodies as received)."""

    requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    connections: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _make_ssl_context(config: TransportConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    if config.server_ca_file is not None:
        context.load_verify_locations(cafile=str(config.server_ca_file))
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        # Pin-only: the pin check after the handshake is the server's authentication.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.client_cert_file is None or config.client_key_file is None:
        return context  # enrolment: the server allows exactly one route without a certificate
    try:
        context.load_cert_chain(
            str(config.client_cert_file),
            str(config.client_key_file),
            password=config.client_key_password,
        )
    except (OSError, ssl.SSLError) as exc:
        raise TransportError("config", "the device certificate or key cannot be loaded") from exc
    return context


def _pinned_pool_class(
    pins: tuple[bytes, ...], counters: TransferCounters
) -> type[HTTPSConnectionPool]:
    """A connection-pool class whose connections check the SPKI pin inside ``connect()``."""

    class PinnedHTTPSConnection(HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            sock = self.sock
            der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
            if der is None or spki_sha256(der) not in pins:
                self.close()
                raise TransportError(
                    "pin_mismatch",
                    "the server's key does not match the gateway pins in the policy",
                )
            self.is_verified = True  # the pin authenticated the server
            counters.connections += 1

    class PinnedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = PinnedHTTPSConnection

    return PinnedHTTPSConnectionPool


class _PinnedAdapter(HTTPAdapter):
    """Owns the one connection pool to the gateway; ignores requests' verify/cert/proxy knobs."""

    def __init__(self, config: TransportConfig, counters: TransferCounters) -> None:
        self._config = config
        self._pool_cls = _pinned_pool_class(config.spki_pins, counters)
        self._context = _make_ssl_context(config)
        self._pool = self._new_pool()
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)

    def _new_pool(self) -> HTTPSConnectionPool:
        origin = urlsplit(self._config.gateway_url)
        return self._pool_cls(
            host=origin.hostname or "",
            port=origin.port or 443,
            maxsize=1,
            block=True,
            ssl_context=self._context,
            cert_reqs=self._context.verify_mode,
            retries=False,
        )

    def drop_connection(self) -> None:
        """Close the kept-alive connection; the next request opens a new one."""
        self._pool.close()
        self._pool = self._new_pool()

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: Any = None,
        cert: Any = None,
    ) -> HTTPSConnectionPool:
        return self._pool

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Do nothing: the pool's own SSL context decides; requests must not override it."""

    def close(self) -> None:
        self._pool.close()
        super().close()


class Transport:
    """A pinned, mutually authenticated HTTPS client for one gateway origin.

    Use as a context manager for a whole sync so that one connection is reused.
    """

    def __init__(
        self,
        config: TransportConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not config.spki_pins:
            raise TransportError("config", "no gateway pins are configured")
        origin = urlsplit(config.gateway_url)
        if origin.scheme != "https" or not origin.hostname:
            raise TransportError("config", "the gateway URL must be https://host[:port]/…")
        allowed = {h.lower() for h in config.allowed_hosts}
        if origin.hostname.lower() not in allowed:
            raise TransportError("host_not_allowed", "the gateway host is not allowed by policy")
        self._config = config
        self._origin = (origin.scheme, origin.hostname.lower(), origin.port or 443)
        self._base = (
            config.gateway_url if config.gateway_url.endswith("/") else config.gateway_url + "/"
        )
        self._sleep = sleep
        self._jitter = jitter
        self._monotonic = monotonic
        self._idle_since: float | None = None  # when the kept-alive connection last answered
        self.counters = TransferCounters()
        self._session = requests.Session()
        self._session.trust_env = False  # no proxies, CA bundles or .netrc from the environment
        self._session.proxies = {}
        self._session.headers.update({"Accept-Encoding": "gzip", "User-Agent": "gatehouse"})
        self._adapter = _PinnedAdapter(config, self.counters)
        self._session.mount("https://", self._adapter)
        self._session.mount("http://", _RefuseAdapter())

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def url(self, path_or_url: str) -> str:
        """Resolve ``path_or_url`` against the gateway URL and refuse any other origin."""
        try:
            url = urljoin(self._base, path_or_url)
            parts = urlsplit(url)
            origin = (parts.scheme, (parts.hostname or "").lower(), parts.port or 443)
        except ValueError as exc:  # e.g. a port that is not a number
            raise TransportError("host_not_allowed", "a URL is malformed") from exc
        if origin != self._origin or parts.username is not None or parts.password is not None:
            raise TransportError("host_not_allowed", "a URL points outside the pinned gateway")
        return url

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> Response:
        """Send one request; retry with backoff only when it is idempotent (``RETRY``)."""
        method = method.upper()
        url = self.url(path_or_url)
        return send_with_retries(
            RETRY,
            lambda: self._send_once(method, url, body, headers),
            retryable=RETRY.retryable(method, idempotent),
            transient=_transient,
            sleep=self._sleep,
            jitter=self._jitter,
        )

    def get(self, path_or_url: str, headers: Mapping[str, str] | None = None) -> Response:
        return self.request("GET", path_or_url, headers=headers)

    def wait_before_retry(self, attempt: int) -> None:
        """The pause the transport's own retries take before attempt ``attempt + 1`` (for a
        caller that must do something between attempts, e.g. a lookup)."""
        self._sleep(RETRY.backoff(attempt, self._jitter()))

    def post_json(self, path_or_url: str, body: Any, *, idempotent: bool = False) -> Response:
        """POST ``body`` as JSON (the control plane's shape); retried only when idempotent."""
        return self.request(
            "POST",
            path_or_url,
            body=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
            idempotent=idempotent,
        )

    def _send_once(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> Response:
        timeout = (self._config.connect_timeout_s, self._config.read_timeout_s)
        idle_since, self._idle_since = self._idle_since, None
        if idle_since is not None and self._monotonic() - idle_since >= self._config.reuse_idle_s:
            # The server may be closing it this very moment: never race its keep-alive timeout.
            self._adapter.drop_connection()
        self.counters.requests += 1
        self.counters.bytes_sent += len(body or b"")
        try:
            raw = self._session.request(
                method,
                url,
                data=body,
                headers=dict(headers or {}),
                timeout=timeout,
                allow_redirects=False,
                stream=True,
            )
        except TransportError:
            raise
        except requests.exceptions.SSLError as exc:
            inner = _find_transport_error(exc)
            if inner is not None:
                raise inner from exc
            if _in_chain(exc, ssl.SSLCertVerificationError) is not None:  # another CA's
                raise TransportError(
                    "pin_mismatch", "the gateway's certificate is not from the pinned CA"
                ) from exc
            raise TransportError("tls", "the secure connection to the gateway failed") from exc
        except requests.exceptions.Timeout as exc:
            raise TransportError("timeout", "the gateway did not answer in time") from exc
        except requests.exceptions.ConnectionError as exc:
            inner = _find_transport_error(exc)
            if inner is not None:
                raise inner from exc
            raise TransportError("connection", "the gateway cannot be reached") from exc
        with raw:
            if 300 <= raw.status_code < 400:
                raise TransportError("redirect_refused", "the gateway answered with a redirect")
            payload = self._read_bounded(raw)
        self._idle_since = self._monotonic()
        # Header names in lower case: servers differ in case (HTTP names are case-insensitive).
        headers = {name.lower(): value for name, value in raw.headers.items()}
        return Response(raw.status_code, headers, payload, url)

    def _read_bounded(self, raw: requests.Response) -> bytes:
        limit = self._config.max_response_bytes
        declared = raw.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise TransportError("too_large", "the gateway's answer is larger than allowed")
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in raw.iter_content(_READ_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TransportError("too_large", "the gateway's answer is larger than allowed")
                chunks.append(chunk)
        except requests.exceptions.RequestException as exc:
            raise TransportError("connection", "the connection broke during the answer") from exc
        raw_bytes = raw.raw.tell() if hasattr(raw.raw, "tell") else size
        self.counters.bytes_received += int(raw_bytes or size)
        return b"".join(chunks)


def _transient(exc: Exception) -> bool:
    """A failure worth another try: the gateway was not reached, or did not answer in time."""
    return isinstance(exc, TransportError) and exc.reason in {"timeout", "connection"}


class _RefuseAdapter(HTTPAdapter):
    """Mounted on http:// so that plain HTTP can never be used, even by mistake."""

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        raise TransportError("host_not_allowed", "plain HTTP is never used")


_E = TypeVar("_E", bound=BaseException)


def _in_chain(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first exception of ``kind`` in ``exc``'s cause/context/args chain (our pin check
    raises inside urllib3, which wraps it; so does ssl's certificate verification)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        stack.extend([current.__cause__, current.__context__])
        stack.extend(arg for arg in current.args if isinstance(arg, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    return None


def _find_transport_error(exc: BaseException) -> TransportError | None:
    return _in_chain(exc, TransportError)
