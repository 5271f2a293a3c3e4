"""First run: set this laptop up from the provisioning bundle IT produced.

Guarantees:
- Before anything is sent, the screen shows what the bundle says — the site, the gateway host
  and until when the one-time token is valid — read with the same strict parser enrolment uses
  (``ProvisioningBundle.parse``); a bad file is refused in plain words and nothing is stored.
- Enrolment (key generation, CSR, the gateway round trip, the vault and key slots) runs on the
  executor with a busy indicator; the window never freezes and the button cannot be pressed
  twice.
- Afterwards it shows the device id and site and offers to continue to sign-in; the bundle's
  token is spent, so the screen says the bundle file may be deleted. It also runs the signed
  policy's device rules (``client.core.conditional_launch``: disk encryption, OS version) on
  the executor and shows IT, there and then, any check a clinician's sign-in would fail, with
  what to do — not first at a clinician's sign-in.
- The bundle is read only from the file the user chose (or the path given on the command
  line); its contents are never logged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from client.core.conditional_launch import LaunchCheck, LaunchFailure, launch_failures
from client.core.device import Device
from client.core.humanize import format_moment
from client.core.provisioning import provision_from_bundle
from client.ui.admin import describe_launch_checks
from client.ui.error_boundary import explain
from client.ui.executor import Executor
from client.ui.main_window import WINDOW_SIZE, MainWindow
from client.ui.qt import (
    QCloseEvent,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QMainWindow,
    QProgressBar,
    Qt,
    QWidget,
    Signal,
)
from client.ui.runner import Runner
from client.ui.widgets import STYLESHEET, button, centred_card, data_label, set_role
from sync.device.enrolment import ProvisioningBundle

MAX_BUNDLE_FILE = 1_000_000  # bytes; a real bundle is a few KiB
Provision = Callable[[Path, bytes], Device]


@dataclass(frozen=True)
class BundlePreview:
    path: Path
    raw: bytes
    site: str
    gateway_host: str
    token_expires_at: dt.datetime


def read_bundle(path: Path) -> BundlePreview:
    """Read and parse the bundle file (runs on the executor)."""
    with open(path, "rb") as handle:
        raw = handle.read(MAX_BUNDLE_FILE + 1)
    bundle = ProvisioningBundle.parse(raw)  # refuses anything oversized or malformed
    return BundlePreview(path, raw, bundle.site, bundle.host, bundle.token_expires_at)


def default_provision(data_dir: Path, raw: bytes) -> Device:
    return provision_from_bundle(data_dir, raw)


class ProvisioningScreen(QWidget):
    """Choose the bundle, check what it says, enrol; emits ``continue_requested(Device)``."""

    provisioned = Signal(object)  # Device
    continue_requested = Signal(object)  # Device

    def __init__(
        self,
        data_dir: Path,
        runner: Runner,
        *,
        bundle_path: Path | None = None,
        provision: Provision = default_provision,
        launch_check: LaunchCheck = launch_failures,
    ) -> None:
        super().__init__()
        self.setObjectName("provisioning_screen")
        self.setAccessibleName("Set up this laptop")
        self._data_dir = data_dir
        self._runner = runner
        self._provision = provision
        self._launch_check = launch_check
        self.preview: BundlePreview | None = None
        self.device: Device | None = None

        self.title = data_label("Set up this laptop for Gatehouse", role="title")
        intro = data_label(
            "IT gives you a provisioning bundle for one prison site. Choose the file; check the "
            "site and gateway it names; then set up. This needs the health board's network once.",
            wrap=True,
        )
        self.choose = button("&Choose bundle file…", "Choose provisioning bundle file")
        self.file = data_label("No bundle chosen yet.", role="hint", wrap=True)
        self.file.setAccessibleName("Bundle file")
        self.site = data_label()
        self.site.setAccessibleName("Site named by the bundle")
        self.gateway = data_label()
        self.gateway.setAccessibleName("Gateway named by the bundle")
        self.expires = data_label()
        self.expires.setAccessibleName("Bundle valid until")
        facts = QFormLayout()
        facts.addRow(data_label("Site:"), self.site)
        facts.addRow(data_label("Gateway:"), self.gateway)
        facts.addRow(data_label("Valid until:"), self.expires)
        self.enrol = button("&Set up this laptop", "Set up this laptop")
        self.enrol.setEnabled(False)
        self.enrol.setDefault(True)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setTextVisible(False)
        self.busy.setMaximumHeight(8)
        self.busy.setAccessibleName("Setting up")
        self.busy.hide()
        self.feedback = data_label("", wrap=True)
        self.feedback.setAccessibleName("Set-up feedback")
        self.done = data_label("", role="ok", wrap=True)
        self.done.setAccessibleName("Set-up result")
        self.device_checks = data_label("", wrap=True)
        self.device_checks.setObjectName("device_checks")
        self.device_checks.setAccessibleName("Device checks for clinicians")
        self.proceed = button("C&ontinue to sign-in", "Continue to sign-in")
        self.proceed.hide()

        inner = centred_card(self, 640)
        inner.addWidget(self.title)
        inner.addWidget(intro)
        row = QHBoxLayout()
        row.addWidget(self.choose)
        row.addWidget(self.file, 1)
        inner.addLayout(row)
        inner.addLayout(facts)
        actions = QHBoxLayout()
        actions.addStretch(1)
        actions.addWidget(self.enrol)
        actions.addWidget(self.proceed)
        inner.addLayout(actions)
        inner.addWidget(self.busy)
        inner.addWidget(self.feedback)
        inner.addWidget(self.done)
        inner.addWidget(self.device_checks)
        inner.addWidget(data_label(f"Data folder: {data_dir}", role="hint", wrap=True))

        self.choose.clicked.connect(self.ask_for_bundle)
        self.enrol.clicked.connect(self.start)
        self.proceed.clicked.connect(self._continue)
        if bundle_path is not None:
            self.load_bundle(bundle_path)

    def ask_for_bundle(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose provisioning bundle", str(Path.home()), "Bundle (*.json);;All files (*)"
        )
        if path:
            self.load_bundle(Path(path))

    def load_bundle(self, path: Path) -> None:
        self.file.setText(str(path))
        self.feedback.setText("Reading the bundle…")
        set_role(self.feedback, "hint")
        self.enrol.setEnabled(False)
        self._runner.run(lambda: read_bundle(path), self._previewed, self._refused)

    def _previewed(self, preview: BundlePreview) -> None:
        self.preview = preview
        self.site.setText(preview.site)
        self.gateway.setText(preview.gateway_host)
        self.expires.setText(format_moment(preview.token_expires_at))
        self.feedback.setText(
            "Check that this is your site and the health board's gateway, then set up."
        )
        set_role(self.feedback, "hint")
        self.enrol.setEnabled(True)
        self.enrol.setFocus()

    def _refused(self, error: BaseException) -> None:
        self._set_busy(False)
        self.feedback.setText(explain(error).message)
        set_role(self.feedback, "error")
        self.enrol.setEnabled(self.preview is not None)

    def _set_busy(self, busy: bool) -> None:
        self.busy.setVisible(busy)
        self.choose.setEnabled(not busy)
        self.enrol.setEnabled(not busy and self.preview is not None)

    def start(self) -> None:
        preview = self.preview
        if preview is None or self.busy.isVisible():
            return
        self._set_busy(True)
        self.feedback.setText(
            f"Setting up for {preview.site}: creating this laptop's keys and enrolling with "
            f"{preview.gateway_host}…"
        )
        set_role(self.feedback, "hint")
        provision, data_dir, raw = self._provision, self._data_dir, preview.raw
        check = self._launch_check

        def work() -> tuple[Device, list[LaunchFailure]]:
            device = provision(data_dir, raw)
            return device, check(device.policy(), data_dir)

        self._runner.run(work, self._provisioned, self._refused)

    def _provisioned(self, result: tuple[Device, list[LaunchFailure]]) -> None:
        device, failures = result
        self.device = device
        self._set_busy(False)
        self.choose.setEnabled(False)
        self.enrol.hide()
        self.feedback.setText("")
        self.title.setText("This laptop is set up")
        self.done.setText(
            f"Device {device.profile.device_id} is enrolled for site {device.profile.site}. "
            "The bundle has been used and can be deleted. Each clinician's first sign-in on "
            "this laptop needs the network; after that, sign-in works offline."
        )
        self.device_checks.setText(describe_launch_checks(failures))
        set_role(self.device_checks, "error" if failures else "ok")
        self.proceed.show()
        self.proceed.setDefault(True)
        self.proceed.setFocus()
        self.provisioned.emit(device)

    def _continue(self) -> None:
        if self.device is not None:
            self.continue_requested.emit(self.device)


class ProvisioningWindow(QMainWindow):
    """The first-run window; on "Continue" it opens the main window and closes itself."""

    def __init__(
        self,
        data_dir: Path,
        *,
        bundle_path: Path | None = None,
        provision: Provision = default_provision,
        open_main: Callable[[Device], QMainWindow] | None = None,
        launch_check: LaunchCheck = launch_failures,
    ) -> None:
        super().__init__()
        self.setObjectName("provisioning_window")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.setWindowTitle("Gatehouse — set up this laptop")
        self.setStyleSheet(STYLESHEET)
        self.resize(*WINDOW_SIZE)
        self.executor = Executor("gatehouse-provision", self)
        self.screen_widget = ProvisioningScreen(
            data_dir,
            Runner(self.executor, self),
            bundle_path=bundle_path,
            provision=provision,
            launch_check=launch_check,
        )
        self.setCentralWidget(self.screen_widget)
        self._open_main = open_main
        self.main_window: QMainWindow | None = None
        self.screen_widget.continue_requested.connect(self.open_main)

    def open_main(self, device: Device) -> None:
        window = MainWindow(device) if self._open_main is None else self._open_main(device)
        self.main_window = window
        window.show()
        self.close()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.executor.shutdown(wait=True)
        super().closeEvent(event)
