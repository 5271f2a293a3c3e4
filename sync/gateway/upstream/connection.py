"""The only module of the upstream code that opens connections: one TLS client for the
upstream FHIR server's origin and, when SMART Backend Services is configured, its token URL.

Invariants (the upstream's half of NW-2):
- TLS 1.3 where the server offers it, else TLS 1.2 with forward-secret AEAD ciphers, never
  below: the context's ``minimum_version`` is TLS 1.2.
- The server is verified against the CA file IT gave (``upstream/ca.pem``) and nothing else:
  the context never loads the system store, and no environment variable is read (no
  ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``, proxies or ``.netrc``: urllib3 is used directly).
  The host name is checked. The client certificate, when configured, is presented.
- Requests go only to the base URL's origin and the token URL's origin; any other URL
  (including a ``next`` link the server hands us) is refused before a connection is made.
  Redirects are never followed.
- Every response body is read through a hard size limit; connect and read timeouts apply. The
  one exception is ``stream`` (Bulk Data NDJSON files): its body is handed over chunk by chunk
  and never held whole; its reader bounds each line instead (``bulk``).
- Only idempotent requests are retried, with exponential backoff; a busy answer's
  ``Retry-After`` (seconds, capped) lengthens the wait. The loop is the one both ends share
  (``sync.protocol.retry``) with this policy (``RETRY``: no jitter, no busy budget: a single
  gateway process calls, and a busy answer uses up an attempt).
- A bearer token is added by ``request`` when a token source is configured; on a 401 the
  cached token is dropped and the request sent once more with a fresh one. The token and the
  request bodies are never logged or put in an error.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import SSLError as Urllib3SSLError

from sync.gateway.upstream.config import UpstreamConfig
from sync.gateway.upstream.errors import UpstreamError
from sync.protocol.retry import RetryPolicy, send_with_retries

if TYPE_CHECKING:
    from sync.gateway.upstream.tokens import TokenSource

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Three tries, 0.5 s then 1 s apart; a rate limit (429) or a busy balancer is retried, and a
# Retry-After up to a minute is waited out within a pass (a longer one: the next pass retries).
RETRY = RetryPolicy(
    max_attempts=3,
    backoff_base_s=0.5,
    retry_statuses=frozenset({429, 502, 503, 504}),
    idempotent_methods=frozenset({"GET", "HEAD", "PUT", "DELETE"}),
    max_retry_after_s=60,
)
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_CHUNK = 64 * 1024
# Answers that say "not now" (a timeout, a rate limit, a server or its balancer down): the work
# is tried again later, never taken as a refusal (filing) or a missing capability (metadata).
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Failures that say the same before any answer: the upstream not reached, or not in time.
TRANSIENT_REASONS = frozenset({"upstream_timeout", "upstream_unreachable"})
Origin = tuple[str, str, int]


@dataclass(frozen=True)
class Response:
    """A complete, size-checked response; header names in lower case."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str


@dataclass(frozen=True)
class Streamed:
    """A response whose body is read chunk by chunk (``chunks``), once."""

    status: int
    headers: Mapping[str, str]
    chunks: Iterator[bytes]


@dataclass
class Counters:
    requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    tls_versions: dict[str, str] = field(default_factory=dict)  # origin → "TLSv1.3"


def make_ssl_context(config: UpstreamConfig) -> ssl.SSLContext:
    """TLS ≥ 1.2, verified against IT's CA file only, with the client certificate if any."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)  # TLS 1.2 only: the TLS 1.3 suites are all AEAD + PFS
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    try:
        context.load_verify_locations(cafile=str(config.ca_file))
        if config.cert_file is not None and config.key_file is not None:
            context.load_cert_chain(str(config.cert_file), str(config.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise UpstreamError("bad_configuration", "the CA or client certificate") from exc
    return context


def origin_of(url: str) -> Origin:
    parts = urlsplit(url)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port or 443)


def _transient(exc: Exception) -> bool:
    """A failure worth another try: the upstream was not reached, or did not answer in time."""
    return isinstance(exc, UpstreamError) and exc.reason in TRANSIENT_REASONS


def _no_jitter() -> float:
    return 0.0


class UpstreamConnection:
    """HTTPS to the upstream: ``request`` (authenticated), ``send`` (as is). Thread-safe."""

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.config = config
        self.base = config.base + "/"
        self.counters = Counters()
        self.tokens: TokenSource | None = None
        # Called with the method before every request; raises once the pass lost its lease.
        self.fence: Callable[[str], None] | None = None
        self._sleep = sleep
        self._max_bytes = max_response_bytes
        context = make_ssl_context(config)
        origins = {origin_of(config.base)}
        if config.token_url is not None:
            origins.add(origin_of(config.token_url))
        self._pools = {
            origin: urllib3.HTTPSConnectionPool(
                origin[1],
                origin[2],
                maxsize=4,
                block=True,
                ssl_context=context,
                retries=False,
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
            )
            for origin in origins
        }

    def __enter__(self) -> UpstreamConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    def url(self, path_or_url: str) -> str:
        """``path_or_url`` resolved against the base URL; another origin is refused."""
        try:
            url = urljoin(self.base, path_or_url)
            parts = urlsplit(url)
            origin = (parts.scheme, (parts.hostname or "").lower(), parts.port or 443)
        except ValueError:
            raise UpstreamError("origin_refused") from None
        if origin not in self._pools or parts.username is not None or parts.password is not None:
            raise UpstreamError("origin_refused")
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
        """One request with the bearer token (if configured), retried when idempotent."""
        sent = dict(headers or {})
        if self.tokens is not None:
            sent["Authorization"] = f"Bearer {self.tokens.bearer()}"
        response = self.send(method, path_or_url, body=body, headers=sent, idempotent=idempotent)
        if response.status == 401 and self.tokens is not None:
            self.tokens.invalidate()
            sent["Authorization"] = f"Bearer {self.tokens.bearer()}"
            response = self.send(
                method, path_or_url, body=body, headers=sent, idempotent=idempotent
            )
        return response

    def get(self, path_or_url: str, headers: Mapping[str, str] | None = None) -> Response:
        return self.request("GET", path_or_url, headers=headers)

    def send(
        self,
        method: str,
        path_or_url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> Response:
        """One request as given (no token added); retried with backoff when idempotent."""
        method = method.upper()
        url = self.url(path_or_url)
        return send_with_retries(
            RETRY,
            lambda: self._once(method, url, body, headers or {}),
            retryable=RETRY.retryable(method, idempotent),
            transient=_transient,
            sleep=self._sleep,
            jitter=_no_jitter,
        )

    def _open(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> tuple[urllib3.BaseHTTPResponse, Origin]:
        if self.fence is not None:
            self.fence(method)
        origin = origin_of(url)
        pool = self._pools[origin]
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.counters.requests += 1
        self.counters.bytes_sent += len(body or b"")
        try:
            raw = pool.urlopen(
                method,
                target,
                body=body,
                headers={"User-Agent": "gatehouse-gateway", **headers},
                redirect=False,
                preload_content=False,
                decode_content=True,
                assert_same_host=True,
            )
        except Urllib3SSLError as exc:
            raise UpstreamError("upstream_tls") from exc
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            if isinstance(exc, NewConnectionError):
                raise UpstreamError("upstream_unreachable") from exc
            raise UpstreamError("upstream_timeout") from exc
        except HTTPError as exc:
            raise UpstreamError("upstream_unreachable") from exc
        try:
            self._note_tls(raw, origin)
            if 300 <= raw.status < 400:
                raise UpstreamError("upstream_redirect")
        except BaseException:
            raw.close()
            raw.release_conn()
            raise
        return raw, origin

    def _once(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> Response:
        raw, _ = self._open(method, url, body, headers)
        try:
            payload = self._read_bounded(raw)
        except BaseException:
            raw.close()  # an answer left unread: never hand its connection to the next request
            raise
        finally:
            raw.release_conn()
        headers_out = {name.lower(): value for name, value in raw.headers.items()}
        return Response(raw.status, headers_out, payload, url)

    @contextlib.contextmanager
    def stream(
        self, path_or_url: str, headers: Mapping[str, str] | None = None
    ) -> Iterator[Streamed]:
        """GET ``path_or_url`` (same origin rule, bearer token as ``request`` adds it) with its
        body handed over chunk by chunk, never held whole; not retried (the caller re-reads).
        The connection is closed when the block ends, read to the end or not."""
        sent = dict(headers or {})
        if self.tokens is not None:
            sent["Authorization"] = f"Bearer {self.tokens.bearer()}"
        raw, _ = self._open("GET", self.url(path_or_url), None, sent)
        try:
            headers_out = {name.lower(): value for name, value in raw.headers.items()}
            yield Streamed(raw.status, headers_out, self._chunks(raw))
        finally:
            raw.close()
            raw.release_conn()

    def _chunks(self, raw: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            for chunk in raw.stream(_CHUNK):
                self.counters.bytes_received += len(chunk)
                yield chunk
        except HTTPError as exc:
            raise UpstreamError("upstream_unreachable", "mid-answer") from exc

    def _note_tls(self, raw: urllib3.BaseHTTPResponse, origin: Origin) -> None:
        connection = getattr(raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if isinstance(sock, ssl.SSLSocket):
            version = sock.version()
            if version:
                self.counters.tls_versions[f"{origin[1]}:{origin[2]}"] = version

    def _read_bounded(self, raw: urllib3.BaseHTTPResponse) -> bytes:
        declared = raw.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            raise UpstreamError("upstream_too_large")
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in raw.stream(_CHUNK):
                size += len(chunk)
                if size > self._max_bytes:
                    raise UpstreamError("upstream_too_large")
                chunks.append(chunk)
        except HTTPError as exc:
            raise UpstreamError("upstream_unreachable", "mid-answer") from exc
        self.counters.bytes_received += size
        return b"".join(chunks)
