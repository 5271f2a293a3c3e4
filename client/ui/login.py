"""The login screen (also the lock screen) and the password change dialog.

Guarantees:
- The password check (Argon2, about half a second) runs on the executor; the screen shows a
  busy indicator and never freezes. Enter in either field submits.
- A refused login says why in plain words, with the attempts left before lockout and the
  locked-until time when the core gives them (``LoginRefused``); the password field is cleared.
- The offline grace left is shown before sign-in from ``client.core.sign_in.offline_preview``
  (a read-only look at the trusted clocks: nothing is persisted by the preview).
- In lock mode the same screen says Gatehouse is locked; it holds no patient data.
- A user with no key slot on an enrolled laptop is told, as soon as the name is typed (leaving
  the field or pressing Enter), that nobody of that name has signed in here yet — the name may
  be misspelt, or this is their first sign-in — and "First sign-in on this laptop" becomes the
  default button (Enter does it); a wrong password for a name that has a slot says the
  password is wrong. ``client.core.sign_in.has_key_slot`` decides what may be told. The first
  sign-in is ``add_user_online`` (the gateway
  checks the password and unseals the escrow over the pinned channel; the device writes the
  slot) and then the normal offline login, both on the executor (``client.core.sign_in``).
  Later sign-ins are offline.
"""

from __future__ import annotations

from collections.abc import Callable

from client.core.accounts import LoginRefused
from client.core.device import Device
from client.core.humanize import format_moment, format_span
from client.core.session import Session
from client.core.sign_in import (
    FirstSignInNeeded,
    OfflinePreview,
    first_sign_in,
    has_key_slot,
    offline_preview,
    prepared,
    sign_in,
)
from client.ui.error_boundary import explain
from client.ui.qt import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner
from client.ui.widgets import button, centred_card, data_label, field, set_role
from policy import decisions
from policy.decisions import OfflineKind


def describe_offline(state: decisions.OfflineState) -> str:
    """The grace left, honestly: counted time is time the laptop was seen running (or the
    clock showed), and restarts are limited because time switched off may not be counted."""
    restarts = describe_restarts(state)
    if state.kind is OfflineKind.OK:
        return (
            f"Offline use allowed: {format_span(state.until_block)} left before a sync is "
            f"needed{restarts}."
        )
    if state.kind is OfflineKind.WARN:
        return (
            f"Sync soon: {format_span(state.until_block)} left before records are blocked "
            f"until the next sync{restarts}."
        )
    if state.kind is OfflineKind.BLOCKED_UNTIL_SYNC:
        if state.too_many_restarts:
            return (
                "Restarted too often since the last sync: connect to the network and sync "
                "before signing in."
            )
        return "Offline too long: connect to the network and sync before signing in."
    return "Offline far too long: this laptop will be wiped. Contact IT."


def describe_restarts(state: decisions.OfflineState) -> str:
    """`` (N more restarts allowed)``, or the warning that the next restart blocks records."""
    left = state.restarts_left
    if left is None:
        return ""
    if left == 0:
        return "; restarting the laptop before then will block records until a sync"
    return f" (and {left} more restart{'s' if left != 1 else ''})"


def describe_refusal(error: BaseException) -> str:
    """The words under the password field after a refused login."""
    if not isinstance(error, LoginRefused):
        return explain(error).message
    lines = [error.message]
    if error.attempts_left is not None and "attempt" not in error.message:
        lines.append(f"Attempts left before lockout: {error.attempts_left}.")
    if error.reason == "locked_out" and error.locked_until is not None:
        lines.append(f"Locked until {format_moment(error.locked_until)}.")
    return "\n".join(lines)


class LoginScreen(QWidget):
    """User + password; emits ``signed_in(Session, prepared)``. ``locked_user`` makes it the
    lock screen. ``prepare(session)``, when given, runs on the executor right after a successful
    login (the window's conditional-launch check) and its result is ``prepared``."""

    signed_in = Signal(object, object)

    def __init__(
        self,
        device: Device,
        runner: Runner,
        *,
        locked_user: str | None = None,
        prepare: Callable[[Session], object] | None = None,
    ) -> None:
        super().__init__()
        self._device = device
        self._runner = runner
        self._prepare = prepare
        self._busy = False
        self.setObjectName("lock_screen" if locked_user is not None else "login_screen")
        self.setAccessibleName("Lock screen" if locked_user is not None else "Sign in")

        form = QFormLayout()
        self.title = data_label(
            "Gatehouse is locked" if locked_user is not None else "Sign in to Gatehouse",
            role="title",
        )
        self.subtitle = data_label(
            "Everything is hidden while locked. Sign in again to continue."
            if locked_user is not None
            else f"Site: {device.profile.site}",
            role="hint",
            wrap=True,
        )
        self.user = field("User name")
        self.user.setText(locked_user or "")
        self.password = field("Password", password=True)
        user_label = QLabel("&User name")
        user_label.setBuddy(self.user)
        password_label = QLabel("&Password")
        password_label.setBuddy(self.password)
        form.addRow(user_label, self.user)
        form.addRow(password_label, self.password)
        self.sign_in = button("&Sign in", "Sign in")
        self.sign_in.setDefault(True)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setAccessibleName("Checking password")
        self.busy.setTextVisible(False)
        self.busy.setMaximumHeight(8)
        self.busy.hide()
        self.feedback = data_label("", role="error", wrap=True)
        self.feedback.setAccessibleName("Sign-in feedback")
        self.offline = data_label("", role="hint", wrap=True)
        self.offline.setAccessibleName("Offline state")
        self.first = button(
            "&First sign-in on this laptop (needs the network)", "First sign-in on this laptop"
        )
        self.first.hide()

        inner = centred_card(self, 480)
        inner.addWidget(self.title)
        inner.addWidget(self.subtitle)
        inner.addLayout(form)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.sign_in)
        inner.addLayout(row)
        inner.addWidget(self.busy)
        inner.addWidget(self.feedback)
        inner.addWidget(self.first)
        inner.addWidget(self.offline)

        self.new_here: bool | None = None  # the typed name has no key slot here (None: unknown)
        self._checked_name = ""
        self.user.editingFinished.connect(self.check_name)
        self.user.returnPressed.connect(self._enter)
        self.password.returnPressed.connect(self._enter)
        self.sign_in.clicked.connect(self.submit)
        self.first.clicked.connect(self.submit_first)
        self.setTabOrder(self.user, self.password)
        self.setTabOrder(self.password, self.sign_in)
        (self.password if locked_user else self.user).setFocus()
        self.refresh_offline()
        if locked_user is None and device.profile.enrolment and not device.header.users():
            self.subtitle.setText(
                f"Site: {device.profile.site}. Nobody has signed in on this laptop yet: the "
                "first sign-in of each person needs the network once."
            )
            self.first.show()

    def check_name(self) -> None:
        """Is the typed name new to this laptop? Then "First sign-in" becomes the default."""
        name = self.user.text().strip()
        if not name or name == self._checked_name:
            return
        self._checked_name = name
        device = self._device
        self._runner.run(
            lambda: has_key_slot(device, name), lambda has: self._name_known(name, has)
        )

    def _name_known(self, name: str, has: bool | None) -> None:
        if name != self.user.text().strip():
            return  # typed on meanwhile
        self.new_here = None if has is None else not has
        if self.new_here:
            self.first.show()
            self.first.setDefault(True)
            self.sign_in.setDefault(False)
            set_role(self.feedback, "hint")
            self.feedback.setText(FirstSignInNeeded().message)
        else:
            self.first.setDefault(False)
            self.sign_in.setDefault(True)
            if self._device.header.users():
                self.first.hide()
            if self.feedback.text() == FirstSignInNeeded().message:
                self.feedback.setText("")

    def _enter(self) -> None:
        """Enter does what the default button says: the online first sign-in for a new name."""
        if self.new_here and self.user.text().strip() == self._checked_name:
            self.submit_first()
        else:
            self.submit()

    def refresh_offline(self) -> None:
        device = self._device
        self._runner.run(lambda: offline_preview(device), self._show_offline, self._offline_unknown)

    def _show_offline(self, preview: OfflinePreview) -> None:
        self.offline.setText(describe_offline(preview.state))

    def _offline_unknown(self, error: BaseException) -> None:
        self.offline.setText(explain(error).message)

    def submit(self) -> None:
        if self._busy:
            return
        user, password = self.user.text().strip(), self.password.text()
        if not user or not password:
            self.feedback.setText("Enter your user name and password.")
            return
        self._set_busy(True)
        self.feedback.setText("")
        set_role(self.feedback, "error")
        device = self._device
        prepare = self._prepare
        self._runner.run(
            lambda: prepared(sign_in(device, user, password), prepare), self._ok, self._refused
        )

    def submit_first(self) -> None:
        """The first, online sign-in of this user on this laptop."""
        if self._busy:
            return
        user, password = self.user.text().strip(), self.password.text()
        if not user or not password:
            self.feedback.setText("Enter your user name and password, then try again.")
            return
        self._set_busy(True)
        self.feedback.setText("")
        self.offline.setText("Contacting the gateway for your first sign-in on this laptop…")
        device = self._device
        prepare = self._prepare
        self._runner.run(
            lambda: prepared(first_sign_in(device, user, password), prepare),
            self._ok,
            self._refused,
        )

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        self.busy.setVisible(busy)
        for widget in (self.user, self.password, self.sign_in, self.first):
            widget.setEnabled(not busy)

    def _ok(self, result: tuple[Session, object]) -> None:
        self._set_busy(False)
        self.password.clear()
        self.signed_in.emit(*result)

    def _refused(self, error: BaseException) -> None:
        self._set_busy(False)
        if isinstance(error, FirstSignInNeeded):
            self.first.show()  # the password stays for the online sign-in
            self.first.setDefault(True)
            self.sign_in.setDefault(False)
            self.new_here, self._checked_name = True, self.user.text().strip()
        else:
            self.password.clear()
        self.feedback.setText(describe_refusal(error))
        self.password.setFocus()
        self.refresh_offline()


class PasswordChangeDialog(QDialog):
    """Old password, new password twice; the re-wrap runs on the executor (ST-6)."""

    def __init__(self, session: Session, runner: Runner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._session = session
        self._runner = runner
        self.setWindowTitle("Change password")
        self.setAccessibleName("Change password")
        self.old = field("Current password", password=True)
        self.new = field("New password", password=True)
        self.again = field("New password again", password=True)
        minimum = decisions.min_password_length(session.policy)
        form = QFormLayout()
        form.addRow("&Current password", self.old)
        form.addRow("&New password", self.new)
        form.addRow("New password &again", self.again)
        hint = data_label(
            f"At least {minimum} characters. A long phrase is easier to remember than symbols.",
            role="hint",
            wrap=True,
        )
        self.feedback = data_label("", role="error", wrap=True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(hint)
        layout.addWidget(self.feedback)
        layout.addWidget(self.buttons)

    def submit(self) -> None:
        if self.new.text() != self.again.text():
            self.feedback.setText("The two new passwords are not the same.")
            return
        old, new, session = self.old.text(), self.new.text(), self._session
        self.buttons.setEnabled(False)
        self.feedback.setText("Changing password…")
        set_role(self.feedback, "hint")
        self._runner.run(lambda: session.change_password(old, new), self._done, self._failed)

    def _done(self, _result: object) -> None:
        self.accept()

    def _failed(self, error: BaseException) -> None:
        self.buttons.setEnabled(True)
        set_role(self.feedback, "error")
        self.feedback.setText(describe_refusal(error))
