"""The admin panel: device facts, policy, keyring backend, users on the device, add a user.

Guarantees:
- Shows no clinical content: device id, site, policy version and expiry, keyring backend (with
  a plain warning when it is the weak file fallback), the users who hold key slots, counts of
  unsent items and audit backlog.
- Facts are gathered on the executor in one call; adding a user (Argon2) runs there too.
"""

from __future__ import annotations

from dataclasses import dataclass

from client.core.session import ADMIN, AUDITOR, Session, SessionStatus
from client.ui.error_boundary import explain
from client.ui.qt import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner
from client.ui.widgets import button, data_label, field, format_moment, set_role


@dataclass(frozen=True)
class DeviceFacts:
    device_id: str
    site: str
    keyring_backend: str
    keyring_weak: bool
    users: tuple[tuple[str, str], ...]
    status: SessionStatus


def gather(session: Session) -> DeviceFacts:
    """Everything the panel shows (runs on the executor)."""
    device = session.device
    return DeviceFacts(
        device.profile.device_id,
        device.profile.site,
        device.keyring.backend_name,
        device.keyring.is_weak,
        tuple(device.header.users()),
        session.status(),
    )


class AdminPanel(QWidget):
    notify = Signal(str)

    def __init__(self, session: Session, runner: Runner) -> None:
        super().__init__()
        self.setObjectName("admin_panel")
        self.setAccessibleName("Device administration")
        self._session = session
        self._runner = runner
        device_box = QGroupBox("This laptop")
        form = QFormLayout(device_box)
        self.device_id = data_label()
        self.site = data_label()
        self.policy = data_label(wrap=True)
        self.keyring = data_label(wrap=True)
        self.backlog = data_label(wrap=True)
        form.addRow("Device id", self.device_id)
        form.addRow("Site", self.site)
        form.addRow("Policy", self.policy)
        form.addRow("Keyring", self.keyring)
        form.addRow("Not yet sent", self.backlog)
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
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addWidget(data_label("Device administration", role="title"))
        layout.addWidget(
            data_label("Device and policy state. No clinical content is shown here.", role="hint")
        )
        row = QHBoxLayout()
        left = QVBoxLayout()
        left.addWidget(device_box)
        left.addWidget(add_box)
        left.addStretch(1)
        row.addLayout(left, 3)
        row.addWidget(users_box, 2)
        layout.addLayout(row, 1)
        self.add_button.clicked.connect(self.add_user)
        self.refresh()

    def refresh(self) -> None:
        session = self._session
        self._runner.run(lambda: gather(session), self._show)

    def _show(self, facts: DeviceFacts) -> None:
        status = facts.status
        self.device_id.setText(facts.device_id)
        self.site.setText(facts.site)
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
