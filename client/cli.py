"""``gatehouse``: the laptop app and its device commands for IT scripting and tests.

    gatehouse [--data DIR] [--bundle FILE]   open the desktop client
    gatehouse --self-test             check this installation (exit 0 / one line per failure)
    gatehouse --headless ...          no window system (Qt offscreen); a flag, because the frozen
                                      app ignores QT_QPA_PLATFORM and every Qt variable (NW-5)
    gatehouse device init --data DIR --device-id ID --site S --policy P.jws --trust K.pem
                          --user U --role R [--escrow-key B64] [--threshold K]
    gatehouse device provision BUNDLE --data DIR
    gatehouse device add-user --data DIR --user U
    gatehouse device sync --data DIR --user U [--json]
    gatehouse device status --data DIR [--json]
    gatehouse device export-audit --data DIR OUT --user U
    gatehouse --demo-journey --data DIR --bundle FILE --out DIR [--gateway-hook CMD]
                          (hidden: the headless demo journey, users as JSON on stdin)

Passwords are read from the terminal (or one line of standard input when it is not a
terminal), never from arguments. Errors are one line on stderr with a non-zero exit; never a
traceback for a user's mistake.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlcipher3

from client.core import disk_space
from client.core.accounts import offline_state_of
from client.core.device import Device, FirstUser, report_wipe_if_any
from client.core.errors import GatehouseError
from client.core.kdf import calibrate
from client.core.provisioning import add_user_online, provision_from_bundle
from client.core.push_refusals import Refusal, reason_of
from client.core.server_profile import load_server_profile
from client.core.session import Session
from client.core.sync_failures import NOTHING_LOST, sync_failure_sentence
from client.core.sync_runner import run_sync
from client.core.trusted_time import observe
from policy import decisions
from policy.atomic import atomic_write
from policy.errors import PolicyRefused
from sync.device.errors import DeviceError
from sync.device.outcome import SyncError, SyncResult
from sync.device.transport import TransportError
from sync.protocol.errors import ProtocolError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def read_password(prompt: str) -> str:
    """From the terminal without echo, or one line of stdin when piped (scripts, tests)."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def _environment_text(error: OSError | sqlcipher3.Error, args: argparse.Namespace) -> str:
    """An OS or database failure as one line: a full disk with its figures (CR-3), else the
    OS's own words (never a traceback, never SQL)."""
    folder = Path(getattr(args, "data", None) or ".")
    full = disk_space.as_disk_full(error, folder if folder.is_dir() else Path("."), 0)
    if full is not None:
        return full.message
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return "the records database could not be used. Nothing was changed. Call IT."


def _device(data: Path) -> Device:
    return Device.open(data)


def cmd_init(args: argparse.Namespace) -> int:
    trust = [Path(p).read_text(encoding="ascii") for p in args.trust]
    password = read_password(f"Password for {args.user}: ")
    escrow = base64.b64decode(args.escrow_key, validate=True) if args.escrow_key else None
    device = Device.provision(
        Path(args.data),
        device_id=args.device_id,
        site=args.site,
        trust_keys=trust,
        trust_threshold=args.threshold,
        policy_envelope=Path(args.policy).read_bytes(),
        first_user=FirstUser(args.user, args.role, password),
        escrow_public_key=escrow,
        kdf_params=calibrate(),
    )
    print(
        f"provisioned device {device.profile.device_id} for site {device.profile.site}; "
        f"keyring: {device.keyring.backend_name}"
    )
    return EXIT_OK


def device_status(device: Device) -> dict[str, Any]:
    """What IT can see without signing in: no patient data, no secrets."""
    counters = device.header.counters
    status: dict[str, Any] = {
        "device_id": device.profile.device_id,
        "site": device.profile.site,
        "keyring": device.keyring.backend_name,
        "keyring_weak": device.keyring.is_weak,
        "users": [{"user_id": u, "role": r} for u, r in device.header.users()],
        "failed_attempts": counters.device_failed_attempts,
        "locked_until": (
            counters.device_locked_until.isoformat() if counters.device_locked_until else None
        ),
        "pending_audit_events": len(counters.pending_audit_events),
        "enrolled": bool(device.profile.enrolment),
        # What the FHIR server offers, as read at the last sync (issue 13); None: not yet read.
        "server": load_server_profile(device.data_dir),
    }
    try:
        policy = device.policy()
    except (GatehouseError, PolicyRefused) as error:
        status["policy"] = {"error": getattr(error, "reason", "refused")}
    else:
        status["policy"] = {
            "version": policy.version,
            "expires_at": policy.expires_at.isoformat(),
            "mode": str(decisions.policy_mode(policy, device.clock())),
        }
        # As it stands now (the clocks read, nothing persisted), not as of the last sign-in.
        state = observe(
            device.time_state(),
            device.clocks(),
            max_skew=dt.timedelta(seconds=policy.get_int("time.max_clock_skew_seconds")),
        ).state
        offline = offline_state_of(policy, state)
        status["offline"] = {
            "state": str(offline.kind),
            "elapsed_hours": round(state.offline_elapsed_seconds / 3600, 2),
            "hours_left": round(offline.until_block.total_seconds() / 3600, 2),
            "restarts_since_sync": state.offline_boots,
            "restarts_left": offline.restarts_left,
            "requires_online": state.requires_online,
        }
    return status


def cmd_status(args: argparse.Namespace) -> int:
    status = device_status(_device(Path(args.data)))
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        policy = status.get("policy", {})
        print(
            f"device {status['device_id']} site {status['site']} · policy v{policy.get('version')}"
            f" ({policy.get('mode', policy.get('error'))}) · keyring {status['keyring']}"
        )
    return EXIT_OK


def cmd_export_audit(args: argparse.Namespace) -> int:
    device = _device(Path(args.data))
    session = Session.login(device, args.user, read_password(f"Password for {args.user}: "))
    try:
        bundle = session.export_audit()
    finally:
        session.lock()
    atomic_write(Path(args.out), json.dumps(bundle, separators=(",", ":")).encode())
    print(f"exported {len(bundle.get('entry', []))} audit entries to {args.out}")
    return EXIT_OK


def cmd_provision(args: argparse.Namespace) -> int:
    device = provision_from_bundle(Path(args.data), Path(args.bundle).read_bytes())
    print(
        f"provisioned device {device.profile.device_id} for site {device.profile.site}; "
        f"keyring: {device.keyring.backend_name}"
    )
    return EXIT_OK


def cmd_add_user(args: argparse.Namespace) -> int:
    device = _device(Path(args.data))
    role = add_user_online(device, args.user, read_password(f"Password for {args.user}: "))
    print(f"{args.user} ({role}) can now sign in on this laptop, also offline")
    return EXIT_OK


def refusal_lines(refused: Sequence[Refusal]) -> list[str]:
    """Refused notes for the terminal: how many, the gateway's reason and what to do. No
    patient is named here (a terminal's scrollback is not the clinician's screen); the
    clinician sees the names in the app."""
    return [
        f"{r.notes} note(s) refused by the gateway ({reason_of(r.code)}). {r.todo}" for r in refused
    ]


def sync_report(result: SyncResult, refused: Sequence[Refusal] = ()) -> dict[str, Any]:
    """``device sync --json``: the counts, the reason code and the sentence shown to people."""
    return {
        "refused": [
            {"code": r.code, "notes": r.notes, "retry_helps": r.retry_helps, "todo": r.todo}
            for r in refused
        ],
        "ok": result.ok,
        "reason": result.error,
        "message": None if result.ok else sync_failure_sentence(result.error),
        "failed_phases": dict(result.failed_phases),
        "failed_types": dict(result.failed_types),
        "caseload_confirmed": result.caseload_confirmed,
        "out_of_scope": result.out_of_scope,
        "backfilled": result.backfilled,
        "reconciled": {kind: dict(counts) for kind, counts in result.reconciled.items()},
        "pulled": result.pulled,
        "deleted": result.deleted,
        "pushed": result.pushed,
        "conflicts": result.conflicts,
        "quarantined": result.quarantined,
        "push_errors": result.push_errors,
        "requests": result.requests,
        "bytes_received": result.bytes_received,
        "duration_s": round(result.duration_s, 3),
    }


def describe_sync(result: SyncResult, refused: Sequence[Refusal] = ()) -> str:
    """One line for people (UI-4): counts when it worked, else what happened and what to do;
    then one line per refused note group (``refusal_lines``)."""
    return "\n".join([_describe_counts(result), *refusal_lines(refused)])


def _describe_counts(result: SyncResult) -> str:
    counts = (
        f"pulled {result.pulled}, deleted {result.deleted}, pushed {result.pushed}, conflicts "
        f"{result.conflicts}, quarantined {result.quarantined}, push errors {result.push_errors}"
    )
    if result.ok:
        return (
            f"sync ok: {counts}, {result.requests} requests, {result.bytes_received} bytes in "
            f"{result.duration_s:.2f} s"
        )
    return (
        f"Sync stopped. {sync_failure_sentence(result.error)} Before it stopped: {counts}. "
        f"{NOTHING_LOST}"
    )


def cmd_sync(args: argparse.Namespace) -> int:
    device = _device(Path(args.data))
    password = read_password(f"Password for {args.user}: ")
    session = Session.login(device, args.user, password, for_sync=True)
    refused: tuple[Refusal, ...] = ()
    try:
        result = run_sync(session)
        if not device.wiped:
            refused = session.status().refused
    except (TransportError, SyncError) as error:  # before the engine ran (e.g. no pins)
        result = SyncResult(error=error.reason)
    finally:
        session.lock()
    if args.json:
        print(json.dumps(sync_report(result, refused), indent=2, sort_keys=True))
    else:
        print(describe_sync(result, refused), file=sys.stdout if result.ok else sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatehouse", description=__doc__.split("\n")[0])
    parser.add_argument("--self-test", action="store_true", help="check this installation")
    parser.add_argument(
        "--headless",
        action="store_true",
        help="no window system: Qt's offscreen platform (the environment is not consulted)",
    )
    parser.add_argument("--data", help="the device's data folder (opens the desktop client)")
    parser.add_argument("--bundle", help="a provisioning bundle for the first run")
    # hidden: the headless demo journey (client/ui/journey.py), so the frozen client runs it
    parser.add_argument("--demo-journey", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--gateway-hook", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command")
    device = sub.add_parser("device", help="device commands for IT")
    dsub = device.add_subparsers(dest="device_command", required=True)

    init = dsub.add_parser("init", help="provision this laptop offline")
    init.add_argument("--data", required=True)
    init.add_argument("--device-id", required=True)
    init.add_argument("--site", required=True)
    init.add_argument("--policy", required=True, help="signed policy (JWS JSON)")
    init.add_argument("--trust", action="append", required=True, help="policy signing key PEM")
    init.add_argument("--threshold", type=int, default=1)
    init.add_argument("--user", required=True)
    init.add_argument("--role", choices=("clinician", "auditor", "admin"), required=True)
    init.add_argument("--escrow-key", help="gateway escrow X25519 public key (base64)")
    init.set_defaults(func=cmd_init)

    status = dsub.add_parser("status", help="device state (no sign-in, no patient data)")
    status.add_argument("--data", required=True)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    provision = dsub.add_parser("provision", help="enrol this laptop with IT's bundle")
    provision.add_argument("bundle")
    provision.add_argument("--data", required=True)
    provision.set_defaults(func=cmd_provision)

    add_user = dsub.add_parser("add-user", help="a clinician's first, online sign-in")
    add_user.add_argument("--data", required=True)
    add_user.add_argument("--user", required=True)
    add_user.set_defaults(func=cmd_add_user)

    sync = dsub.add_parser("sync", help="sync with the gateway now")
    sync.add_argument("--data", required=True)
    sync.add_argument("--user", required=True)
    sync.add_argument("--json", action="store_true", help="the result with its reason code")
    sync.set_defaults(func=cmd_sync)

    export = dsub.add_parser("export-audit", help="export the audit chain (auditor/admin)")
    export.add_argument("--data", required=True)
    export.add_argument("out")
    export.add_argument("--user", required=True)
    export.set_defaults(func=cmd_export_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and EXIT_USAGE
    if args.headless:  # the frozen app drops QT_QPA_PLATFORM from the environment (NW-5)
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    if args.self_test:
        from client.selftest import main as self_test

        return self_test()
    if args.demo_journey:
        if not (args.data and args.bundle and args.out):
            print("error: --demo-journey needs --data, --bundle and --out", file=sys.stderr)
            return EXIT_USAGE
        from client.ui.journey import cli_main as demo_journey

        return demo_journey(args.data, args.bundle, args.out, args.gateway_hook)
    if args.command is None:
        from client.ui.app import main as run_app

        app_argv = [*(["--data", args.data] if args.data else [])]
        app_argv += ["--bundle", args.bundle] if args.bundle else []
        return run_app(app_argv)
    try:
        data = getattr(args, "data", None)  # a wiped laptop tells its gateway first (WP-3)
        if data and report_wipe_if_any(Path(data)) == "sent":
            print("This laptop's wipe was reported to the gateway.", file=sys.stderr)
        return int(args.func(args))
    except GatehouseError as error:
        print(f"error: {error.message}", file=sys.stderr)
    except (TransportError, SyncError) as error:  # one sentence, never the code (UI-4)
        print(f"error: {sync_failure_sentence(error.reason)}", file=sys.stderr)
    except DeviceError as error:
        print(f"error: {error.message or error.reason}", file=sys.stderr)
    except ProtocolError:
        print(
            "error: The gateway sent something Gatehouse cannot accept, so it was not used. "
            "Try again later; if it keeps happening, call IT.",
            file=sys.stderr,
        )
    except PolicyRefused as refused:
        print(f"refused: {refused.reason}: {refused.detail}", file=sys.stderr)
    except (OSError, sqlcipher3.Error) as error:
        print(f"error: {_environment_text(error, args)}", file=sys.stderr)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
