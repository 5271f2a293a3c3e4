"""``gatehouse-gateway`` administration: sites, users, enrolment tokens, policies, devices,
audit reports and synthetic data.

Invariants:
- Every command works on the data folder (``--data``) and its store (``--database`` for
  PostgreSQL); nothing prints key material, passwords or tokens — except the provisioning
  bundle, which is written 0600 (``atomic_write``) and never printed.
- Passwords come from the terminal (asked twice) or from ONE line of standard input; never
  from the command line.
- ``device wipe`` / ``device lock`` / ``user revoke`` queue signed commands the device fetches;
  ``device revoke`` takes effect at once (the next request of that device is refused).
- Refusals are ``Refused`` (a ``GatewayError``), like every store or policy error: the CLI's
  ``main`` prints ``gatehouse-gateway: refused: <sentence> (<reason>)`` and exits 2.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import getpass
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from policy.atomic import atomic_write
from policy.jws import kid_for
from sync.gateway import datadir, enrolment, pki, policies, users
from sync.gateway.api.audit import entry_of
from sync.gateway.authority import load_authority
from sync.gateway.errors import GatewayError
from sync.gateway.store.audit_tables import iter_audit
from sync.gateway.store.base import AuditQuery, AuditRow, CommandRecord, Store
from sync.gateway.upstream import cli as upstream_cli
from sync.protocol.audit.audit_event import to_audit_event, to_csv_rows
from sync.protocol.audit.report import out_of_hours
from sync.protocol.pins import spki_sha256_b64

BUNDLE_FORMAT = "gatehouse-provisioning-bundle/1"  # sync.device.enrolment.BUNDLE_FORMAT
_TTL_RE = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")
_TTL_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class Refused(GatewayError):
    """An administration command refused before or instead of touching the store."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _store(args: argparse.Namespace) -> Store:
    from sync.gateway.store.opening import open_store

    data = Path(args.data)
    if not (data / datadir.CA_CERT).exists():
        raise Refused("not_initialised")
    return open_store(data, getattr(args, "database", None))


def parse_ttl(text: str) -> dt.timedelta:
    match = _TTL_RE.match(text)
    if match is None:
        raise Refused("bad_ttl")
    return dt.timedelta(**{_TTL_UNITS[match.group(2)]: int(match.group(1))})


def _known_site(store: Store, site: str) -> None:
    if site not in {s.site for s in store.sites()}:
        raise Refused("unknown_site")


# -- sites and users ---------------------------------------------------------------------------


def _site_add(args: argparse.Namespace, store: Store) -> int:
    if not pki.SITE_RE.fullmatch(args.site):
        raise Refused("bad_site")
    if not store.add_site(args.site, args.name or args.site, _now()):
        raise Refused("site_exists")
    print(f"site {args.site} added")
    return 0


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise Refused("passwords_differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _user_add(args: argparse.Namespace, store: Store) -> int:
    _known_site(store, args.site)
    password = _read_password()
    if len(password) < args.min_length:
        raise Refused("password_too_short")
    users.add_user(
        store, user_id=args.user, role=args.role, site=args.site, password=password, now=_now()
    )
    print(f"user {args.user} ({args.role}) added to {args.site}")
    return 0


def _queue(store: Store, device_id: str, kind: str, user_id: str | None = None) -> str:
    command = CommandRecord(
        command_id=str(uuid.uuid4()),
        device_id=device_id,
        kind=kind,  # type: ignore[arg-type]
        user_id=user_id,
        issued_at=_now(),
        status="pending",
    )
    store.add_command(command)
    return command.command_id


def _user_revoke(args: argparse.Namespace, store: Store) -> int:
    user = store.user(args.user)
    if user is None:
        raise Refused("unknown_user")
    store.set_user_status(args.user, "revoked")
    devices = [d for d in store.enrolled_devices(user.site) if d.status == "active"]
    for device in devices:
        _queue(store, device.device_id, "revoke_user", args.user)
    print(f"user {args.user} revoked; revoke_user queued for {len(devices)} device(s)")
    return 0


# -- enrolment bundle --------------------------------------------------------------------------


def _public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def provisioning_bundle(
    data: Path, *, url: str, token: str, site: str, expires_at: dt.datetime
) -> dict[str, Any]:
    authority = load_authority(data)
    server_cert = pki.load_cert((data / datadir.SERVER_CERT).read_bytes())
    backup = pki.load_key((data / datadir.SERVER_BACKUP_KEY).read_bytes())
    return {
        "format": BUNDLE_FORMAT,
        "gateway_url": url,
        "spki_pins": [spki_sha256_b64(server_cert), spki_sha256_b64(backup.public_key())],
        "ca_certificate": authority.ca_pem,
        "policy_trust_keys": [_public_pem(k) for k in policies.load_trust_keys(data)],
        "policy_trust_threshold": 1,
        "token": token,
        "site": site,
        "token_expires_at": expires_at.isoformat(),
        "escrow_public_key": authority.escrow_public_b64,
        "receipt_public_key": authority.receipt_public_pem,
    }


def _enroll_token(args: argparse.Namespace, store: Store) -> int:
    _known_site(store, args.site)
    ttl = parse_ttl(args.ttl)
    token, expires_at = enrolment.create_enrol_token(store, args.site, now=_now(), ttl=ttl)
    bundle = provisioning_bundle(
        Path(args.data), url=args.url, token=token, site=args.site, expires_at=expires_at
    )
    atomic_write(Path(args.out), orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
    print(f"one-time provisioning bundle for {args.site} written to {args.out}")
    print(f"valid until {expires_at.isoformat()}; carry it to the laptop, then delete it")
    return 0


# -- policies ----------------------------------------------------------------------------------


def _policy_publish(args: argparse.Namespace, store: Store) -> int:
    envelope = Path(args.envelope).read_bytes()
    policy = policies.publish(
        store, envelope, now=_now(), trust_keys=policies.load_trust_keys(Path(args.data))
    )
    scope = "all devices" if policy.devices is None else f"{len(policy.devices)} device(s)"
    print(f"policy version {policy.version} published for {policy.site} ({scope})")
    return 0


def _policy_trust_add(args: argparse.Namespace, store: Store) -> int:
    try:
        key = serialization.load_pem_public_key(Path(args.key).read_bytes())
    except ValueError:
        raise Refused("not_a_public_key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise Refused("not_ed25519")
    kid = kid_for(key)
    folder = Path(args.data) / policies.TRUST_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    atomic_write(folder / f"{kid}.pem", _public_pem(key).encode("ascii"))
    print(f"policy trust key {kid} added")
    return 0


# -- devices -----------------------------------------------------------------------------------


def _when(moment: dt.datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M")


def _device_list(args: argparse.Namespace, store: Store) -> int:
    rows = store.enrolled_devices(args.site)
    header = (
        "DEVICE",
        "SITE",
        "STATUS",
        "LAST SEEN",
        "CERT EXPIRES",
        "AUDIT SEQ",
        "AUDIT HEAD",
        "WIPE REPORTED",
    )
    print("  ".join(header))
    for d in rows:
        head = (d.audit_head or "-")[:16]
        wipe = "-" if d.wipe_cause is None else f"{d.wipe_cause} at {_when(d.wiped_at)}"
        line = (
            d.device_id,
            d.site,
            d.status,
            _when(d.last_seen),
            _when(d.cert_not_after),
            str(d.audit_seq),
            head,
            wipe,
        )
        print("  ".join(line))
    return 0


def _device_command(args: argparse.Namespace, store: Store) -> int:
    record = store.device(args.device)
    if record is None:
        raise Refused("unknown_device")
    if args.action == "revoke":
        store.set_device(args.device, record.site, "revoked")
        print(f"device {args.device} revoked")
        return 0
    command_id = _queue(store, args.device, args.action)
    print(f"{args.action} queued for {args.device} (command {command_id})")
    return 0


# -- audit report ------------------------------------------------------------------------------


def _instant(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise Refused("bad_date") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def report_rows(store: Store, args: argparse.Namespace) -> Iterator[AuditRow]:
    query = AuditQuery(
        count=500,
        patient_id=args.patient,
        user_id=args.user,
        device_id=args.device,
        since=_instant(args.since),
        until=_instant(args.until),
        break_glass=args.break_glass,
    )
    for row in iter_audit(store, query):
        if args.out_of_hours and not out_of_hours(row.ts):
            continue
        yield row


def _audit_report(args: argparse.Namespace, store: Store) -> int:
    rows = list(report_rows(store, args))
    entries = [entry_of(r) for r in rows]
    if args.format == "csv":
        out = sys.stdout
        writer = csv.writer(out, lineterminator="\n")
        for line in to_csv_rows(entries):
            writer.writerow(line)
    else:
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
            "entry": [{"resource": to_audit_event(e)} for e in entries],
        }
        sys.stdout.write(orjson.dumps(bundle, option=orjson.OPT_INDENT_2).decode() + "\n")
    print(f"{len(entries)} audit event(s)", file=sys.stderr)
    return 0


# -- seed --------------------------------------------------------------------------------------


def _seed(args: argparse.Namespace, store: Store) -> int:
    from sync.gateway.seed.generator import generate
    from sync.gateway.store.loader import load_resources

    now = _now()

    def registering() -> Iterator[dict[str, Any]]:
        for resource in generate(sites=args.sites, patients=args.patients, seed=args.seed):
            if resource.get("resourceType") == "Organization":
                store.add_site(str(resource["id"]), str(resource.get("name", "")), now)
            yield resource

    try:
        written = load_resources(store, registering())
    except ValueError:
        raise Refused("bad_seed_arguments") from None
    print(f"seeded {written} resources across {args.sites} site(s)")
    return 0


# -- wiring ------------------------------------------------------------------------------------


def _runner(handler: Any) -> Any:
    """The command on an open store, closed afterwards (``cli.main`` reports a refusal)."""

    def run(args: argparse.Namespace) -> int:
        store = _store(args)
        try:
            code: int = handler(args, store)
            return code
        finally:
            store.close()

    return run


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True)
    parser.add_argument("--database", default=None, help="postgresql://… URL")


def register(commands: Any) -> None:
    """Add the administration commands to ``gatehouse-gateway``'s subparsers."""
    site = commands.add_parser("site", help="prisons served").add_subparsers(
        dest="site_command", required=True
    )
    add = site.add_parser("add")
    _common(add)
    add.add_argument("--site", required=True)
    add.add_argument("--name", default=None)
    add.set_defaults(run=_runner(_site_add))
    link = site.add_parser("link", help="the site's patients: an upstream Group or Organization")
    _common(link)
    link.add_argument("site")
    source = link.add_mutually_exclusive_group(required=True)
    source.add_argument("--group", default=None)
    source.add_argument("--organization", default=None)
    link.set_defaults(run=_runner(upstream_cli.site_link))

    user = commands.add_parser("user", help="clinicians, auditors, admins").add_subparsers(
        dest="user_command", required=True
    )
    add = user.add_parser("add", help="password from the terminal or one line of stdin")
    _common(add)
    add.add_argument("--user", required=True)
    add.add_argument("--role", required=True, choices=["clinician", "auditor", "admin"])
    add.add_argument("--site", required=True)
    add.add_argument("--min-length", type=int, default=12)
    add.set_defaults(run=_runner(_user_add))
    revoke = user.add_parser("revoke", help="withdraw access and tell the site's devices")
    _common(revoke)
    revoke.add_argument("--user", required=True)
    revoke.set_defaults(run=_runner(_user_revoke))

    token = commands.add_parser("enroll-token", help="write a one-time provisioning bundle")
    _common(token)
    token.add_argument("--site", required=True)
    token.add_argument("--ttl", default="1h", help="e.g. 30m, 1h, 2d")
    token.add_argument("--out", required=True)
    token.add_argument("--url", default="https://localhost:8443")
    token.set_defaults(run=_runner(_enroll_token))

    policy = commands.add_parser("policy", help="signed device policies").add_subparsers(
        dest="policy_command", required=True
    )
    publish = policy.add_parser("publish")
    _common(publish)
    publish.add_argument("envelope", metavar="POLICY.jws")
    publish.set_defaults(run=_runner(_policy_publish))
    trust = policy.add_parser("trust").add_subparsers(dest="trust_command", required=True)
    trust_add = trust.add_parser("add")
    _common(trust_add)
    trust_add.add_argument("key", metavar="KEY.pem")
    trust_add.set_defaults(run=_runner(_policy_trust_add))

    device = commands.add_parser("device", help="enrolled laptops").add_subparsers(
        dest="device_command", required=True
    )
    listing = device.add_parser("list")
    _common(listing)
    listing.add_argument("--site", default=None)
    listing.set_defaults(run=_runner(_device_list))
    for action in ("wipe", "lock", "revoke"):
        sub = device.add_parser(action)
        _common(sub)
        sub.add_argument("device")
        sub.set_defaults(run=_runner(_device_command), action=action)

    audit = commands.add_parser("audit", help="audit reports").add_subparsers(
        dest="audit_command", required=True
    )
    report = audit.add_parser("report")
    _common(report)
    report.add_argument("--patient", default=None)
    report.add_argument("--user", default=None)
    report.add_argument("--device", default=None)
    report.add_argument("--since", default=None)
    report.add_argument("--until", default=None)
    report.add_argument("--break-glass", action="store_true")
    report.add_argument("--out-of-hours", action="store_true")
    report.add_argument("--format", choices=["csv", "fhir"], default="csv")
    report.set_defaults(run=_runner(_audit_report))

    seed = commands.add_parser("seed", help="load deterministic synthetic data")
    _common(seed)
    seed.add_argument("--sites", type=int, default=2)
    seed.add_argument("--patients", type=int, default=100)
    seed.add_argument("--seed", type=int, default=1)
    seed.set_defaults(run=_runner(_seed))
