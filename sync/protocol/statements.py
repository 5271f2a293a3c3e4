"""Signed statements of the gateway other than audit receipts: what exactly is signed.

Shared by the gateway (which signs, sync/gateway/signing.py) and the device (which verifies,
sync/device/control.py), so both sides build the same bytes.

Invariants:
- Each signature is Ed25519 (the gateway's receipt key) over the canonical JSON (sorted keys,
  no whitespace, UTF-8) of the statement's fields plus a ``type`` tag unique to the statement
  kind and the device id, so a signature made for one device or one kind never verifies as
  another. Signatures travel as standard base64.
- ``verify`` raises ``SignatureRefused`` (one type) for every failure.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sync.protocol.errors import ProtocolError

COMMAND_TYPE = "gatehouse-command-v1"
COMMAND_RECEIPT_TYPE = "gatehouse-command-receipt-v1"
TIME_TYPE = "gatehouse-time-v1"


class SignatureRefused(ProtocolError):
    def __init__(self, reason: str = "signature") -> None:
        super().__init__(reason)


def canonical(fields: Mapping[str, Any]) -> bytes:
    return orjson.dumps(dict(fields), option=orjson.OPT_SORT_KEYS)


def command_statement(fields: Mapping[str, Any], device_id: str) -> dict[str, Any]:
    """A command as signed: its fields (without the signature), the device and the type."""
    return {**fields, "device_id": device_id, "type": COMMAND_TYPE}


def command_receipt_statement(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {**fields, "type": COMMAND_RECEIPT_TYPE}


def time_statement(nonce: object, time: object, device_id: str) -> dict[str, Any]:
    return {"nonce": nonce, "time": time, "device_id": device_id, "type": TIME_TYPE}


def verify(public: Ed25519PublicKey, statement: Mapping[str, Any], signature: object) -> None:
    if not isinstance(signature, str):
        raise SignatureRefused()
    try:
        public.verify(base64.b64decode(signature, validate=True), canonical(statement))
    except (binascii.Error, ValueError, InvalidSignature):
        raise SignatureRefused() from None
