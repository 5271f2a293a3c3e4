"""``make demo``: a local gateway with synthetic data, a provisioned laptop, the client.

Run by ``scripts/demo.sh`` inside its own D-Bus session with an unlocked gnome-keyring (the
device secrets go to a real Secret Service, never a file). Everything lands in ``--out``
(default ``demo-out/``):

    gateway/      the gateway's data folder (CA, keys, SQLite store)
    medplum/      the upstream's PKI, when Medplum runs (``scripts/demo_upstream.py``)
    keys/         the policy signing key pair (demo only)
    policy.json   the policy as edited; policy.jws the signed envelope
    bundle.json   the one-time provisioning bundle
    device/       the laptop's data folder (after provisioning)
    NN-name.png   a screenshot of every screen (headless run)
    audit-export.json   the laptop's audit chain as exported by the auditor (headless run)
    summary.json  what a script checks (headless run)

With a display and without ``HEADLESS=1`` it opens the client on the first-run provisioning
screen with the bundle preselected and waits for it to close. Otherwise it drives the same
journey headless (Qt offscreen, ``client/ui/journey.py``), printing each step. The gateway
always runs as a subprocess (``gatehouse-gateway serve``) and is stopped at the end, also on
failure. With Node and Medplum installed (``make medplum``) the patients come from an upstream
FHIR server (Medplum, in memory) linked per prison to a Group, and the demo's note is shown
"Filed in the health record" (``scripts/demo_upstream.py``); without them the gateway is seeded
directly and ``summary.json`` says why (``upstream.used``, ``upstream.why``).

``--client CMD`` (or ``DEMO_CLIENT``) runs the client half with that client instead of in this
process — e.g. the frozen ``dist/gatehouse/gatehouse`` (``packaging/demo_frozen.sh``): it gets
``--demo-journey``, the demo users as JSON on stdin, and ``--gateway-hook`` pointing back at
``demo.py gateway-op GATEWAY_DIR transfer-patient ID``, so the bundle needs no gateway code.
The gateway half always stays in this Python.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import demo_upstream  # noqa: E402 - scripts/demo_upstream.py, next to this file

BIN = Path(sys.executable).parent
SITE = "hmp-brixton"
OTHER_SITE = "hmp-pentonville"
NURSE = ("nurse.demo", "nurse demo password 1")
AUDITOR = ("ig.demo", "auditor demo password 1")
MARKER = ".gatehouse-demo"
PATIENTS = 200


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def run(args: Sequence[str], *, stdin: str | None = None) -> str:
    """A CLI step; its output is printed (none of these print secrets)."""
    done = subprocess.run(  # noqa: S603 - the venv's own gatehouse tools, fixed arguments
        [str(a) for a in args], input=stdin, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"demo: step failed: {Path(str(args[0])).name} {args[1]}")
    for line in done.stdout.splitlines():
        print(f"    {line}")
    return done.stdout


def fresh_out(out: Path) -> None:
    """Start from an empty folder; only a previous demo's folder is ever removed."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SystemExit(f"demo: {out} exists and is not a demo folder; not touching it")
        for child in out.iterdir():
            if child.name in {"home", "run"}:  # the running keyring session lives here
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by scripts/demo.py; safe to delete\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def set_up_gateway(
    out: Path, port: int, records_in: Callable[[Path], None] | None = None
) -> dict[str, Path]:
    gw, keys = out / "gateway", out / "keys"
    gateway, policy_cli = BIN / "gatehouse-gateway", BIN / "gatehouse-policy"
    step("initialising the gateway (device CA, server keys, escrow and receipt keys)")
    printed = run([gateway, "init", "--data", gw])
    pins = re.findall(r"(?:current|backup):\s+(\S+)", printed)
    if len(pins) != 2:
        raise SystemExit("demo: could not read the gateway's pins")
    step("creating the policy signing key and a signed policy for the site")
    run([policy_cli, "keygen", "--out", keys, "--name", "policy-signing"])
    run(
        [policy_cli, "template", "--site", SITE, "--valid-days", "90", "--out", out / "policy.json"]
    )
    policy = json.loads((out / "policy.json").read_text())
    policy["settings"].update(
        {
            "network.gateway_url": f"https://127.0.0.1:{port}/",
            "network.allowed_hosts": ["127.0.0.1"],
            "network.spki_pins": pins,
            # A demo machine (often a container) has no dm-crypt disk; a real site keeps this
            # on and such a laptop gets the conditional-launch screen instead of records.
            "device.require_disk_encryption": False,
            "ui.kiosk_fullscreen": False,
        }
    )
    (out / "policy.json").write_text(json.dumps(policy, indent=1))
    run(
        [
            policy_cli,
            "sign",
            "--key",
            keys / "policy-signing.key.pem",
            "--out",
            out / "policy.jws",
            out / "policy.json",
        ]
    )
    run([gateway, "policy", "trust", "add", "--data", gw, keys / "policy-signing.pub.pem"])
    run([gateway, "policy", "publish", "--data", gw, out / "policy.jws"])
    if records_in is not None:
        records_in(gw)
    else:
        seed_gateway(gw)
    step("adding a demo clinician and a demo auditor")
    for (user, password), role in ((NURSE, "clinician"), (AUDITOR, "auditor")):
        run(
            [gateway, "user", "add", "--data", gw, "--user", user, "--role", role, "--site", SITE],
            stdin=password + "\n",
        )
    step("writing a one-time provisioning bundle")
    bundle = out / "bundle.json"
    run(
        [
            gateway,
            "enroll-token",
            "--data",
            gw,
            "--site",
            SITE,
            "--out",
            bundle,
            "--url",
            f"https://127.0.0.1:{port}/",
        ]
    )
    return {"gateway": gw, "bundle": bundle}


def seed_gateway(gw: Path) -> None:
    step(f"seeding synthetic prison health data (2 sites, {PATIENTS} patients)")
    run(
        [
            BIN / "gatehouse-gateway", "seed", "--data", gw, "--sites", "2",
            "--patients", str(PATIENTS), "--seed", "1",
        ]
    )  # fmt: skip


def start_gateway(gw: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    step(f"starting the gateway on https://127.0.0.1:{port}/ (mutual TLS 1.3)")
    handle = open(log, "wb")  # noqa: SIM115 - closed with the process
    server = subprocess.Popen(  # noqa: S603 - the venv's own gateway, fixed arguments
        [str(BIN / "gatehouse-gateway"), "serve", "--data", str(gw), "--port", str(port)],
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"demo: the gateway stopped; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.1)
    stop_gateway(server)
    raise SystemExit("demo: the gateway did not start in time")


def stop_gateway(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
    step("gateway stopped")


def transfer_patient(gw: Path, patient_id: str, site: str) -> None:
    """IT moves a patient to another prison: upstream (the board moves them between Groups and
    the gateway's next poll makes it a transfer) or, without an upstream, on the gateway (a new
    version of the Patient)."""
    upstream = demo_upstream.configured(gw)
    if upstream is not None:
        demo_upstream.transfer_upstream(gw, upstream, patient_id, site)
        return
    from sync.gateway import datadir
    from sync.gateway.store.loader import load_resources
    from sync.gateway.store.sqlite import SqliteStore

    store = SqliteStore(gw / datadir.DATABASE)
    try:
        current = store.read("Patient", patient_id)
        if current is None:
            raise SystemExit("demo: the patient to transfer is not on the gateway")
        body = json.loads(current.body)
        body.pop("meta", None)
        body["managingOrganization"] = {"reference": f"Organization/{site}"}
        load_resources(store, [body])
    finally:
        store.close()


# -- the headless journey (client/ui/journey.py: in-process, or the frozen client) -------------


class InProcessGateway:
    """The gateway operator's steps, done directly on the gateway's store."""

    def __init__(self, gw: Path) -> None:
        self.gw = gw

    def transfer_patient(self, patient_id: str) -> None:
        transfer_patient(self.gw, patient_id, OTHER_SITE)

    def wait_filed(self) -> bool:
        return wait_filed(self.gw)


def wait_filed(gw: Path) -> bool:
    """Whether the gateway has an upstream and filed every pushed note into it in time."""
    if demo_upstream.configured(gw) is None:
        return False
    counts = demo_upstream.wait_filed(gw)
    step(f"gateway's upstream outbox: {json.dumps(counts, sort_keys=True)}")
    return bool(counts.get("filed")) and not counts.get("pending")


def demo_users() -> Any:
    from client.ui.journey_inputs import Credentials, JourneyUsers

    return JourneyUsers(clinician=Credentials(*NURSE), auditor=Credentials(*AUDITOR))


def journey_in_process(out: Path, bundle: Path, gw: Path) -> dict[str, Any]:
    from client.ui.journey import run_journey
    from client.ui.journey_inputs import JourneyError

    try:
        return run_journey(
            out / "device", bundle, out, gateway_ops=InProcessGateway(gw), users=demo_users()
        )
    except JourneyError as error:
        raise SystemExit(f"demo: {error.message}") from error


def client_environment() -> dict[str, str]:
    """The frozen client gets the demo's keyring session and display, not this Python's path.

    The frozen client drops every Qt variable (NW-5): headless is its ``--headless`` flag.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def journey_frozen(client: str, out: Path, bundle: Path, gw: Path) -> dict[str, Any]:
    """The client half through ``CLIENT --demo-journey``; the gateway half stays here."""
    hook = shlex.join([sys.executable, str(Path(__file__).resolve()), "gateway-op", str(gw)])
    step(f"running the journey with the client {client}")
    journey = out / "journey.json"
    journey.unlink(missing_ok=True)
    done = subprocess.run(  # noqa: S603 - the client under test, fixed arguments
        [
            *shlex.split(client),
            "--headless",
            "--demo-journey",
            "--data",
            str(out / "device"),
            "--bundle",
            str(bundle),
            "--out",
            str(out),
            "--gateway-hook",
            hook,
        ],
        input=demo_users().to_json(),
        text=True,
        env=client_environment(),
        check=False,
    )
    if done.returncode != 0 or not journey.exists():
        raise SystemExit(f"demo: the client's journey failed (exit {done.returncode})")
    summary: dict[str, Any] = json.loads(journey.read_text())
    summary["client"] = client
    return summary


def gateway_op(argv: Sequence[str]) -> int:
    """``demo.py gateway-op GATEWAY_DIR transfer-patient PATIENT_ID | wait-filed``: the frozen
    client's hook (``wait-filed`` exits 0 once filed, ``NO_UPSTREAM_EXIT`` without one)."""
    if len(argv) == 2 and argv[1] == "wait-filed":
        from client.ui.journey_inputs import NO_UPSTREAM_EXIT

        gw = Path(argv[0])
        if demo_upstream.configured(gw) is None:
            return NO_UPSTREAM_EXIT
        return 0 if wait_filed(gw) else 1
    if len(argv) != 3 or argv[1] != "transfer-patient":
        print(
            "usage: demo.py gateway-op GATEWAY_DIR (transfer-patient PATIENT_ID | wait-filed)",
            file=sys.stderr,
        )
        return 2
    transfer_patient(Path(argv[0]), argv[2], OTHER_SITE)
    print(f"patient transferred to {OTHER_SITE}")
    return 0


def interactive(out: Path, bundle: Path, client: str | None) -> None:
    step("opening the client on the first-run screen (close the window to stop the demo)")
    print(f"    clinician: {NURSE[0]} / password: {NURSE[1]}")
    print(f"    auditor:   {AUDITOR[0]} / password: {AUDITOR[1]}")
    command = shlex.split(client) if client else [sys.executable, "-m", "client.ui.app"]
    subprocess.run(  # noqa: S603 - the client: this interpreter's module or the frozen one
        [*command, "--data", str(out / "device"), "--bundle", str(bundle)],
        cwd=ROOT,
        env=client_environment() if client else None,
        check=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["gateway-op"]:
        return gateway_op(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo-out")
    parser.add_argument("--headless", action="store_true", help="no window (also HEADLESS=1)")
    parser.add_argument(
        "--client",
        default=os.environ.get("DEMO_CLIENT") or None,
        help="run the client half with this (frozen) client, e.g. dist/gatehouse/gatehouse"
        " (also DEMO_CLIENT); default: in-process",
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    client: str | None = args.client
    headless = (
        args.headless
        or os.environ.get("HEADLESS") == "1"
        or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    )
    started = time.monotonic()
    fresh_out(out)
    port = free_port()
    with contextlib.ExitStack() as stack:
        upstream: dict[str, Any] = {}

        def records_in(gw: Path) -> None:
            upstream.update(
                stack.enter_context(
                    demo_upstream.running_upstream(
                        out, gw, (SITE, OTHER_SITE), PATIENTS, run, step, BIN / "gatehouse-gateway"
                    )
                )
            )
            if not upstream["used"]:
                step(f"no upstream ({upstream['why']}): the gateway is seeded directly")
                seed_gateway(gw)

        paths = set_up_gateway(out, port, records_in)
        return _serve_and_run(out, port, paths, client, headless, started, upstream)


def _serve_and_run(
    out: Path,
    port: int,
    paths: dict[str, Path],
    client: str | None,
    headless: bool,
    started: float,
    upstream: dict[str, Any],
) -> int:
    server = start_gateway(paths["gateway"], port, out / "gateway.log")
    try:
        if headless:
            journey_started = time.monotonic()
            if client:
                summary = journey_frozen(client, out, paths["bundle"], paths["gateway"])
            else:
                summary = journey_in_process(out, paths["bundle"], paths["gateway"])
            summary["journey_seconds"] = round(time.monotonic() - journey_started, 1)
            summary["gateway_data"] = str(paths["gateway"])
            summary["upstream"] = upstream
            verify = subprocess.run(  # noqa: S603 - the venv's own verifier
                [str(BIN / "gatehouse-audit"), "verify", summary["audit_export"]],
                capture_output=True,
                text=True,
                check=False,
            )
            step(f"gatehouse-audit verify: {verify.stdout.strip() or verify.stderr.strip()}")
            summary["audit_verified"] = verify.returncode == 0
            summary["seconds"] = round(time.monotonic() - started, 1)
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            step(f"done in {summary['seconds']} s: {out / 'summary.json'}")
            if not summary["audit_verified"]:
                return 1
        else:
            interactive(out, paths["bundle"], client)
    finally:
        stop_gateway(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
