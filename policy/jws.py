"""JWS JSON general serialisation (RFC 7515 §7.2.1) with EdDSA / Ed25519 (RFC 8037).

Invariants:

* Input is bounded before anything is parsed: an envelope over :data:`MAX_ENVELOPE_BYTES` is
  refused ``too_large`` unread.
* Only the general serialisation is accepted: a top-level object with exactly ``payload`` and
  ``signatures``; each signature object has exactly ``protected`` and ``signature`` — no
  unprotected ``header``, so the ``kid`` that selects a key is always the signed one.
* The protected header is exactly ``{"alg": "EdDSA", "kid": ..., "typ":
  "gatehouse-policy+jws"}``: ``alg`` ``none`` or anything else is ``bad_signature``; ``crit``
  or any other member is ``malformed``.
* base64url is strict: URL-safe alphabet, no padding, canonical trailing bits.
* A signature is checked over the exact ASCII bytes received (``protected || "." ||
  payload``); the payload is base64-decoded only after the threshold of distinct trusted keys
  has verified, and its JSON is never looked at here.
* Threshold: distinct ``kid`` values with a valid signature are counted, so the same key
  signing twice counts once. Any signature by a trusted key that does not verify refuses the
  whole envelope (it was altered or mis-signed); signatures by unknown keys are ignored when
  the threshold is met without them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from policy.errors import PolicyReason, PolicyRefused
from policy.strictjson import StrictJSONError, loads_strict

# 256 KiB: a full policy with every setting and a long device list is a few KiB; anything
# bigger is refused before parsing so a hostile file cannot make the verifier allocate much.
MAX_ENVELOPE_BYTES = 256 * 1024
# Enough for any realistic k-of-n signing group; bounds the signature-checking work.
MAX_SIGNATURES = 16
# A protected header is three short members; bound its decoded size.
MAX_PROTECTED_HEADER_BYTES = 1024
MAX_KID_LENGTH = 128

ALGORITHM = "EdDSA"
MEDIA_TYPE = "gatehouse-policy+jws"
ED25519_SIGNATURE_BYTES = 64

_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url: raises ``ValueError`` on any non-canonical input."""
    if _B64URL_RE.fullmatch(text) is None or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not unpadded base64url") from None
    if b64url_encode(data) != text:
        raise ValueError("non-canonical base64url")
    return data


def kid_for(public_key: Ed25519PublicKey) -> str:
    """Key id: base64url SHA-256 of the raw 32-byte public key (a stable thumbprint)."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return b64url_encode(hashlib.sha256(raw).digest())


@dataclass(frozen=True)
class SignatureEntry:
    """One entry of ``signatures``: the header as received and as decoded."""

    protected_b64: str
    alg: str
    kid: str
    signature: bytes


@dataclass(frozen=True)
class ParsedEnvelope:
    """A structurally valid envelope; nothing here is verified yet."""

    payload_b64: str
    signatures: tuple[SignatureEntry, ...]

    def unverified_payload(self) -> bytes:
        """The payload bytes, NOT verified: for display (``gatehouse-policy show``) only."""
        return b64url_decode(self.payload_b64)


@dataclass(frozen=True)
class VerifiedPayload:
    """Payload bytes covered by at least ``threshold`` distinct trusted signatures."""

    payload: bytes
    kids: tuple[str, ...]


def _malformed(detail: str) -> PolicyRefused:
    return PolicyRefused(PolicyReason.MALFORMED, detail)


def _b64_member(obj: Mapping[str, object], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise _malformed(f"'{name}' must be a string")
    try:
        b64url_decode(value)
    except ValueError:
        raise _malformed(f"'{name}' is not strict base64url") from None
    return value


def _parse_signature(entry: object) -> SignatureEntry:
    if not isinstance(entry, dict):
        raise _malformed("a signature entry is not an object")
    if set(entry) != {"protected", "signature"}:
        raise _malformed("a signature entry must have exactly 'protected' and 'signature'")
    protected_b64 = _b64_member(entry, "protected")
    signature = b64url_decode(_b64_member(entry, "signature"))
    raw_header = b64url_decode(protected_b64)
    if len(raw_header) > MAX_PROTECTED_HEADER_BYTES:
        raise _malformed("protected header too large")
    try:
        header = loads_strict(raw_header)
    except StrictJSONError as exc:
        raise _malformed(f"protected header: {exc}") from None
    if not isinstance(header, dict):
        raise _malformed("protected header is not a JSON object")
    if "crit" in header:
        raise _malformed("protected header has 'crit': no extensions are supported")
    if set(header) != {"alg", "kid", "typ"}:
        raise _malformed("protected header must have exactly 'alg', 'kid' and 'typ'")
    alg, kid, typ = header["alg"], header["kid"], header["typ"]
    if not isinstance(alg, str) or not isinstance(kid, str) or not isinstance(typ, str):
        raise _malformed("protected header members must be strings")
    if typ != MEDIA_TYPE:
        raise _malformed(f"protected header 'typ' must be {MEDIA_TYPE}")
    if not 0 < len(kid) <= MAX_KID_LENGTH:
        raise _malformed("protected header 'kid' has a bad length")
    return SignatureEntry(protected_b64, alg, kid, signature)


def parse_envelope(envelope: bytes) -> ParsedEnvelope:
    """Check the envelope's size and structure; raises ``PolicyRefused`` (too_large/malformed)."""
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise PolicyRefused(
            PolicyReason.TOO_LARGE, f"envelope is {len(envelope)} bytes (max {MAX_ENVELOPE_BYTES})"
        )
    try:
        top = loads_strict(envelope)
    except StrictJSONError as exc:
        raise _malformed(f"envelope: {exc}") from None
    if not isinstance(top, dict):
        raise _malformed("envelope is not a JSON object")
    if set(top) != {"payload", "signatures"}:
        raise _malformed("envelope must have exactly 'payload' and 'signatures' (general JSON)")
    payload_b64 = _b64_member(top, "payload")
    entries = top["signatures"]
    if not isinstance(entries, list) or not entries:
        raise _malformed("'signatures' must be a non-empty list")
    if len(entries) > MAX_SIGNATURES:
        raise _malformed(f"more than {MAX_SIGNATURES} signatures")
    return ParsedEnvelope(payload_b64, tuple(_parse_signature(e) for e in entries))


def verify_signatures(
    envelope: bytes, keys: Mapping[str, Ed25519PublicKey], threshold: int
) -> VerifiedPayload:
    """Verify ``envelope`` against trusted ``keys`` (by kid) with a k-of-n ``threshold``.

    Returns the payload bytes only when at least ``threshold`` distinct trusted keys signed the
    exact bytes received; raises ``PolicyRefused`` otherwise.
    """
    parsed = parse_envelope(envelope)
    valid: list[str] = []
    unknown = 0
    for entry in parsed.signatures:
        if entry.alg != ALGORITHM:
            raise PolicyRefused(
                PolicyReason.BAD_SIGNATURE, f"algorithm {entry.alg[:20]!a} is not allowed"
            )
        key = keys.get(entry.kid)
        if key is None:
            unknown += 1
            continue
        signing_input = f"{entry.protected_b64}.{parsed.payload_b64}".encode("ascii")
        try:
            if len(entry.signature) != ED25519_SIGNATURE_BYTES:
                raise InvalidSignature
            key.verify(entry.signature, signing_input)
        except InvalidSignature:
            raise PolicyRefused(
                PolicyReason.BAD_SIGNATURE, f"signature by key {entry.kid} does not verify"
            ) from None
        if entry.kid not in valid:
            valid.append(entry.kid)
    if len(valid) < threshold:
        if not valid and unknown:
            raise PolicyRefused(PolicyReason.UNKNOWN_KEY, "no signature is by a trusted key")
        raise PolicyRefused(
            PolicyReason.BELOW_THRESHOLD,
            f"{len(valid)} distinct trusted signature(s), {threshold} required",
        )
    return VerifiedPayload(b64url_decode(parsed.payload_b64), tuple(valid))


def sign(payload: bytes, keys: Sequence[Ed25519PrivateKey]) -> bytes:
    """Sign ``payload`` with each key; return the JWS JSON general serialisation as bytes."""
    if not keys:
        raise ValueError("at least one signing key is needed")
    if len(keys) > MAX_SIGNATURES:
        raise ValueError(f"at most {MAX_SIGNATURES} signing keys")
    payload_b64 = b64url_encode(payload)
    signatures: list[dict[str, str]] = []
    seen: set[str] = set()
    for key in keys:
        kid = kid_for(key.public_key())
        if kid in seen:
            raise ValueError("the same signing key was given twice")
        seen.add(kid)
        header = {"alg": ALGORITHM, "kid": kid, "typ": MEDIA_TYPE}
        protected_b64 = b64url_encode(
            json.dumps(header, separators=(",", ":"), sort_keys=True).encode("ascii")
        )
        signature = key.sign(f"{protected_b64}.{payload_b64}".encode("ascii"))
        signatures.append({"protected": protected_b64, "signature": b64url_encode(signature)})
    envelope = json.dumps(
        {"payload": payload_b64, "signatures": signatures}, separators=(",", ":"), sort_keys=True
    ).encode("ascii")
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise ValueError(f"signed envelope would exceed {MAX_ENVELOPE_BYTES} bytes")
    return envelope
