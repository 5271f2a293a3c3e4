"""Helpers for the upstream tests: a gateway data folder, signing keys as JWKs (made by PyJWT,
independently of the gateway's own JWK reader), a minimal CapabilityStatement for the raw TLS
servers that stand in for upstreams of other TLS versions, and a relay in front of Medplum
that loses replies after the upstream committed (like the CR-2 relay)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from policy.atomic import atomic_write
from sync.gateway import datadir
from sync.gateway.cli import main as gateway_main
from sync.gateway.upstream.config import set_upstream
from tests.support.tls import PkiFiles, make_test_pki
from tests.support.tls_server import DropConnection, RawTlsServer, server_context

STAND_IN_BASE = "/fhir"


def stand_in_upstream(tmp_path: Path, handler: Any) -> tuple[Path, RawTlsServer, Any]:
    """A raw TLS server answering with ``handler`` at ``https://127.0.0.1:<port>/fhir``, and a
    gateway data folder configured for it (its CA, a client certificate). Returns the data
    folder, the server and its running generator (``close()`` it to stop the server)."""
    pki = make_test_pki(tmp_path / "pki")
    context = server_context(pki.server_cert_path, pki.server_key_path, None)
    server = RawTlsServer(context, handler)
    serving = server.serve()
    next(serving)
    data = gateway_data(tmp_path)
    configure_with_certificate(data, pki, f"https://127.0.0.1:{server.port}{STAND_IN_BASE}")
    return data, server, serving


def configure_with_certificate(data: Path, pki: PkiFiles, base: str) -> None:
    """``upstream set`` for ``base`` with the test PKI's CA and a client certificate."""
    creds = pki.device("gw", "upstream")
    set_upstream(
        data, base=base, ca=str(pki.ca_path), cert=str(creds.cert_path), key=str(creds.key_path)
    )


def gateway_data(tmp_path: Path) -> Path:
    data = tmp_path / "gateway-data"
    datadir.init_data_dir(data, now=dt.datetime.now(dt.UTC))
    return data


def signing_jwk(alg: str, kid: str = "gatehouse-test-key") -> tuple[dict[str, Any], dict[str, Any]]:
    """(private JWK, public JWK) for ``alg`` (RS384 or ES384), with ``kid`` and ``alg``."""
    if alg == "RS384":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private = json.loads(RSAAlgorithm.to_jwk(key))
        public = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    else:
        ec_key = ec.generate_private_key(ec.SECP384R1())
        private = json.loads(ECAlgorithm.to_jwk(ec_key))
        public = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    for jwk in (private, public):
        jwk.update(kid=kid, alg=alg)
    return private, public


def write_jwk(path: Path, jwk: dict[str, Any]) -> Path:
    atomic_write(path, orjson.dumps(jwk))
    return path


def capability_statement(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "software": {"name": "stand-in"},
        "rest": [{"mode": "server", "interaction": [{"code": "transaction"}], **extra}],
    }


def metadata_handler(
    method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    if method == "GET" and path.endswith("/metadata"):
        return 200, {"Content-Type": "application/fhir+json"}, orjson.dumps(capability_statement())
    return 404, {}, b""


def gateway_cli(*argv: str) -> int:
    return gateway_main(list(argv))


@dataclass
class Relay:
    """A TLS relay in front of the upstream (Medplum) that forwards every request and can lose
    the reply after the upstream has committed (``drop``: method → how many replies to lose),
    refuse requests itself (``refuse``: method, or "METHOD /path", → an OperationOutcome
    diagnostics; ``refuse_containing``: any request whose body holds the text), hold a reply
    until ``release`` is set (``hold``: methods), answer requests with a status of its own
    (``status``: method → status, e.g. 401), or answer every request 503 while ``down`` (the
    board's balancer with no server behind it), the way a network or an upstream fails.
    ``posted``: the body of every POST the upstream answered with a success, in order."""

    target: str  # the upstream's base URL
    session: requests.Session
    drop: dict[str, int] = field(default_factory=dict)
    refuse: dict[str, str] = field(default_factory=dict)
    refuse_containing: dict[str, str] = field(default_factory=dict)
    hold: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    forwarded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    down: bool = False
    status: dict[str, int] = field(default_factory=dict)
    posted: list[bytes] = field(default_factory=list)
    port: int = 0

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}/fhir/R4"

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if self.down:
            return 503, {"Content-Type": "text/plain"}, b"no server behind the balancer"
        if method in self.status:
            outcome = {"resourceType": "OperationOutcome",
                       "issue": [{"severity": "error", "code": "security"}]}  # fmt: skip
            return (
                self.status[method],
                {"Content-Type": "application/fhir+json"},
                orjson.dumps(outcome),
            )
        refusal = self.refuse.get(method) or self.refuse.get(f"{method} {path.split('?')[0]}")
        for text, words in self.refuse_containing.items():
            if refusal is None and text.encode() in body:
                refusal = words
        if refusal is not None:
            outcome = {
                "resourceType": "OperationOutcome",
                "issue": [
                    {"severity": "error", "code": "business-rule",
                     "diagnostics": refusal}
                ],
            }  # fmt: skip
            return 422, {"Content-Type": "application/fhir+json"}, orjson.dumps(outcome)
        kept = ("content-type", "if-match", "if-none-exist", "accept")
        answer = self.session.request(
            method,
            self.target + path.removeprefix("/fhir/R4"),
            data=body or None,
            headers={k: v for k, v in headers.items() if k in kept},
            timeout=30,
        )
        self.forwarded.append(f"{method} {path.split('?')[0]} {answer.status_code}")
        if method == "POST" and answer.ok:
            self.posted.append(body)
        if self.drop.get(method, 0) > 0:
            self.drop[method] -= 1
            self.dropped.append(f"{method} {path.split('?')[0]}")
            raise DropConnection
        if method in self.hold:
            self.release.wait(120)
        out = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "etag")}
        return answer.status_code, out, answer.content


@contextlib.contextmanager
def running_relay(pki: PkiFiles, target: str, session: requests.Session) -> Iterator[Relay]:
    relay = Relay(target, session)
    context = server_context(pki.server_cert_path, pki.server_key_path, None)
    server = RawTlsServer(context, relay.handle)
    for running in server.serve():
        relay.port = running.port
        try:
            yield relay
        finally:
            relay.release.set()
