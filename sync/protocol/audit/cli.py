"""``gatehouse-audit``: verify an audit export offline, or turn it into CSV.

    gatehouse-audit verify EXPORT.json [--key-file K0.hex] [--device-id ID]
                           [--receipt RECEIPT.json --gateway-key PUB.pem]
    gatehouse-audit csv EXPORT.json [--out OUT.csv]

Invariants (the contract scripts rely on):
- exit 0 and ``OK: N entries, head <hash>`` (then ``note:`` lines) when the chain verifies;
- exit 1 and ``BROKEN at seq S: <reason> — <sentence>`` at the first broken entry;
- exit 2 and one line ``error: …`` on stderr for unusable input (unreadable, too large, not
  JSON, not an export, bad key file, receipt signature invalid); never a traceback.
- Reads are bounded (``MAX_EXPORT_BYTES``); nothing is written except the CSV output.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from typing import NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from sync.protocol.audit.audit_event import entries_from_bundle, to_csv_rows
from sync.protocol.audit.chain import KEY_BYTES, verify
from sync.protocol.audit.entry import AuditEntry, AuditFormatError, strict_json_loads
from sync.protocol.audit.receipt import Receipt, ReceiptError, receipt_from_json, verify_receipt

MAX_EXPORT_BYTES = 2 * 1024**3
MAX_SMALL_FILE = 16 * 1024


class _Usage(Exception):
    """Unusable input: reported on one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(message)


def _read(path: str, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise _Usage(
            f"cannot read the {what} {path!r}: {exc.strerror or type(exc).__name__}"
        ) from None
    if len(data) > limit:
        raise _Usage(f"the {what} {path!r} is larger than {limit} bytes")
    return data


def _load_entries(path: str) -> list[AuditEntry]:
    data = _read(path, MAX_EXPORT_BYTES, "export")
    try:
        return entries_from_bundle(strict_json_loads(data))
    except AuditFormatError as exc:
        if exc.reason == "edited" and exc.seq is not None:
            raise
        raise _Usage(f"{path!r} is not a valid audit export: {exc.message}") from None


def _load_key(path: str) -> bytes:
    text = _read(path, MAX_SMALL_FILE, "key file").decode("ascii", "replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise _Usage("the key file must hold the initial key as 64 hex digits") from None
    if len(key) != KEY_BYTES:
        raise _Usage("the key file must hold the initial key as 64 hex digits")
    return key


def _load_receipt(receipt_path: str, key_path: str | None) -> Receipt:
    if key_path is None:
        raise _Usage("--receipt needs --gateway-key to check the receipt's signature")
    receipt = receipt_from_json(_read(receipt_path, MAX_SMALL_FILE, "receipt"))
    try:
        public_key = load_pem_public_key(_read(key_path, MAX_SMALL_FILE, "gateway key"))
    except (ValueError, TypeError):
        raise _Usage("the gateway key is not a PEM public key") from None
    if not isinstance(public_key, Ed25519PublicKey):
        raise _Usage("the gateway key is not an Ed25519 public key")
    verify_receipt(receipt, public_key)
    return receipt


def _verify(args: argparse.Namespace) -> int:
    receipt = _load_receipt(args.receipt, args.gateway_key) if args.receipt else None
    key = _load_key(args.key_file) if args.key_file else None
    try:
        entries = _load_entries(args.export)
    except AuditFormatError as exc:
        print(f"BROKEN at seq {exc.seq}: edited — {exc.message}.")
        return 1
    device_id = args.device_id or (receipt.device_id if receipt else None)
    if device_id is None:
        if not entries:
            raise _Usage("the export is empty: give --device-id to check it")
        device_id = entries[0].device_id
    if receipt is not None and receipt.device_id != device_id:
        raise _Usage("the receipt belongs to another device than the one checked")
    report = verify(entries, device_id=device_id, initial_key=key, checkpoint=receipt)
    if not report.ok:
        print(f"BROKEN at seq {report.first_bad_seq}: {report.reason} — {report.sentence}")
        return 1
    print(f"OK: {report.entries_checked} entries, head {report.head_hash}")
    print(f"note: device {device_id}")
    if not report.macs_checked:
        print("note: MACs not checked (no --key-file): a forged self-consistent chain would pass")
    if receipt is None:
        print("note: no receipt given: removal of the newest entries cannot be ruled out")
    else:
        print(f"note: consistent with the gateway receipt up to seq {receipt.last_seq}")
    return 0


def _csv(args: argparse.Namespace) -> int:
    entries = _load_entries(args.export)
    if args.out:
        try:
            with open(args.out, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows(to_csv_rows(entries))
        except OSError as exc:
            raise _Usage(f"cannot write {args.out!r}: {exc.strerror}") from None
    else:
        csv.writer(sys.stdout).writerows(to_csv_rows(entries))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gatehouse-audit", description="Check Gatehouse audit exports.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    check = commands.add_parser("verify", help="verify an exported audit chain")
    check.add_argument("export", help="FHIR Bundle written by 'gatehouse device export-audit'")
    check.add_argument("--key-file", help="the device's initial audit key k0, 64 hex digits")
    check.add_argument("--device-id", help="the device the export must belong to")
    check.add_argument("--receipt", help="a gateway receipt (JSON) to check truncation against")
    check.add_argument("--gateway-key", help="the gateway's Ed25519 public key (PEM)")
    check.set_defaults(run=_verify)
    table = commands.add_parser("csv", help="write an export as CSV")
    table.add_argument("export")
    table.add_argument("--out", help="output file (default: standard output)")
    table.set_defaults(run=_csv)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gatehouse-audit``; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
        status: int = args.run(args)
        return status
    except (_Usage, ReceiptError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: the export is too large to check on this machine", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line, never a traceback (the contract above)
        print(f"error: unexpected failure ({type(exc).__name__})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
