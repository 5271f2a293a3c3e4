"""Signed audit receipts: the gateway's statement "device D's chain reached seq N with head H".

Invariants:
- The signature (Ed25519) covers the canonical JSON of ``{"type":
  "gatehouse-audit-receipt-v1", "device_id", "last_seq", "head_hash", "issued_at"}`` (sorted
  keys, no whitespace, UTF-8): the type tag keeps a receipt signature from being replayed as any
  other signed object of the product.
- ``verify_receipt`` raises ``ReceiptError`` (one type, a stable ``reason``) for every failure:
  ``signature``, ``malformed``, ``future``. It never returns a half-trusted receipt.
- ``receipt_from_json`` is strict and bounded: exactly the expected fields, right types.
- A verified receipt proves, from either side, that entries up to ``last_seq`` existed with the
  stated head: fewer entries later means truncation, another hash at that seq means replacement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sync.protocol.audit.entry import MAX_SEQ, AuditFormatError, strict_json_loads
from sync.protocol.errors import ProtocolError

RECEIPT_TYPE = "gatehouse-audit-receipt-v1"
MAX_RECEIPT_BYTES = 4096
DEFAULT_MAX_SKEW = timedelta(minutes=5)

_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HASH_HEX = re.compile(r"[0-9a-f]{64}")
_SIG_HEX = re.compile(r"[0-9a-f]{128}")
_FIELDS = frozenset({"device_id", "last_seq", "head_hash", "issued_at", "signature"})


class ReceiptError(ProtocolError):
    """A receipt that cannot be trusted. ``reason``: signature, malformed or future."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """The gateway's signed checkpoint of one device's chain (``signature`` is 64 bytes)."""

    device_id: str
    last_seq: int
    head_hash: str
    issued_at: datetime
    signature: bytes


def _check_fields(
    device_id: object, last_seq: object, head_hash: object, issued_at: object
) -> None:
    if type(device_id) is not str or not _DEVICE_ID.fullmatch(device_id):
        raise ReceiptError("malformed", "receipt device id is not valid")
    if type(last_seq) is not int or not 0 <= last_seq <= MAX_SEQ:
        raise ReceiptError("malformed", "receipt sequence number is not valid")
    if type(head_hash) is not str or not _HASH_HEX.fullmatch(head_hash):
        raise ReceiptError("malformed", "receipt head hash is not valid")
    if not isinstance(issued_at, datetime) or issued_at.utcoffset() is None:
        raise ReceiptError("malformed", "receipt time must be timezone-aware")


def _issued_text(issued_at: datetime) -> str:
    return issued_at.astimezone(UTC).isoformat(timespec="microseconds")


def receipt_message(device_id: str, last_seq: int, head_hash: str, issued_at: datetime) -> bytes:
    """The exact bytes the gateway signs."""
    _check_fields(device_id, last_seq, head_hash, issued_at)
    body = {
        "type": RECEIPT_TYPE,
        "device_id": device_id,
        "last_seq": last_seq,
        "head_hash": head_hash,
        "issued_at": _issued_text(issued_at),
    }
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign_receipt(
    private_key: Ed25519PrivateKey,
    *,
    device_id: str,
    last_seq: int,
    head_hash: str,
    issued_at: datetime,
) -> Receipt:
    """Sign a checkpoint (gateway side). ``issued_at`` is the gateway's trusted time."""
    message = receipt_message(device_id, last_seq, head_hash, issued_at)
    issued = datetime.fromisoformat(_issued_text(issued_at))
    return Receipt(device_id, last_seq, head_hash, issued, private_key.sign(message))


def verify_receipt(
    receipt: Receipt,
    public_key: Ed25519PublicKey,
    *,
    now: datetime | None = None,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
) -> None:
    """Raise ``ReceiptError`` unless ``public_key`` signed exactly this receipt.

    With ``now``, a receipt dated more than ``max_skew`` in the future is refused (``future``).
    """
    message = receipt_message(
        receipt.device_id, receipt.last_seq, receipt.head_hash, receipt.issued_at
    )
    if type(receipt.signature) is not bytes or len(receipt.signature) != 64:
        raise ReceiptError("malformed", "receipt signature must be 64 bytes")
    try:
        public_key.verify(receipt.signature, message)
    except InvalidSignature:
        raise ReceiptError("signature", "the receipt was not signed by this gateway key") from None
    if now is not None and receipt.issued_at - now > max_skew:
        raise ReceiptError("future", "the receipt is dated in the future")


def receipt_to_json(receipt: Receipt) -> bytes:
    """The receipt as stored by the device and sent over the wire (sorted, compact JSON)."""
    body = {
        "device_id": receipt.device_id,
        "last_seq": receipt.last_seq,
        "head_hash": receipt.head_hash,
        "issued_at": _issued_text(receipt.issued_at),
        "signature": receipt.signature.hex(),
    }
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def receipt_from_json(data: bytes | str) -> Receipt:
    """Parse a receipt strictly (it is not trusted until ``verify_receipt``)."""
    if len(data) > MAX_RECEIPT_BYTES:
        raise ReceiptError("malformed", "receipt is too large")
    try:
        obj = strict_json_loads(data)
    except AuditFormatError as exc:
        raise ReceiptError("malformed", exc.message) from None
    if not isinstance(obj, dict) or set(obj) != _FIELDS:
        raise ReceiptError("malformed", "receipt has the wrong fields")
    issued_text, signature = obj["issued_at"], obj["signature"]
    if type(signature) is not str or not _SIG_HEX.fullmatch(signature):
        raise ReceiptError("malformed", "receipt signature is not 128 hex digits")
    if type(issued_text) is not str or len(issued_text) > 40:
        raise ReceiptError("malformed", "receipt time is not valid")
    try:
        issued_at = datetime.fromisoformat(issued_text)
    except ValueError:
        raise ReceiptError("malformed", "receipt time is not valid") from None
    _check_fields(obj["device_id"], obj["last_seq"], obj["head_hash"], issued_at)
    return Receipt(
        obj["device_id"], obj["last_seq"], obj["head_hash"], issued_at, bytes.fromhex(signature)
    )
