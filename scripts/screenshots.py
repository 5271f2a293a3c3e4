"""Write a PNG of every client screen, offscreen, at 1366x768: ``screenshots.py OUT_DIR``.

It provisions a throw-away device in a temporary folder (in-memory keyring, Argon2 at the
OWASP floor, synthetic records from ``sync.gateway.seed.generator``), then drives the real screens
the
way a clinician, an auditor and an admin would: sign in (once wrongly), search, open a chart,
write a consultation, break-glass into another site's patient, lock, then the conflict view
(a real 412 conflict made in the vault) and the conditional-launch refusal (a second device
whose policy requires disk encryption and OS 99.0, checked against this machine). Nothing here
talks to a gateway; ``make demo`` (scripts/demo.py) shoots the networked screens.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.core import accounts, conflicts, consultation, records
from client.core.device import Device, FirstUser
from client.core.device_keyring import InMemoryKeyring
from client.core.kdf import FLOOR
from client.core.schema import MIGRATIONS
from client.core.session import Session
from client.core.vault import Vault, database_path
from client.ui import offscreen
from client.ui.app import placeholder_window
from client.ui.clinical import ClinicalWorkspace
from client.ui.consultation_form import ConsultationForm
from client.ui.offscreen import headless_window, laptop_size, settle, sign_in, wait_until
from client.ui.qt import QApplication, QWidget
from policy.jws import sign
from policy.model import build_payload
from policy.schema import defaults
from sync.gateway.seed.generator import generate

SITE = "hmp-brixton"
CLINICIAN = ("nurse.amira", "correct horse battery staple")
AUDITOR = ("ig.officer", "audit trail reviewer 2026")
ADMIN = ("it.admin", "provisioning desk password")


def shoot(widget: QWidget, out: Path, name: str) -> Path:
    path = offscreen.shoot(widget, out / f"{name}.png")
    print(f"wrote {path}")
    return path


def provision_demo(
    data_dir: Path, extra_settings: dict[str, Any] | None = None, *, load: bool = True
) -> tuple[Device, str]:
    key = Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)
    settings: dict[str, Any] = dict(defaults())
    settings.update(
        {
            "network.gateway_url": "https://127.0.0.1:8443/",
            "network.allowed_hosts": ["127.0.0.1"],
            # the machine that takes screenshots has no dm-crypt disk; the conditional-launch
            # screen is shot separately below
            "device.require_disk_encryption": False,
            "network.spki_pins": [
                base64.b64encode(hashlib.sha256(label).digest()).decode()
                for label in (b"primary", b"backup")
            ],
        }
    )
    settings.update(extra_settings or {})
    payload = build_payload(
        version=1,
        site=SITE,
        issued_at=now - dt.timedelta(days=1),
        not_before=now - dt.timedelta(days=1),
        expires_at=now + dt.timedelta(days=90),
        settings=settings,
    )
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    keyring = InMemoryKeyring()
    device = Device.provision(
        data_dir,
        device_id="demo-laptop-01",
        site=SITE,
        trust_keys=[pem],
        trust_threshold=1,
        policy_envelope=sign(json.dumps(payload).encode(), [key]),
        first_user=FirstUser(CLINICIAN[0], "clinician", CLINICIAN[1]),
        keyring_backend=keyring,
        kdf_params=FLOOR,
    )
    if not load:
        return device, ""
    resources = [
        r for r in generate(sites=2, patients=40, seed=7) if r["resourceType"] != "Organization"
    ]
    _apply(device, resources)
    # A patient transferred to another prison while a note about them is still unsent stays on
    # the laptop, out of scope: opening them needs break-glass.
    moved = next(
        r
        for r in reversed(resources)
        if r["resourceType"] == "Patient"
        and r["managingOrganization"]["reference"] == f"Organization/{SITE}"
    )
    session = Session.login(device, *CLINICIAN)
    session.write_consultation(
        moved["id"], vitals=[], note_text="Seen before transfer.", plan_text="Handover."
    )
    session.lock()
    other = next(
        r["managingOrganization"]["reference"]
        for r in resources
        if r["resourceType"] == "Patient"
        and r["managingOrganization"]["reference"] != f"Organization/{SITE}"
    )
    _apply(
        device,
        [
            {
                **moved,
                "meta": {"versionId": "99", "lastUpdated": now.isoformat()},
                "managingOrganization": {"reference": other},
            }
        ],
    )
    make_conflict(device, resources, skip=str(moved["id"]))
    return device, str(moved["id"])


def make_conflict(device: Device, resources: list[dict[str, Any]], skip: str) -> None:
    """A note edited on the laptop while the gateway got a newer version (a 412 on push)."""
    ours = {
        f"Patient/{r['id']}"
        for r in resources
        if r["resourceType"] == "Patient"
        and r["managingOrganization"]["reference"] == f"Organization/{SITE}"
        and r["id"] != skip
    }
    doc = next(
        r
        for r in resources
        if r["resourceType"] == "DocumentReference" and r["subject"]["reference"] in ours
    )

    def with_text(text: str) -> dict[str, Any]:
        edited = json.loads(json.dumps(doc))
        edited["content"][0]["attachment"]["data"] = base64.b64encode(text.encode()).decode()
        return edited

    server = with_text("Gateway: reviewed by the duty doctor; plan changed to daily checks.")
    server["meta"] = {"versionId": "9", "lastUpdated": dt.datetime.now(dt.UTC).isoformat()}
    unlocked = accounts.login(device, *CLINICIAN)
    vault = Vault.open(database_path(device.data_dir), unlocked.dek, MIGRATIONS)
    try:
        with vault.transaction() as conn:
            mine = with_text("Laptop: seen on the wing; plan weekly review.")
            seq = consultation.queue_update(conn, mine, now=dt.datetime.now(dt.UTC))
            conflicts.record_conflict(conn, seq, server)
    finally:
        vault.close()


def _apply(device: Device, resources: list[dict[str, Any]]) -> None:
    """Put resources in the vault as a finished sync would: applied, then the in-scope caseload
    marked complete (UI-5), so the charts shown are those of a laptop that has synced."""
    unlocked = accounts.login(device, *CLINICIAN)
    vault = Vault.open(database_path(device.data_dir), unlocked.dek, MIGRATIONS)
    scope = unlocked.policy.site_scope or (device.profile.site,)
    try:
        with vault.transaction() as conn:
            records.apply_resources(conn, resources)
            records.mark_caseload_complete(conn, scope, device.clock())
    finally:
        vault.close()


def add_users(device: Device) -> None:
    unlocked = accounts.login(device, *CLINICIAN)
    vault = Vault.open(database_path(device.data_dir), unlocked.dek, MIGRATIONS)
    try:
        dek = vault.export_dek()
    finally:
        vault.close()
    device.header.add_slot(AUDITOR[0], "auditor", AUDITOR[1], dek, FLOOR)
    device.header.add_slot(ADMIN[0], "admin", ADMIN[1], dek, FLOOR)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: screenshots.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "device"
        device, transferred = provision_demo(data_dir)
        add_users(device)
        shots: list[Path] = []

        placeholder = placeholder_window(Path(tmp) / "empty")
        placeholder.resize(*laptop_size())
        placeholder.show()
        shots.append(shoot(placeholder, out, "00-not-provisioned"))
        placeholder.close()

        window = headless_window(device)
        window.show()
        login = window.login_screen
        assert login is not None
        wait_until(lambda: bool(login.offline.text()))
        shots.append(shoot(window, out, "01-login"))
        login.user.setText(CLINICIAN[0])
        login.password.setText("not the password at all")
        login.submit()
        wait_until(lambda: bool(login.feedback.text()))
        shots.append(shoot(window, out, "02-login-refused"))
        # wait out the throttle the wrong password caused
        settle(1.2)
        sign_in(window, *CLINICIAN)
        workspace = window.workspace
        assert isinstance(workspace, ClinicalWorkspace)
        shots.append(shoot(window, out, "03-caseload-empty"))
        workspace.caseload.query.setText("a")
        wait_until(lambda: workspace.caseload.model.rowCount() > 0)
        shots.append(shoot(window, out, "04-search-results"))
        model = workspace.caseload.model
        rows = [model.patient(r) for r in range(model.rowCount())]
        inside = next(p for p in rows if p is not None and p.in_scope and p.has_alerts)
        workspace.open_patient(inside.id)
        wait_until(lambda: workspace.chart is not None)
        shots.append(shoot(window, out, "05-chart"))
        workspace.new_consultation()
        form = workspace.patient_screen
        assert isinstance(form, ConsultationForm)
        form.vital_fields["systolic"].setText("128")
        form.vital_fields["diastolic"].setText("82")
        form.vital_fields["heart_rate"].setText("400")
        form.note.setPlainText("Reviewed asthma. Inhaler technique good.")
        form.plan.setPlainText("Review in 4 weeks.")
        form.submit()
        wait_until(lambda: bool(form.vital_errors["heart_rate"].text()))
        shots.append(shoot(window, out, "06-consultation-range-check"))
        form.vital_fields["heart_rate"].setText("72")
        form.submit()
        wait_until(
            lambda: (
                isinstance(workspace.patient_screen, QWidget)
                and workspace.patient_screen is not form
            )
        )
        wait_until(
            lambda: workspace.chart is not None and any(e.unsent for e in workspace.chart.timeline)
        )
        shots.append(shoot(window, out, "07-chart-not-yet-sent"))
        workspace.back_to_search()
        workspace.open_patient(transferred)
        wait_until(lambda: workspace.break_glass_dialog is not None)
        dialog = workspace.break_glass_dialog
        assert dialog is not None
        shots.append(shoot(dialog, out, "08-break-glass-dialog"))
        dialog.reason.setCurrentIndex(1)
        dialog.text.setPlainText("Collapsed on escort from court; no notes here.")
        dialog.password.setText(CLINICIAN[1])
        dialog.submit()
        wait_until(lambda: workspace.chart is not None and workspace.grant is not None)
        shots.append(shoot(window, out, "09-chart-break-glass"))
        window.lock()
        settle(0.3)
        shots.append(shoot(window, out, "10-locked"))
        sign_in(window, *AUDITOR)
        settle(0.8)
        shots.append(shoot(window, out, "11-audit"))
        window.lock()
        settle(0.2)
        sign_in(window, *ADMIN)
        settle(0.8)
        shots.append(shoot(window, out, "12-admin"))
        window.lock()
        settle(0.2)
        sign_in(window, *CLINICIAN)
        window.open_conflicts()
        dialog = window.conflicts_dialog
        assert dialog is not None
        settle(0.6)
        shots.append(shoot(dialog, out, "13-conflicts"))
        window.close()
        settle(0.2)

        # A site whose policy requires full-disk encryption and a recent OS, on this machine.
        strict, _ = provision_demo(
            Path(tmp) / "strict",
            {"device.require_disk_encryption": True, "device.min_os_version": "99.0"},
            load=False,
        )
        refused = headless_window(strict)
        refused.show()
        sign_in(refused, *CLINICIAN)
        settle(0.3)
        shots.append(shoot(refused, out, "14-conditional-launch"))
        refused.close()
        settle(0.2)
    print(f"{len(shots)} screenshots in {out}")
    del app
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
