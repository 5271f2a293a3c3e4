"""``gatehouse-policy``: create signing keys, write, sign, verify and inspect device policies.

Invariants:

* Exit codes: 0 success; 1 the policy was refused (or an operation was refused, such as
  overwriting a key) with one line ``refused: <reason>: <detail>`` or ``error: ...`` on stderr;
  2 usage error (bad arguments, an unreadable or unusable input file) with one line on stderr.
  Never a traceback for bad input.
* Private keys are written with :func:`policy.atomic.atomic_write` at mode 0600 and are never
  overwritten; a passphrase is only ever read from an environment variable named on the
  command line, never from argv.
* ``sign`` refuses to sign a payload that would not pass the device's schema check.
* ``show`` prints the payload marked ``UNVERIFIED`` unless ``--trust`` keys verified it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from policy.atomic import atomic_write
from policy.errors import PolicyRefused
from policy.jws import MAX_ENVELOPE_BYTES, kid_for, parse_envelope, sign, verify_signatures
from policy.model import Policy, build_payload, format_timestamp, parse_payload
from policy.schema import PLACEHOLDER_GATEWAY_HOST, PLACEHOLDER_PINS, defaults, is_site_code
from policy.strictjson import StrictJSONError, loads_strict
from policy.verify import TrustConfig, verify_policy

PROG = "gatehouse-policy"
MAX_KEY_FILE_BYTES = 16 * 1024
PUBLIC_FILE_MODE = 0o644
DEFAULT_VALID_DAYS = 90
_KEY_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


class UsageError(Exception):
    """Bad arguments or unusable input files: exit 2."""


class OperationError(Exception):
    """A refused operation that is not a policy refusal: exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _read(path: str, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"cannot read {what} {path!a}: {reason}") from None


def _passphrase(env_name: str | None) -> bytes | None:
    if env_name is None:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise UsageError(f"environment variable {env_name!a} is not set")
    return value.encode("utf-8")


def _load_private(path: str, passphrase: bytes | None) -> Ed25519PrivateKey:
    data = _read(path, MAX_KEY_FILE_BYTES, "key")
    try:
        key = load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError(f"{path!a} is not a usable Ed25519 private key PEM") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path!a} is not an Ed25519 private key")
    return key


def _load_public(path: str) -> Ed25519PublicKey:
    data = _read(path, MAX_KEY_FILE_BYTES, "public key")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError(f"{path!a} is not an Ed25519 public key PEM") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path!a} is not an Ed25519 public key")
    return key


def _parse_now(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--now {value!a} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise UsageError("--now needs a UTC offset, e.g. 2026-01-31T12:00:00Z")
    return parsed.astimezone(UTC)


def _trust(paths: Sequence[str], threshold: int) -> TrustConfig:
    keys = [_load_public(p) for p in paths]
    try:
        return TrustConfig.from_keys(keys, threshold)
    except ValueError as exc:
        raise UsageError(f"--threshold: {exc}") from None


def _cmd_keygen(args: argparse.Namespace) -> int:
    if _KEY_NAME_RE.fullmatch(args.name) is None:
        raise UsageError("--name must be letters, digits, '.', '_' or '-' (no path)")
    out = Path(args.out)
    private_path = out / f"{args.name}.key.pem"
    public_path = out / f"{args.name}.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise OperationError(f"{str(path)!a} already exists; not overwriting a key")
    passphrase = _passphrase(args.passphrase_env)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {args.out!a}: {exc.strerror}") from None
    key = Ed25519PrivateKey.generate()
    encryption = BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    atomic_write(private_path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption))
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    atomic_write(public_path, public_pem, mode=PUBLIC_FILE_MODE)
    print(f"kid: {kid_for(key.public_key())}")
    print(f"private key: {private_path} (0600; keep it offline)")
    print(f"public key: {public_path}")
    return 0


def _cmd_template(args: argparse.Namespace) -> int:
    if not is_site_code(args.site):
        raise UsageError("--site must be a site code (lowercase slug, e.g. hmp-brixton)")
    if args.version < 1 or not 1 <= args.valid_days <= 3650:
        raise UsageError("--version must be >= 1 and --valid-days 1..3650")
    now = _parse_now(args.now)
    doc = build_payload(
        version=args.version,
        site=args.site,
        issued_at=now,
        not_before=now,
        expires_at=now + timedelta(days=args.valid_days),
        settings=defaults(),
    )
    text = json.dumps(doc, indent=2, ensure_ascii=True) + "\n"
    if args.out:
        atomic_write(args.out, text.encode("ascii"), mode=PUBLIC_FILE_MODE)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    raw = _read(args.policy, MAX_ENVELOPE_BYTES, "policy")
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise UsageError(f"{args.policy!a} is larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        doc = loads_strict(raw)
    except StrictJSONError as exc:
        raise UsageError(f"{args.policy!a} is not a JSON policy: {exc}") from None
    payload = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    policy = parse_payload(payload)  # refuse to sign what a device would refuse
    pins = set(policy.get_list("network.spki_pins"))
    if PLACEHOLDER_GATEWAY_HOST in policy.allowed_hosts or pins & set(PLACEHOLDER_PINS):
        print("warning: network settings still hold template placeholders", file=sys.stderr)
    passphrase = _passphrase(args.passphrase_env)
    keys = [_load_private(path, passphrase) for path in args.key]
    try:
        envelope = sign(payload, keys)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    atomic_write(args.out, envelope, mode=PUBLIC_FILE_MODE)
    kids = ", ".join(kid_for(k.public_key()) for k in keys)
    print(f"signed: version {policy.version} for site {policy.site} by {len(keys)} key(s): {kids}")
    return 0


def _verify_args(args: argparse.Namespace) -> tuple[bytes, TrustConfig, datetime]:
    envelope = _read(args.envelope, MAX_ENVELOPE_BYTES, "envelope")
    return envelope, _trust(args.trust, args.threshold), _parse_now(args.now)


def _cmd_verify(args: argparse.Namespace) -> int:
    envelope, trust, now = _verify_args(args)
    policy = verify_policy(
        envelope,
        trust,
        now=now,
        installed_version=args.installed_version,
        site=args.site,
        device_id=args.device,
    )
    scope = "all devices" if policy.devices is None else f"{len(policy.devices)} device(s)"
    print(
        f"ok: version {policy.version} for site {policy.site} ({scope}), valid "
        f"{format_timestamp(policy.not_before)} to {format_timestamp(policy.expires_at)}, "
        f"signed by {len(policy.signer_kids)} trusted key(s), {trust.threshold} required"
    )
    return 0


def _window(policy: Policy, now: datetime) -> str:
    if now < policy.not_before:
        return f"NOT YET VALID until {format_timestamp(policy.not_before)}"
    if now >= policy.expires_at:
        return f"EXPIRED at {format_timestamp(policy.expires_at)}"
    return f"valid until {format_timestamp(policy.expires_at)}"


def _cmd_show(args: argparse.Namespace) -> int:
    envelope = _read(args.envelope, MAX_ENVELOPE_BYTES, "envelope")
    parsed = parse_envelope(envelope)
    status, code = "UNVERIFIED (no --trust given; signatures not checked)", 0
    if args.trust:
        trust, now = _trust(args.trust, args.threshold), _parse_now(args.now)
        try:
            verified = verify_signatures(envelope, trust.keys, trust.threshold)
            policy = parse_payload(verified.payload, envelope=envelope, signer_kids=verified.kids)
        except PolicyRefused as exc:
            status, code = f"UNVERIFIED (refused: {exc.reason.value}: {exc.detail})", 1
        else:
            status = f"VERIFIED by {len(policy.signer_kids)} trusted key(s); {_window(policy, now)}"
    print(status)
    kids = ", ".join(f"{e.kid[:64]!a} ({e.alg[:16]!a})" for e in parsed.signatures)
    print(f"signatures: {kids}")
    payload = parsed.unverified_payload()
    try:
        print(json.dumps(loads_strict(payload), indent=2, ensure_ascii=True))
    except StrictJSONError:
        print(f"payload is not JSON ({len(payload)} bytes)")
    return code


def _parser() -> _Parser:
    parser = _Parser(prog=PROG, description="Create, sign, verify and inspect device policies.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("keygen", help="create an Ed25519 signing key pair")
    p.add_argument("--out", required=True, help="directory for NAME.key.pem and NAME.pub.pem")
    p.add_argument("--name", default="policy-signing", help="file name stem")
    p.add_argument("--passphrase-env", help="encrypt the private key with this env variable")
    p.set_defaults(handler=_cmd_keygen)

    p = sub.add_parser("template", help="print a complete default policy")
    p.add_argument("--site", required=True, help="site code the policy is for")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--valid-days", type=int, default=DEFAULT_VALID_DAYS)
    p.add_argument("--now", help="issue time (ISO 8601 with offset), default: now")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(handler=_cmd_template)

    p = sub.add_parser("sign", help="sign a policy JSON into a JWS envelope")
    p.add_argument("policy")
    p.add_argument("--key", action="append", required=True, help="private key PEM (repeat)")
    p.add_argument("--out", required=True)
    p.add_argument("--passphrase-env", help="env variable holding the keys' passphrase")
    p.set_defaults(handler=_cmd_sign)

    for name, handler in (("verify", _cmd_verify), ("show", _cmd_show)):
        p = sub.add_parser(name, help=f"{name} a signed policy")
        p.add_argument("envelope")
        p.add_argument("--trust", action="append", default=[], help="public key PEM (repeat)")
        p.add_argument("--threshold", type=int, default=1, help="distinct signatures needed")
        p.add_argument("--now", help="ISO 8601 time with offset, default: now")
        if name == "verify":
            p.add_argument("--installed-version", type=int, help="installed high-water version")
            p.add_argument("--site", help="this device's site code")
            p.add_argument("--device", help="this device's id")
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "verify" and not args.trust:
            raise UsageError("verify needs at least one --trust public key")
        result: int = args.handler(args)
        return result
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except PolicyRefused as exc:
        print(f"refused: {exc.reason.value}: {exc.detail}", file=sys.stderr)
        return 1
    except OperationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.strerror or type(exc).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
