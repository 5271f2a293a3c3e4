"""The admin panel: device facts, policy, certificate, keyring, storage, users, add, wipe.

Guarantees:
- Shows no clinical content: device id, site, device certificate expiry ("not enrolled" when the
  certificate is missing), policy version and expiry, keyring backend (with a plain warning when
  it is the weak file fallback), storage used by the data folder, the users who hold key slots,
  counts of unsent items and audit backlog, the conditional-launch device checks
  (``client.core.conditional_launch``: disk encryption, OS version) as a clinician's sign-in
  will run them, so IT sees a failing check, with what to do, before any clinician does, and
  the records server as last read from its metadata: what it offers and, one sentence each,
  what is missing and what the laptop does instead (issue 13; the codes stay in
  ``gatehouse device status --json``).
- Facts are gathered on the executor in one call (``client.core.device_admin.device_facts``;
  the users come through ``Session.device_users``, role-checked and audited); adding a user
  (Argon2) runs there too.
- Wiping is in a separate danger section and needs three things: the device id typed exactly,
  the admin's password, and a final yes/no. The wipe itself (re-authentication, audit, lock,
  erase) is ``Session.wipe_device`` on the executor; the password field is cleared as soon as
  it is read. On success ``wiped`` is emitted and the window shows the wiped screen.
"""

from __future__ import annotations

from client.core.conditional_launch import LaunchCheck, LaunchFailure, launch_failures
from client.core.device_admin import DeviceFacts, device_facts
from client.core.humanize import format_moment, format_span, human_size
from client.core.session import ADMIN, AUDITOR, Session
from client.ui.error_boundary import explain
from client.ui.qt import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QMessageBox,
    Qt,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner
from client.ui.widgets import button, data_label, field, set_role


def describe_certificate(facts: DeviceFacts) -> str:
    expires = facts.certificate_expires_at
    if facts.certificate_state == "missing" or expires is None:
        if facts.certificate_state == "unreadable":
            return "⚠ The device certificate cannot be read. Re-provision this laptop."
        return "Not enrolled (no device certificate on this laptop)"
    if facts.certificate_state == "expired":
        return f"⚠ EXPIRED {format_moment(expires)}. Sync will fail: re-enrol this laptop."
    return f"expires {format_moment(expires)} (in {format_span(expires - facts.now)})"


def describe_launch_checks(failures: list[LaunchFailure]) -> str:
    """The conditional-launch result for IT: all clear, or each failure and what to do."""
    if not failures:
        return (
            "✔ Passes the policy's device rules (disk encryption, OS version): clinicians can "
            "open records."
        )
    lines = ["✖ Clinicians cannot open records on this laptop until this is fixed:"]
    for failure in failures:
        lines.append(f"• {failure.what} What to do: {failure.todo}")
    return "\n".join(lines)


class AdminPanel(QWidget):
    notify = Signal(str)
    wiped = Signal()

    def __init__(
        self, session: Session, runner: Runner, *, launch_check: LaunchCheck = launch_failures
    ) -> None:
        super().__init__()
        self.setObjectName("admin_panel")
        self.setAccessibleName("Device administration")
        self._session = session
        self._runner = runner
        self._launch_check = launch_check
        self.wipe_question: QMessageBox | None = None
        device_box = QGroupBox("This laptop")
        form = QFormLayout(device_box)
        self.device_id = data_label()
        self.site = data_label()
        self.certificate = data_label(wrap=True)
        self.policy = data_label(wrap=True)
        self.keyring = data_label(wrap=True)
        self.storage = data_label()
        self.backlog = data_label(wrap=True)
        self.device_checks = data_label("Checking…", wrap=True)
        self.device_checks.setObjectName("device_checks")
        self.device_checks.setAccessibleName("Device checks for clinicians")
        form.addRow("Device id", self.device_id)
        form.addRow("Site", self.site)
        form.addRow("Certificate", self.certificate)
        form.addRow("Policy", self.policy)
        form.addRow("Keyring", self.keyring)
        form.addRow("Storage used", self.storage)
        form.addRow("Not yet sent", self.backlog)
        form.addRow("Device checks", self.device_checks)
        server_box = QGroupBox("Records server")
        server_box.setAccessibleName("Records server")
        server_form = QFormLayout(server_box)
        self.server = data_label(wrap=True)
        self.server_offers = data_label(wrap=True)
        self.server_missing = data_label(wrap=True)
        server_form.addRow("Server", self.server)
        server_form.addRow("Offers", self.server_offers)
        server_form.addRow("Missing", self.server_missing)
        users_box = QGroupBox("Users on this laptop")
        users_layout = QVBoxLayout(users_box)
        self.users = QListWidget()
        self.users.setAccessibleName("Users on this laptop")
        users_layout.addWidget(self.users)
        add_box = QGroupBox("Add an auditor or administrator")
        add = QFormLayout(add_box)
        self.new_user = field("New user name")
        self.new_role = QComboBox()
        self.new_role.setAccessibleName("Role of the new user")
        # Clinicians are never added here: their first sign-in on this laptop is online and
        # the gateway decides their role and site (an admin cannot grant clinical access).
        for role in (AUDITOR, ADMIN):
            self.new_role.addItem(role)
        self.new_password = field("Password for the new user", password=True)
        self.new_password_again = field("Password again", password=True)
        self.add_button = button("&Add user", "Add user")
        self.add_feedback = data_label("", role="error", wrap=True)
        add.addRow("&User name", self.new_user)
        add.addRow("&Role", self.new_role)
        add.addRow("&Password", self.new_password)
        add.addRow("Password a&gain", self.new_password_again)
        add.addRow("", self.add_button)
        add.addRow("", self.add_feedback)
        add.addRow(
            "",
            data_label(
                "Clinicians add themselves: their first sign-in on this laptop is online.",
                role="hint",
                wrap=True,
            ),
        )
        danger_box = self._danger_section()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addWidget(data_label("Device administration", role="title"))
        layout.addWidget(
            data_label("Device and policy state. No clinical content is shown here.", role="hint")
        )
        row = QHBoxLayout()
        left = QVBoxLayout()
        left.addWidget(device_box)
        left.addWidget(server_box)
        left.addWidget(add_box)
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(users_box, 1)
        right.addWidget(danger_box)
        row.addLayout(left, 3)
        row.addLayout(right, 2)
        layout.addLayout(row, 1)
        self.add_button.clicked.connect(self.add_user)
        self.wipe_button.clicked.connect(self.ask_wipe)
        self.refresh()

    def _danger_section(self) -> QGroupBox:
        box = QGroupBox("Danger: wipe this laptop")
        box.setObjectName("danger_section")
        box.setAccessibleName("Danger: wipe this laptop")
        form = QFormLayout(box)
        form.addRow(
            data_label(
                "⚠ Wiping destroys every Gatehouse record and key on this laptop at once. "
                "Work not yet sent is lost. This cannot be undone.",
                role="error",
                wrap=True,
            )
        )
        self.wipe_confirmation = field("Type this laptop's device id to confirm the wipe")
        self.wipe_password = field("Your password, to confirm the wipe", password=True)
        self.wipe_button = button("W&ipe this laptop…", "Wipe this laptop")
        self.wipe_feedback = data_label("", role="error", wrap=True)
        form.addRow("&Device id", self.wipe_confirmation)
        form.addRow("Your pa&ssword", self.wipe_password)
        form.addRow("", self.wipe_button)
        form.addRow("", self.wipe_feedback)
        return box

    def refresh(self) -> None:
        session, check = self._session, self._launch_check
        self._runner.run(lambda: device_facts(session), self._show)
        self._runner.run(
            lambda: check(session.policy, session.device.data_dir), self._show_device_checks
        )

    def _show_device_checks(self, failures: list[LaunchFailure]) -> None:
        """The policy's device rules, as a clinician's sign-in will check them (IT sees first)."""
        self.device_checks.setText(describe_launch_checks(failures))
        set_role(self.device_checks, "error" if failures else "ok")

    def _show(self, facts: DeviceFacts) -> None:
        status = facts.status
        self.device_id.setText(facts.device_id)
        self.site.setText(facts.site)
        self.certificate.setText(describe_certificate(facts))
        bad = facts.certificate_state in ("expired", "unreadable")
        set_role(self.certificate, "error" if bad else "")
        self.policy.setText(
            f"version {status.policy_version}, expires {format_moment(status.policy_expires_at)}"
            f" ({status.policy_mode})"
        )
        if facts.keyring_weak:
            self.keyring.setText(
                f"⚠ WEAK: {facts.keyring_backend}. Secrets are in a file protected only by this "
                "account's permissions. Install a Secret Service / OS keychain and re-provision."
            )
            set_role(self.keyring, "error")
        else:
            self.keyring.setText(facts.keyring_backend)
            set_role(self.keyring, "")
        self.storage.setText(human_size(facts.storage_bytes))
        self.server.setText(facts.server.server)
        self.server_offers.setText(facts.server.offers)
        self.server_missing.setText(
            "\n".join(f"⚠ {gap}" for gap in facts.server.missing) or "Nothing the laptop uses."
        )
        self.backlog.setText(
            f"{status.unsent_items} record item(s), {status.audit_unsent} audit entries; "
            f"{status.conflicts} conflict(s)"
        )
        self.users.clear()
        for user_id, role in facts.users:
            self.users.addItem(f"{user_id} — {role}")

    def add_user(self) -> None:
        user, role = self.new_user.text().strip(), self.new_role.currentText()
        password = self.new_password.text()
        if not user:
            self.add_feedback.setText("Enter a user name.")
            return
        if password != self.new_password_again.text():
            self.add_feedback.setText("The two passwords are not the same.")
            return
        self.add_button.setEnabled(False)
        self.add_feedback.setText("Adding…")
        session = self._session
        self._runner.run(
            lambda: session.add_user(user, role, password), self._added, self._add_failed
        )

    def _added(self, _result: object) -> None:
        self.add_button.setEnabled(True)
        self.add_feedback.setText("")
        for widget in (self.new_user, self.new_password, self.new_password_again):
            widget.clear()
        self.notify.emit("User added to this laptop.")
        self.refresh()

    def _add_failed(self, error: BaseException) -> None:
        self.add_button.setEnabled(True)
        self.new_password.clear()
        self.new_password_again.clear()
        self.add_feedback.setText(explain(error).message)

    # -- wipe ------------------------------------------------------------------------------

    def ask_wipe(self) -> None:
        """Check the form, then ask a final yes/no (window-modal, not blocking the loop)."""
        confirmation = self.wipe_confirmation.text().strip()
        if confirmation != self._session.device.profile.device_id:
            self.wipe_feedback.setText("Type this laptop's device id exactly to confirm the wipe.")
            return
        if not self.wipe_password.text():
            self.wipe_feedback.setText("Enter your password to confirm the wipe.")
            return
        self.wipe_feedback.setText("")
        box = QMessageBox(self)
        box.setObjectName("wipe_question")
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Wipe this laptop?")
        box.setTextFormat(Qt.TextFormat.PlainText)
        box.setText(
            f"Wipe {confirmation} now? Every Gatehouse record and key on it is destroyed and "
            "unsent work is lost. This cannot be undone."
        )
        box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        box.setAccessibleName("Confirm wiping this laptop")
        box.finished.connect(lambda _result: self._wipe_answered(box))
        self.wipe_question = box
        box.open()

    def _wipe_answered(self, box: QMessageBox) -> None:
        if self.wipe_question is box:
            self.wipe_question = None
        yes = box.clickedButton() is box.button(QMessageBox.StandardButton.Yes)
        box.deleteLater()
        if not yes:
            self.wipe_feedback.setText("Not wiped.")
            return
        password = self.wipe_password.text()
        self.wipe_password.clear()
        confirmation = self.wipe_confirmation.text()
        self.wipe_button.setEnabled(False)
        self.wipe_feedback.setText("Wiping…")
        session = self._session
        self._runner.run(
            lambda: session.wipe_device(password, confirmation),
            lambda _result: self.wiped.emit(),
            self._wipe_failed,
        )

    def _wipe_failed(self, error: BaseException) -> None:
        self.wipe_button.setEnabled(True)
        self.wipe_password.clear()
        self.wipe_feedback.setText(explain(error).message)
