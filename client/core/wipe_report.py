"""The laptop's side of wipe reports (SECURITY.md WP-3, and WP-2's receipt after a kill).

A wipe destroys the device's TLS identity, so the laptop keeps, from enrolment, a *reporter*:
an Ed25519 key made for this one purpose (its public key registered with the gateway at
enrolment), the gateway's address and pins, its CA and its receipt public key. The reporter
files are not part of what a wipe deletes.

Guarantees:
- ``signed_report`` is made before a wipe destroys anything and travels inside the wipe's own
  marker (client.core.wipe); the wipe's last step turns it into ``wipe-report.json``. So a
  pending report exists exactly when a wipe has destroyed the vault, whatever instant the
  process died at, and never for a laptop that was not wiped.
- ``send_pending_report`` sends it over TLS 1.3 pinned to the gateway, without a client
  certificate, to the one route that accepts it; only a gateway acknowledgement signed by the
  receipt key for this very report removes it (and then the reporter, whose job is done). Any
  failure leaves it for the next start; re-sending is harmless (the gateway keeps one report).
- The reporter key can sign nothing but "this device was wiped": someone who copies it can at
  worst mark this laptop wiped at the gateway (which shuts it out), never un-wipe it, never
  read anything. Nothing here holds a secret of the vault.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client.core.wipe import PENDING_REPORT_NAME
from policy.atomic import atomic_write, fsync_directory
from sync.device.transport import Transport, TransportConfig, TransportError, decode_pin
from sync.protocol.fhir.bounded_json import MAX_CONTROL_BYTES, BoundedJsonError, loads_bounded
from sync.protocol.wipe_report import (
    WIPE_REPORT_PATH,
    WipeReport,
    WipeReportRefused,
    parse_report,
    report_statement,
    sign_statement,
    verify_ack,
)

log = logging.getLogger(__name__)

REPORTER_NAME: Final = "wipe-reporter.json"
REPORTER_CA_NAME: Final = "wipe-reporter-ca.pem"
REPORTER_FORMAT: Final = 1
MAX_REPORTER_BYTES: Final = 64 * 1024
CONNECT_TIMEOUT_S: Final = 10.0
READ_TIMEOUT_S: Final = 30.0


def new_reporter_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@dataclass(frozen=True)
class GatewayAddress:
    """Where a report goes: the gateway URL, its allowed hosts and SPKI pins (base64)."""

    url: str
    hosts: tuple[str, ...]
    pins: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "hosts": list(self.hosts), "pins": list(self.pins)}

    @classmethod
    def from_json(cls, data: object) -> GatewayAddress | None:
        if not isinstance(data, dict):
            return None
        url, hosts, pins = data.get("url"), data.get("hosts"), data.get("pins")
        if not isinstance(url, str) or not isinstance(hosts, list) or not isinstance(pins, list):
            return None
        if not all(isinstance(h, str) for h in hosts) or not all(isinstance(p, str) for p in pins):
            return None
        return cls(url, tuple(hosts), tuple(pins))


def address(url: str, hosts: Collection[str], pins: Sequence[bytes]) -> GatewayAddress:
    encoded = tuple(base64.b64encode(p).decode("ascii") for p in pins)
    return GatewayAddress(url, tuple(hosts), encoded)


@dataclass(frozen=True)
class Reporter:
    device_id: str
    key: Ed25519PrivateKey
    gateway: GatewayAddress
    receipt_key: Ed25519PublicKey


def save_reporter(
    data_dir: Path,
    *,
    device_id: str,
    key: Ed25519PrivateKey,
    gateway: GatewayAddress,
    ca_pem: bytes,
    receipt_key_pem: bytes,
) -> None:
    """Written at enrolment (0600, atomically); survives a wipe."""
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    document = {
        "format": REPORTER_FORMAT,
        "purpose": "signs this laptop's wipe report; nothing else",
        "device_id": device_id,
        "key": base64.b64encode(raw).decode("ascii"),
        "gateway": gateway.to_json(),
        "receipt_key": receipt_key_pem.decode("ascii"),
    }
    data_dir = Path(data_dir)
    atomic_write(data_dir / REPORTER_CA_NAME, ca_pem)
    atomic_write(data_dir / REPORTER_NAME, json.dumps(document, indent=2).encode("ascii"))


def _read_json(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            return loads_bounded(handle.read(MAX_REPORTER_BYTES + 1), max_bytes=MAX_REPORTER_BYTES)
    except (OSError, BoundedJsonError):
        return None


def load_reporter(data_dir: Path) -> Reporter | None:
    """The reporter kept from enrolment, or None (absent, damaged, or from before WP-3)."""
    data = _read_json(Path(data_dir) / REPORTER_NAME)
    if not isinstance(data, dict) or data.get("format") != REPORTER_FORMAT:
        return None
    gateway = GatewayAddress.from_json(data.get("gateway"))
    device_id, key, receipt = data.get("device_id"), data.get("key"), data.get("receipt_key")
    if gateway is None or not isinstance(device_id, str):
        return None
    if not isinstance(key, str) or not isinstance(receipt, str):
        return None
    try:
        private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(key, validate=True))
        public = serialization.load_pem_public_key(receipt.encode("ascii"))
    except (ValueError, TypeError):
        return None
    if not isinstance(public, Ed25519PublicKey):
        return None
    return Reporter(device_id, private, gateway, public)


def signed_report(
    data_dir: Path,
    *,
    device_id: str,
    cause: str,
    now: dt.datetime,
    command_id: str | None = None,
    gateway: GatewayAddress | None = None,
) -> dict[str, Any] | None:
    """The report of a wipe about to start, signed; None if this laptop has no reporter.

    ``gateway``: where to send it (the policy in force), else where enrolment said.
    """
    reporter = load_reporter(data_dir)
    if reporter is None or reporter.device_id != device_id:
        return None
    report = WipeReport(
        report_id=base64.urlsafe_b64encode(secrets.token_bytes(18)).decode("ascii"),
        device_id=device_id,
        cause=cause,
        wiped_at=now.isoformat(),
        command_id=command_id,
    )
    return {
        "report": report.fields(),
        "signature": sign_statement(reporter.key, report_statement(report)),
        "gateway": (gateway or reporter.gateway).to_json(),
    }


def has_pending_report(data_dir: Path) -> bool:
    return (Path(data_dir) / PENDING_REPORT_NAME).exists()


def _config(data_dir: Path, gateway: GatewayAddress) -> TransportConfig:
    ca = data_dir / REPORTER_CA_NAME
    return TransportConfig(
        gateway_url=gateway.url,
        allowed_hosts=gateway.hosts,
        spki_pins=tuple(decode_pin(p) for p in gateway.pins),
        client_cert_file=None,  # the TLS identity is gone: the report's signature stands in
        client_key_file=None,
        server_ca_file=ca if ca.exists() else None,
        connect_timeout_s=CONNECT_TIMEOUT_S,
        read_timeout_s=READ_TIMEOUT_S,
    )


def forget_reporter(data_dir: Path) -> None:
    """Remove the reporter files (its report was acknowledged)."""
    (data_dir / REPORTER_NAME).unlink(missing_ok=True)
    (data_dir / REPORTER_CA_NAME).unlink(missing_ok=True)
    fsync_directory(data_dir)


def _forget(data_dir: Path, reporter: Reporter, report: WipeReport) -> None:
    """The gateway has it: remove the report, and the reporter if it was this device's (a
    kill in between leaves a reporter with no vault and no report, which the next start
    removes: ``client.core.device.report_wipe_if_any``)."""
    (data_dir / PENDING_REPORT_NAME).unlink(missing_ok=True)
    fsync_directory(data_dir)
    if reporter.device_id == report.device_id:
        forget_reporter(data_dir)


def send_pending_report(data_dir: Path) -> str:
    """Send the pending wipe report, if any. Returns ``none`` (nothing pending), ``sent`` (the
    gateway acknowledged it; it is gone) or ``failed:<reason>`` (kept for the next start)."""
    data_dir = Path(data_dir)
    pending = _read_json(data_dir / PENDING_REPORT_NAME)
    if pending is None:
        return "failed:unreadable" if has_pending_report(data_dir) else "none"
    reporter = load_reporter(data_dir)
    if reporter is None:
        return "failed:no_reporter"
    try:
        report, signature = parse_report(
            {"report": pending.get("report"), "signature": pending.get("signature")}
            if isinstance(pending, dict)
            else None
        )
        gateway = GatewayAddress.from_json(pending.get("gateway")) or reporter.gateway
        body = {"report": report.fields(), "signature": signature}
        with Transport(_config(data_dir, gateway)) as transport:
            response = transport.post_json(WIPE_REPORT_PATH, body, idempotent=True)
        answer = loads_bounded(response.body, max_bytes=MAX_CONTROL_BYTES, max_depth=4)
        if response.status != 200 or not isinstance(answer, dict):
            reason = answer.get("error") if isinstance(answer, dict) else None
            return f"failed:{reason if isinstance(reason, str) else response.status}"
        verify_ack(reporter.receipt_key, answer.get("ack"), report)
    except TransportError as error:
        return f"failed:{error.reason}"
    except (WipeReportRefused, BoundedJsonError) as error:
        return f"failed:{error.reason}"
    _forget(data_dir, reporter, report)
    log.info("wipe report acknowledged by the gateway")
    return "sent"
