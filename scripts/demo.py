"""``make demo``: a local gateway with synthetic data, a provisioned laptop, the client.

Run by ``scripts/demo.sh`` inside its own D-Bus session with an unlocked gnome-keyring (the
device secrets go to a real Secret Service, never a file). Everything lands in ``--out``
(default ``demo-out/``):

    gateway/      the gateway's data folder (CA, keys, SQLite store)
    keys/         the policy signing key pair (demo only)
    policy.json   the policy as edited; policy.jws the signed envelope
    bundle.json   the one-time provisioning bundle
    device/       the laptop's data folder (after provisioning)
    NN-name.png   a screenshot of every screen (headless run)
    audit-export.json   the laptop's audit chain as exported by the auditor (headless run)
    summary.json  what a script checks (headless run)

With a display and without ``HEADLESS=1`` it opens the client on the first-run provisioning
screen with the bundle preselected and waits for it to close. Otherwise it drives the same
journey headless (Qt offscreen), printing each step. The gateway always runs as a subprocess
(``gatehouse-gateway serve``) and is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
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


def set_up_gateway(out: Path, port: int) -> dict[str, Path]:
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
    step(f"seeding synthetic prison health data (2 sites, {PATIENTS} patients)")
    run([gateway, "seed", "--data", gw, "--sites", "2", "--patients", str(PATIENTS), "--seed", "1"])
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
    """IT moves a patient to another prison on the gateway (a new version of the Patient)."""
    from sync.gateway import datadir
    from sync.gateway.loader import load_resources
    from sync.gateway.sqlite_store import SqliteStore

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


# -- the headless journey (Qt offscreen, the real screens, the real gateway) -------------------


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    from client.ui.qt import QApplication

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        QApplication.processEvents()
        time.sleep(0.01)
    QApplication.processEvents()


def settle(seconds: float = 0.2) -> None:
    from client.ui.qt import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def headless_journey(out: Path, bundle: Path, transfer: Callable[[str], None]) -> dict[str, Any]:
    """Provision, first sign-in, sync, search, chart, consultation, sync (push), transfer and
    break-glass, lock, auditor and audit view; a PNG of every screen."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from client.ui.audit_view import AuditWorkspace
    from client.ui.clinical import ClinicalWorkspace
    from client.ui.consultation_form import ConsultationForm
    from client.ui.main_window import WINDOW_SIZE, MainWindow
    from client.ui.provisioning import ProvisioningWindow
    from client.ui.qt import QApplication, Qt, QWidget
    from client.ui.sync_panel import SyncOutcome, describe_outcome, outcome_counts

    app = QApplication.instance() or QApplication([])
    screens: list[str] = []

    def shoot(widget: QWidget, name: str) -> None:
        settle(0.15)
        path = out / f"{len(screens) + 1:02d}-{name}.png"
        widget.grab().save(str(path))
        screens.append(path.name)
        print(f"    screenshot {path.name}")

    def main_window(device: Any) -> MainWindow:
        window = MainWindow(device)
        # offscreen has no OS focus to lose; the focus-loss lock is tested elsewhere
        window.app_state = lambda: Qt.ApplicationState.ApplicationActive
        window.resize(*WINDOW_SIZE)
        return window

    step("first run: the provisioning screen reads the bundle")
    first = ProvisioningWindow(out / "device", bundle_path=bundle, open_main=main_window)
    first.resize(*WINDOW_SIZE)
    first.show()
    screen = first.screen_widget
    wait_until(lambda: screen.enrol.isEnabled(), "the bundle preview")
    print(f"    bundle for site {screen.site.text()}, gateway {screen.gateway.text()}")
    shoot(first, "provisioning-bundle")
    step("enrolling this laptop (device key, CSR + one-time token, vault, escrow slot)")
    screen.enrol.click()
    wait_until(lambda: screen.proceed.isVisible(), "enrolment")
    device = screen.device
    assert device is not None
    print(f"    device {device.profile.device_id} for site {device.profile.site}")
    shoot(first, "provisioned")
    screen.proceed.click()
    win = first.main_window
    assert isinstance(win, MainWindow)
    outcomes: list[SyncOutcome] = []
    win.sync.finished.connect(outcomes.append)

    def sign_in_first(user: tuple[str, str], name: str) -> None:
        login = win.login_screen
        assert login is not None
        login.user.setText(user[0])
        login.password.setText(user[1])
        login.submit()
        wait_until(lambda: login.first.isVisible(), "the first sign-in offer")
        shoot(win, name)
        login.first.click()
        wait_until(lambda: win.session is not None, f"{user[0]}'s first sign-in")
        print(f"    {user[0]} signed in ({win.session.role if win.session else '?'})")

    def sync(name: str) -> SyncOutcome:
        count = len(outcomes)
        win.open_sync()
        panel = win.sync_panel
        assert panel is not None and win.sync_dialog is not None
        panel.sync_now.click()
        wait_until(lambda: len(outcomes) > count, "the sync")
        wait_until(lambda: panel.facts is not None and bool(panel.readiness.labels), "readiness")
        settle(0.3)
        outcome = outcomes[-1]
        print(f"    {describe_outcome(outcome)}")
        shoot(win.sync_dialog, name)
        win.sync_dialog.reject()
        settle(0.1)
        return outcome

    step("first sign-in of the clinician on this laptop (online: the gateway unseals the escrow)")
    sign_in_first(NURSE, "first-sign-in")
    step("first sync: the site's records come down")
    first_sync = sync("sync-first")
    workspace = win.workspace
    assert isinstance(workspace, ClinicalWorkspace)
    step("search as you type")
    workspace.caseload.query.setText("a")
    wait_until(lambda: workspace.caseload.model.rowCount() > 0, "search results")
    shoot(win, "search")
    model = workspace.caseload.model
    rows = [model.patient(r) for r in range(model.rowCount())]
    in_scope = [p for p in rows if p is not None and p.in_scope]
    patient = next((p for p in in_scope if p.has_alerts), in_scope[0])
    step("opening a chart (alerts and allergies first)")
    workspace.open_patient(patient.id)
    wait_until(lambda: workspace.chart is not None, "the chart")
    shoot(win, "chart")
    step("writing a consultation offline")
    workspace.new_consultation()
    form = workspace.patient_screen
    assert isinstance(form, ConsultationForm)
    for kind, value in (("systolic", "128"), ("diastolic", "82"), ("heart_rate", "72")):
        form.vital_fields[kind].setText(value)
    form.note.setPlainText("Reviewed on the wing. Inhaler technique good.")
    form.plan.setPlainText("Review in 4 weeks.")
    shoot(win, "consultation")
    form.submit()
    wait_until(
        lambda: workspace.chart is not None and any(e.unsent for e in workspace.chart.timeline),
        "the saved consultation",
    )
    shoot(win, "chart-not-yet-sent")
    step("sync: the consultation goes up")
    pushed_sync = sync("sync-pushed")
    step(f"IT transfers the patient to {OTHER_SITE} on the gateway; a follow-up note is unsent")
    transfer(patient.id)
    workspace.new_consultation()
    follow_up = workspace.patient_screen
    assert isinstance(follow_up, ConsultationForm)
    follow_up.note.setPlainText("Follow-up: handover note for the receiving prison.")
    follow_up.submit()
    wait_until(lambda: workspace.patient_screen is not follow_up, "the follow-up note")
    step("sync: the transfer comes down; the note is refused (patient no longer this site's)")
    transfer_sync = sync("sync-after-transfer")
    workspace = win.workspace
    assert isinstance(workspace, ClinicalWorkspace)
    workspace.back_to_search()
    step("break-glass: the transferred patient stays only for the unsent note")
    workspace.open_patient(patient.id)
    wait_until(lambda: workspace.break_glass_dialog is not None, "the break-glass dialog")
    dialog = workspace.break_glass_dialog
    assert dialog is not None
    dialog.reason.setCurrentIndex(1)
    dialog.text.setPlainText("Patient transferred today; handover note still to send.")
    dialog.password.setText(NURSE[1])
    shoot(dialog, "break-glass")
    dialog.submit()
    wait_until(lambda: workspace.grant is not None and workspace.chart is not None, "the grant")
    shoot(win, "chart-break-glass")
    step("lock: every patient screen is destroyed")
    win.lock()
    settle(0.3)
    shoot(win, "locked")
    step("the auditor's first sign-in and the audit view")
    sign_in_first(AUDITOR, "auditor-first-sign-in")
    audit = win.workspace
    assert isinstance(audit, AuditWorkspace)
    wait_until(lambda: audit.model.rowCount() > 0, "the audit entries")
    shoot(win, "audit")
    export = out / "audit-export.json"
    audit.export_to(export, "json")
    wait_until(export.exists, "the audit export")
    print(f"    audit export: {export}")
    win.lock()
    settle(0.2)
    win.close()
    settle(0.2)
    del app
    runs = [outcome_counts(o) for o in (first_sync, pushed_sync, transfer_sync)]
    totals = {
        key: sum(int(r.get(key) or 0) for r in runs)
        for key in ("pulled", "deleted", "pushed", "conflicts", "quarantined", "push_errors")
    }
    return {
        "device_data": str(out / "device"),
        "device_id": device.profile.device_id,
        "site": device.profile.site,
        "audit_export": str(export),
        "sync": {**totals, "runs": runs},
        "break_glass_patient": patient.id,
        "screens": screens,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
    }


def interactive(out: Path, bundle: Path) -> None:
    step("opening the client on the first-run screen (close the window to stop the demo)")
    print(f"    clinician: {NURSE[0]} / password: {NURSE[1]}")
    print(f"    auditor:   {AUDITOR[0]} / password: {AUDITOR[1]}")
    subprocess.run(  # noqa: S603 - this interpreter running the client module
        [
            sys.executable,
            "-m",
            "client.ui.app",
            "--data",
            str(out / "device"),
            "--bundle",
            str(bundle),
        ],
        cwd=ROOT,
        check=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo-out")
    parser.add_argument("--headless", action="store_true", help="no window (also HEADLESS=1)")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    headless = (
        args.headless
        or os.environ.get("HEADLESS") == "1"
        or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    )
    started = time.monotonic()
    fresh_out(out)
    port = free_port()
    paths = set_up_gateway(out, port)
    server = start_gateway(paths["gateway"], port, out / "gateway.log")
    try:
        if headless:
            summary = headless_journey(
                out,
                paths["bundle"],
                lambda pid: transfer_patient(paths["gateway"], pid, OTHER_SITE),
            )
            summary["gateway_data"] = str(paths["gateway"])
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
            interactive(out, paths["bundle"])
    finally:
        stop_gateway(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
