"""The wipe report (SECURITY.md WP-3): what a wiped laptop tells its gateway, and the answer.

A wipe destroys the laptop's TLS identity, so the report cannot ride on mutual TLS. Instead the
laptop makes a second Ed25519 key pair at enrolment, kept for this one purpose; the gateway
stores its public key with the device. The report is signed with it and sent over TLS pinned to
the gateway (no client certificate); the gateway answers with an acknowledgement signed by its
receipt key.

Invariants:
- The report statement is the canonical JSON (``statements.canonical``) of exactly
  ``REPORT_FIELDS`` plus the type tag ``WIPE_REPORT_TYPE``; the acknowledgement is
  ``ACK_FIELDS`` plus ``WIPE_REPORT_ACK_TYPE``. A signature made for one kind never verifies
  as another, nor for another device (the device id is inside).
- A report can only ever say "this device was wiped, because of ``cause``": the gateway moves
  the device to ``wiped`` (one way; nothing un-wipes) and, when it names a pending wipe command
  of the same device, completes that command. Re-sending the same report changes nothing.
- ``parse_report`` refuses anything but the exact shape (``WipeReportRefused``, one type).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sync.protocol.errors import ProtocolError
from sync.protocol.statements import SignatureRefused, canonical, verify

WIPE_REPORT_TYPE: Final = "gatehouse-wipe-report-v1"
WIPE_REPORT_ACK_TYPE: Final = "gatehouse-wipe-report-ack-v1"
WIPE_REPORT_PATH: Final = "device/wipe-report"
# Why a laptop wiped itself (or was wiped): the codes the client uses, and nothing else.
CAUSES: Final = frozenset(
    {"too_many_failed_logins", "offline_too_long", "remote_wipe", "admin_wipe", "requested"}
)
REPORT_FIELDS: Final = ("report_id", "device_id", "cause", "wiped_at", "command_id")
ACK_FIELDS: Final = ("report_id", "device_id", "status", "received_at")
PUBLIC_KEY_BYTES: Final = 32
_REPORT_ID_RE = re.compile(r"[A-Za-z0-9_-]{22,64}")
_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class WipeReportRefused(ProtocolError):
    """A wipe report or its acknowledgement is malformed or not signed by the right key."""

    def __init__(self, reason: str = "wipe_report") -> None:
        super().__init__(reason)


@dataclass(frozen=True)
class WipeReport:
    report_id: str
    device_id: str
    cause: str
    wiped_at: str  # ISO 8601 with offset, as the laptop's clock said
    command_id: str | None  # the remote wipe command this report completes, if any

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in REPORT_FIELDS}


def report_statement(report: WipeReport) -> dict[str, Any]:
    return {**report.fields(), "type": WIPE_REPORT_TYPE}


def ack_statement(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {**{name: fields.get(name) for name in ACK_FIELDS}, "type": WIPE_REPORT_ACK_TYPE}


def sign_statement(key: Ed25519PrivateKey, statement: Mapping[str, Any]) -> str:
    return base64.b64encode(key.sign(canonical(statement))).decode("ascii")


def public_key_text(key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key as standard base64 (how enrolment carries it)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def public_key_from_text(text: object) -> Ed25519PublicKey:
    if not isinstance(text, str) or len(text) > 64:
        raise WipeReportRefused("bad_key")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise WipeReportRefused("bad_key") from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise WipeReportRefused("bad_key")
    return Ed25519PublicKey.from_public_bytes(raw)


def parse_report(data: object) -> tuple[WipeReport, str]:
    """(report, signature) from ``{"report": {...}, "signature": "..."}``; shape only."""
    if not isinstance(data, dict) or set(data) != {"report", "signature"}:
        raise WipeReportRefused()
    body, signature = data["report"], data["signature"]
    if not isinstance(body, dict) or set(body) != set(REPORT_FIELDS):
        raise WipeReportRefused()
    if not isinstance(signature, str) or len(signature) > 128:
        raise WipeReportRefused()
    report_id, device_id, cause = body["report_id"], body["device_id"], body["cause"]
    wiped_at, command_id = body["wiped_at"], body["command_id"]
    if not isinstance(report_id, str) or not _REPORT_ID_RE.fullmatch(report_id):
        raise WipeReportRefused()
    if not isinstance(device_id, str) or not _ID_RE.fullmatch(device_id):
        raise WipeReportRefused()
    if cause not in CAUSES or not isinstance(cause, str):
        raise WipeReportRefused()
    if command_id is not None and (
        not isinstance(command_id, str) or not _ID_RE.fullmatch(command_id)
    ):
        raise WipeReportRefused()
    if not isinstance(wiped_at, str) or len(wiped_at) > 40:
        raise WipeReportRefused()
    try:
        when = dt.datetime.fromisoformat(wiped_at)
    except ValueError:
        raise WipeReportRefused() from None
    if when.tzinfo is None:
        raise WipeReportRefused()
    return WipeReport(report_id, device_id, cause, wiped_at, command_id), signature


def verify_report(public: Ed25519PublicKey, report: WipeReport, signature: str) -> None:
    try:
        verify(public, report_statement(report), signature)
    except SignatureRefused:
        raise WipeReportRefused("signature") from None


def verify_ack(public: Ed25519PublicKey, ack: object, report: WipeReport) -> dict[str, Any]:
    """The gateway's signed acknowledgement of exactly this report, or ``WipeReportRefused``."""
    if not isinstance(ack, dict) or set(ack) != {*ACK_FIELDS, "signature"}:
        raise WipeReportRefused("bad_ack")
    if ack["report_id"] != report.report_id or ack["device_id"] != report.device_id:
        raise WipeReportRefused("bad_ack")
    try:
        verify(public, ack_statement(ack), ack["signature"])
    except SignatureRefused:
        raise WipeReportRefused("bad_ack") from None
    return dict(ack)
