"""Helpers for the upstream tests: a gateway data folder, signing keys as JWKs (made by PyJWT,
independently of the gateway's own JWK reader), and a minimal CapabilityStatement for the
raw TLS servers that stand in for upstreams of other TLS versions."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from policy.atomic import atomic_write
from sync.gateway import datadir
from sync.gateway.cli import main as gateway_main


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
