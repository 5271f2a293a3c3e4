"""The SMART Backend Services signing key (a private JWK) and the JWT assertions it signs.

Invariants:
- Only RS384 (RSA, at least 2048 bits) and ES384 (EC P-384) keys are accepted, as SMART
  Backend Services requires servers to support; the ``alg`` of the JWK, when present, must
  agree with the key. The ``kid`` is the JWK's own, else its RFC 7638 thumbprint.
- An ES384 signature is the JOSE form (r ‖ s, 48 bytes each), never DER.
- Signing uses ``cryptography`` only; key material never appears in an error or a repr.
- A file may hold one private JWK or a JWK Set with exactly one private key.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from sync.gateway.upstream.errors import UpstreamError

ASSERTION_LIFETIME_S = 300  # SMART: no more than five minutes
MIN_RSA_BITS = 2048
_P384_BYTES = 48


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_int(text: Any) -> int:
    if not isinstance(text, str) or not text:
        raise UpstreamError("bad_jwk")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise UpstreamError("bad_jwk") from None
    return int.from_bytes(raw, "big")


@dataclass(frozen=True)
class SigningKey:
    """A private signing key with its JOSE algorithm and key id."""

    alg: str  # RS384 | ES384
    kid: str
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)

    def sign(self, message: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(message, padding.PKCS1v15(), hashes.SHA384())
        r, s = decode_dss_signature(self.key.sign(message, ec.ECDSA(hashes.SHA384())))
        return r.to_bytes(_P384_BYTES, "big") + s.to_bytes(_P384_BYTES, "big")

    def assertion(self, *, client_id: str, audience: str, now: float | None = None) -> str:
        """A compact JWS client assertion (RFC 7523) for ``audience`` (the token URL)."""
        moment = int(time.time() if now is None else now)
        header = {"alg": self.alg, "kid": self.kid, "typ": "JWT"}
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "exp": moment + ASSERTION_LIFETIME_S,
            "iat": moment,
            "jti": str(uuid.uuid4()),
        }
        signing_input = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(claims))}"
        signature = self.sign(signing_input.encode("ascii"))
        return f"{signing_input}.{b64url(signature)}"


def _thumbprint(members: dict[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, without whitespace."""
    return b64url(hashlib.sha256(orjson.dumps(members, option=orjson.OPT_SORT_KEYS)).digest())


def _rsa(jwk: dict[str, Any]) -> rsa.RSAPrivateKey:
    numbers = rsa.RSAPrivateNumbers(
        p=_b64url_int(jwk.get("p")),
        q=_b64url_int(jwk.get("q")),
        d=_b64url_int(jwk.get("d")),
        dmp1=_b64url_int(jwk.get("dp")),
        dmq1=_b64url_int(jwk.get("dq")),
        iqmp=_b64url_int(jwk.get("qi")),
        public_numbers=rsa.RSAPublicNumbers(_b64url_int(jwk.get("e")), _b64url_int(jwk.get("n"))),
    )
    try:
        key = numbers.private_key()
    except ValueError:
        raise UpstreamError("bad_jwk") from None
    if key.key_size < MIN_RSA_BITS:
        raise UpstreamError("weak_jwk")
    return key


def _ec(jwk: dict[str, Any]) -> ec.EllipticCurvePrivateKey:
    if jwk.get("crv") != "P-384":
        raise UpstreamError("unsupported_jwk")
    public = ec.EllipticCurvePublicNumbers(
        _b64url_int(jwk.get("x")), _b64url_int(jwk.get("y")), ec.SECP384R1()
    )
    try:
        return ec.EllipticCurvePrivateNumbers(_b64url_int(jwk.get("d")), public).private_key()
    except ValueError:
        raise UpstreamError("bad_jwk") from None


def _private_jwk(document: Any) -> dict[str, Any]:
    if isinstance(document, dict) and isinstance(document.get("keys"), list):
        private = [k for k in document["keys"] if isinstance(k, dict) and "d" in k]
        if len(private) != 1:
            raise UpstreamError("bad_jwk")
        return private[0]
    if not isinstance(document, dict) or "d" not in document:
        raise UpstreamError("bad_jwk")
    return document


def load_signing_key(raw: bytes) -> SigningKey:
    """The signing key of a private JWK (or a JWK Set holding exactly one)."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError("bad_jwk") from None
    jwk = _private_jwk(document)
    kty = jwk.get("kty")
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kty == "RSA":
        key, alg = _rsa(jwk), "RS384"
        members = {"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}
    elif kty == "EC":
        key, alg = _ec(jwk), "ES384"
        members = {"crv": "P-384", "kty": "EC", "x": jwk["x"], "y": jwk["y"]}
    else:
        raise UpstreamError("unsupported_jwk")
    if jwk.get("alg", alg) != alg:
        raise UpstreamError("unsupported_jwk")
    kid = jwk.get("kid")
    if not (isinstance(kid, str) and kid and kid.isprintable()):
        kid = _thumbprint(members)
    return SigningKey(alg=alg, kid=kid, key=key)
