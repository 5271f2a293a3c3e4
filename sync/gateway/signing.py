"""The gateway signs commands, command receipts and time (what is signed:
``sync/protocol/statements.py``).

Invariant: every statement is built by sync/protocol/statements.py, the module the device verifies
with, so both sides always sign and check the same bytes; ``verify_*`` raise
``SignatureRefused`` for every failure.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sync.gateway.store.base import CommandRecord, fhir_instant
from sync.protocol.statements import (
    COMMAND_RECEIPT_TYPE,
    COMMAND_TYPE,
    TIME_TYPE,
    SignatureRefused,
    canonical,
    command_receipt_statement,
    command_statement,
    time_statement,
    verify,
)
from sync.protocol.wipe_report import ack_statement

__all__ = [
    "COMMAND_RECEIPT_TYPE",
    "COMMAND_TYPE",
    "TIME_TYPE",
    "SignatureRefused",
    "command_receipt",
    "signed_command",
    "signed_time",
    "verify_command",
    "verify_command_receipt",
    "verify_time",
    "wipe_report_ack",
]


def _sign(key: Ed25519PrivateKey, signed: dict[str, Any]) -> str:
    return base64.b64encode(key.sign(canonical(signed))).decode("ascii")


def command_fields(command: CommandRecord) -> dict[str, Any]:
    """The command as the device sees it (without its signature)."""
    return {
        "id": command.command_id,
        "kind": command.kind,
        "user_id": command.user_id,
        "issued_at": fhir_instant(command.issued_at),
    }


def signed_command(key: Ed25519PrivateKey, command: CommandRecord) -> dict[str, Any]:
    fields = command_fields(command)
    return {**fields, "signature": _sign(key, command_statement(fields, command.device_id))}


def verify_command(public: Ed25519PublicKey, command: dict[str, Any], device_id: str) -> None:
    fields = {k: v for k, v in command.items() if k != "signature"}
    verify(public, command_statement(fields, device_id), command.get("signature"))


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
    return {**fields, "signature": _sign(key, command_receipt_statement(fields))}


def verify_command_receipt(public: Ed25519PublicKey, receipt: dict[str, Any]) -> None:
    fields = {k: v for k, v in receipt.items() if k != "signature"}
    verify(public, command_receipt_statement(fields), receipt.get("signature"))


def wipe_report_ack(
    key: Ed25519PrivateKey, device_id: str, report_id: str, status: str, now: dt.datetime
) -> dict[str, Any]:
    """The gateway's acknowledgement of a laptop's wipe report (WP-3)."""
    fields = {
        "report_id": report_id,
        "device_id": device_id,
        "status": status,
        "received_at": fhir_instant(now),
    }
    return {**fields, "signature": _sign(key, ack_statement(fields))}


def signed_time(
    key: Ed25519PrivateKey, nonce: str, device_id: str, now: dt.datetime
) -> dict[str, Any]:
    time = fhir_instant(now)
    signed = time_statement(nonce, time, device_id)
    return {"time": time, "nonce": nonce, "signature": _sign(key, signed)}


def verify_time(public: Ed25519PublicKey, answer: dict[str, Any], device_id: str) -> None:
    signed = time_statement(answer.get("nonce"), answer.get("time"), device_id)
    verify(public, signed, answer.get("signature"))
