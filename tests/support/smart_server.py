"""A SMART Backend Services authorisation server for the tests, and a bearer-checking relay in
front of a FHIR server (Medplum): the upstream a health board would run, in small.

``running_smart(pki, upstream)`` serves on one TLS port (the test PKI's server certificate):
- ``POST /token``: OAuth 2.0 client credentials with a JWT client assertion (RFC 7523), verified
  with PyJWT (a maintained JWT library, independent of the gateway's signing code) against the
  client's registered public JWK: signature, ``alg`` (RS384/ES384), ``kid``, ``iss`` = ``sub``
  = client id, ``aud`` = the token URL, ``exp`` within five minutes, ``jti`` never reused; the
  scope must be ``system/*.read system/*.write``. Answers an opaque token with
  ``expires_in`` = ``lifetime_s``.
- anything under ``/fhir/R4``: refused 401 without a live token issued here, else relayed to
  ``upstream`` (same path and query) and its answer returned.

What it records: ``issued`` (tokens handed out), ``refusals`` (reason codes), ``relayed``
(requests forwarded), ``bearers_seen``.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt
import orjson
import requests

from tests.support.tls import PkiFiles
from tests.support.tls_server import RawTlsServer, server_context

SCOPES = "system/*.read system/*.write"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class SmartServer:
    server: RawTlsServer
    client_id: str
    public_jwk: dict[str, Any]
    upstream_base: str | None
    upstream_session: requests.Session | None
    lifetime_s: int = 300
    issued: list[str] = field(default_factory=list)
    expiry: dict[str, float] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    relayed: list[str] = field(default_factory=list)
    bearers_seen: list[str] = field(default_factory=list)
    jtis: set[str] = field(default_factory=set)

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/token"

    @property
    def base(self) -> str:
        return f"{self.origin}/fhir/R4"

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if method == "POST" and path == "/token":
            return self._token(body)
        if path.startswith("/fhir/R4"):
            return self._relay(method, path, headers, body)
        return 404, {}, b""

    def _refuse(self, code: str) -> tuple[int, dict[str, str], bytes]:
        self.refusals.append(code)
        error = orjson.dumps({"error": "invalid_client", "error_description": code})
        return 400, {"Content-Type": "application/json"}, error

    def _token(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        form = {k: v[0] for k, v in parse_qs(body.decode("ascii")).items()}
        if form.get("grant_type") != "client_credentials":
            return self._refuse("grant_type")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return self._refuse("assertion_type")
        if form.get("scope") != SCOPES:
            return self._refuse("scope")
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            if header.get("kid") != self.public_jwk.get("kid"):
                return self._refuse("kid")
            key = jwt.PyJWK(self.public_jwk)
            claims = jwt.decode(
                assertion,
                key=key,
                algorithms=["RS384", "ES384"],
                audience=self.token_url,
                issuer=self.client_id,
                options={"require": ["exp", "iss", "sub", "aud", "jti"]},
            )
        except jwt.PyJWTError as err:
            return self._refuse(type(err).__name__)
        if claims["sub"] != self.client_id:
            return self._refuse("sub")
        if claims["exp"] > time.time() + 300 + 5:
            return self._refuse("exp_too_far")
        if claims["jti"] in self.jtis:
            return self._refuse("jti_reused")
        self.jtis.add(claims["jti"])
        token = secrets.token_urlsafe(24)
        self.issued.append(token)
        self.expiry[token] = time.time() + self.lifetime_s
        answer = {"access_token": token, "token_type": "bearer", "expires_in": self.lifetime_s}
        answer["scope"] = SCOPES
        return 200, {"Content-Type": "application/json"}, orjson.dumps(answer)

    def _relay(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        auth = headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        self.bearers_seen.append(token)
        if self.expiry.get(token, 0.0) < time.time():
            return 401, {"WWW-Authenticate": "Bearer"}, b""
        if self.upstream_base is None or self.upstream_session is None:
            return 404, {}, b""
        self.relayed.append(f"{method} {path}")
        answer = self.upstream_session.request(
            method,
            self.upstream_base + path.removeprefix("/fhir/R4"),
            data=body or None,
            headers={k: v for k, v in headers.items() if k in ("content-type", "if-match")},
            timeout=30,
        )
        kept = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "etag")}
        return answer.status_code, kept, answer.content


@contextlib.contextmanager
def running_smart(
    pki: PkiFiles,
    *,
    client_id: str,
    public_jwk: dict[str, Any],
    upstream_base: str | None = None,
    upstream_session: requests.Session | None = None,
    lifetime_s: int = 300,
) -> Iterator[SmartServer]:
    context = server_context(pki.server_cert_path, pki.server_key_path, None)
    raw = RawTlsServer(context, lambda *a: (500, {}, b""))
    smart = SmartServer(raw, client_id, public_jwk, upstream_base, upstream_session, lifetime_s)
    raw.handler = smart.handle
    for _ in raw.serve():
        yield smart
