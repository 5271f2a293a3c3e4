"""SMART Backend Services access tokens: OAuth 2.0 client credentials with a signed JWT
assertion (RFC 7523), scopes ``system/*.read system/*.write``.

Invariants:
- A token is asked for only when none is cached or the cached one is within
  ``EXPIRY_MARGIN_S`` (or a tenth of its lifetime, if shorter) of its expiry; each request
  carries a fresh assertion (new ``jti``, five-minute ``exp``, ``aud`` = the token URL).
- Tokens live in memory only: never written, logged, or put in an error. A refused request
  is ``UpstreamError("token_refused", <the server's OAuth error code>)``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from urllib.parse import urlencode

from sync.gateway.upstream.connection import Response
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.jwk import SigningKey
from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded

SCOPES = "system/*.read system/*.write"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXPIRY_MARGIN_S = 60.0
DEFAULT_LIFETIME_S = 300  # when the server names none
Post = Callable[[str, bytes, dict[str, str]], Response]


class TokenSource:
    """Access tokens for one client at one token URL, cached until (shortly before) expiry."""

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        key: SigningKey,
        post: Post,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = token_url
        self._client_id = client_id
        self._key = key
        self._post = post
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.requests = 0  # how many tokens were asked for (the cache's measure)
        self.expires_at: float | None = None

    def __repr__(self) -> str:
        return f"TokenSource({self._url!r}, client_id={self._client_id!r}, token=<hidden>)"

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def bearer(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._renew_at:
                self._token = self._fetch(now)
            return self._token

    def _fetch(self, now: float) -> str:
        form = urlencode(
            {
                "grant_type": "client_credentials",
                "scope": SCOPES,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self._key.assertion(
                    client_id=self._client_id, audience=self._url, now=now
                ),
            }
        ).encode("ascii")
        self.requests += 1
        response = self._post(
            self._url,
            form,
            {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        try:
            document = loads_bounded(response.body)
        except BoundedJsonError:
            document = None
        if response.status != 200 or not isinstance(document, dict):
            code = document.get("error") if isinstance(document, dict) else None
            raise UpstreamError(
                "token_refused", code if isinstance(code, str) else f"HTTP {response.status}"
            )
        token, kind = document.get("access_token"), document.get("token_type", "bearer")
        if not (isinstance(token, str) and token.isprintable() and token and " " not in token):
            raise UpstreamError("token_refused", "no access_token")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise UpstreamError("token_refused", "not a bearer token")
        lifetime = document.get("expires_in", DEFAULT_LIFETIME_S)
        if type(lifetime) is not int or lifetime <= 0:
            lifetime = DEFAULT_LIFETIME_S
        self.expires_at = now + lifetime
        self._renew_at = now + lifetime - min(EXPIRY_MARGIN_S, lifetime / 10)
        return token
