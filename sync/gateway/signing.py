"""Signed statements of the gateway other than audit receipts: commands, command receipts, time.

Invariants:
- Each signature is Ed25519 (the receipt key) over the canonical JSON (sorted keys, no
  whitespace, UTF-8) of the statement's fields plus a ``type`` tag unique to the statement
  kind (``gatehouse-command-v1``, ``gatehouse-command-receipt-v1``, ``gatehouse-time-v1``) and
  the device id, so a signature made for one device or one kind never verifies as another.
- ``verify_*`` raise ``SignatureRefused`` (one type) for every failure; signatures travel as
  standard base64.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sync.gateway.store import CommandRecord, fhir_instant

COMMAND_TYPE = "gatehouse-command-v1"
COMMAND_RECEIPT_TYPE = "gatehouse-command-receipt-v1"
TIME_TYPE = "gatehouse-time-v1"


class SignatureRefused(Exception):
    def __init__(self, reason: str = "signature") -> None:
        super().__init__(reason)
        self.reason = reason


def canonical(fields: dict[str, Any]) -> bytes:
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def _sign(key: Ed25519PrivateKey, signed: dict[str, Any]) -> str:
    return base64.b64encode(key.sign(canonical(signed))).decode("ascii")


def _verify(public: Ed25519PublicKey, signed: dict[str, Any], signature: object) -> None:
    if not isinstance(signature, str):
        raise SignatureRefused()
    try:
        raw = base64.b64decode(signature, validate=True)
        public.verify(raw, canonical(signed))
    except (binascii.Error, ValueError, InvalidSignature):
        raise SignatureRefused() from None


def command_fields(command: CommandRecord) -> dict[str, Any]:
    """The command as the device sees it (without its signature)."""
    return {
        "id": command.command_id,
        "kind": command.kind,
        "user_id": command.user_id,
        "issued_at": fhir_instant(command.issued_at),
    }


def _command_signed(fields: dict[str, Any], device_id: str) -> dict[str, Any]:
    return {**fields, "device_id": device_id, "type": COMMAND_TYPE}


def signed_command(key: Ed25519PrivateKey, command: CommandRecord) -> dict[str, Any]:
    fields = command_fields(command)
    return {**fields, "signature": _sign(key, _command_signed(fields, command.device_id))}


def verify_command(public: Ed25519PublicKey, command: dict[str, Any], device_id: str) -> None:
    fields = {k: v for k, v in command.items() if k != "signature"}
    _verify(public, _command_signed(fields, device_id), command.get("signature"))


def command_receipt(
    key: Ed25519PrivateKey, command: CommandRecord, status: str, received_at: dt.datetime
) -> dict[str, Any]:
    fields = {
        "command_id": command.command_id,
        "device_id": command.device_id,
        "kind": command.kind,
        "status": status,
        "received_at": fhir_instant(received_at),
    }
    return {**fields, "signature": _sign(key, {**fields, "type": COMMAND_RECEIPT_TYPE})}


def verify_command_receipt(public: Ed25519PublicKey, receipt: dict[str, Any]) -> None:
    fields = {k: v for k, v in receipt.items() if k != "signature"}
    _verify(public, {**fields, "type": COMMAND_RECEIPT_TYPE}, receipt.get("signature"))


def signed_time(
    key: Ed25519PrivateKey, nonce: str, device_id: str, now: dt.datetime
) -> dict[str, Any]:
    time = fhir_instant(now)
    signed = {"nonce": nonce, "time": time, "device_id": device_id, "type": TIME_TYPE}
    return {"time": time, "nonce": nonce, "signature": _sign(key, signed)}


def verify_time(public: Ed25519PublicKey, answer: dict[str, Any], device_id: str) -> None:
    signed = {
        "nonce": answer.get("nonce"),
        "time": answer.get("time"),
        "device_id": device_id,
        "type": TIME_TYPE,
    }
    _verify(public, signed, answer.get("signature"))
