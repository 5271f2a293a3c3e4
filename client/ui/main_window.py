"""The main window: switches screens and owns the executor, the idle watcher and the lock.

Guarantees:
- One ``Executor`` for the window; every core call goes through it (via ``Runner``).
- The window holds a session only while unlocked. ``lock()`` — on idle (``IdleWatcher`` with
  the policy's seconds, on the boot clock), on the Lock button / Ctrl+L, on minimise and on the
  application losing focus when the policy says so — revokes the session's runner (late
  results are dropped), scrubs and deletes the workspace and every dialog, queues
  ``Session.lock()`` on the executor and shows the lock screen (UI-3, AU-3).
- Screens are chosen by role: clinician → clinical workspace, auditor → audit workspace,
  admin → admin panel. The window does no clinical work itself.
- Kiosk full screen, screen-capture exclusion and the watermark follow the signed policy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from client.core.device import Device
from client.core.session import ADMIN, AUDITOR, CLINICIAN, Session, SessionStatus
from client.ui.admin import AdminPanel
from client.ui.audit_view import AuditWorkspace
from client.ui.clinical import ClinicalWorkspace
from client.ui.executor import Executor
from client.ui.idle import IdleWatcher, boot_clock
from client.ui.lockdown import exclude_from_capture, scrub_tree
from client.ui.login import LoginScreen, PasswordChangeDialog, describe_offline
from client.ui.qt import (
    QAction,
    QApplication,
    QCloseEvent,
    QDialog,
    QEvent,
    QGuiApplication,
    QKeySequence,
    QLabel,
    QMainWindow,
    QStackedWidget,
    Qt,
    QTimer,
    QToolBar,
    QWidget,
)
from client.ui.runner import Runner, show_error
from client.ui.widgets import STYLESHEET, data_label
from policy import decisions

WINDOW_SIZE = (1366, 768)
MESSAGE_MS = 8000
FOCUS_LOSS_GRACE_MS = 400  # how long the app may be without focus before it locks


def status_text(status: SessionStatus) -> str:
    unsent = (
        f"{status.unsent_items} item(s) not yet sent" if status.unsent_items else "All work sent"
    )
    conflicts = f" · {status.conflicts} conflict(s) to resolve" if status.conflicts else ""
    return f"{describe_offline(status.offline)} · {unsent}{conflicts}"


class MainWindow(QMainWindow):
    def __init__(
        self,
        device: Device,
        *,
        idle_clock: Callable[[], float] = boot_clock,
        wall_clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        super().__init__()
        self.setObjectName("main_window")
        # Deleted on the GUI thread when closed: a Python-owned window left to the garbage
        # collector could otherwise be destroyed on the executor's thread (a Qt crash).
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.setWindowTitle("Gatehouse")
        self.setStyleSheet(STYLESHEET)
        self.resize(*WINDOW_SIZE)
        self.device = device
        self._clock = wall_clock or device.clock
        self.executor = Executor("gatehouse-db", self)
        self.executor.failed.connect(lambda error: show_error(self, error))
        self._device_runner = Runner(self.executor, self)
        self.session: Session | None = None
        self.runner: Runner | None = None
        self.workspace: QWidget | None = None
        self.locked_user: str | None = None
        self.screens = QStackedWidget()
        self.setCentralWidget(self.screens)
        self.login_screen: LoginScreen | None = None

        self.toolbar = QToolBar("Session")
        self.toolbar.setMovable(False)
        self.toolbar.setFloatable(False)
        self.toolbar.setAccessibleName("Session toolbar")
        self.who = QLabel()
        self.who.setTextFormat(Qt.TextFormat.PlainText)
        self.toolbar.addWidget(data_label("Gatehouse  ", role="title"))
        self.toolbar.addWidget(self.who)
        spacer = QWidget()
        spacer.setSizePolicy(spacer.sizePolicy().Policy.Expanding, spacer.sizePolicy().Policy.Fixed)
        self.toolbar.addWidget(spacer)
        self.password_action = QAction("Change &password…", self)
        self.password_action.triggered.connect(self.change_password)
        self.lock_action = QAction("&Lock (Ctrl+L)", self)
        self.lock_action.setShortcut(QKeySequence("Ctrl+L"))
        self.lock_action.setShortcutContext(Qt.ShortcutContext.ApplicationShortcut)
        self.lock_action.triggered.connect(self.lock)
        self.toolbar.addAction(self.password_action)
        self.toolbar.addAction(self.lock_action)
        self.addToolBar(self.toolbar)
        self.toolbar.hide()
        self.status_label = data_label("")
        self.status_label.setAccessibleName("Session status")
        self.statusBar().addPermanentWidget(self.status_label)

        self.app_state: Callable[[], Qt.ApplicationState] = QGuiApplication.applicationState
        self.idle = IdleWatcher(300, idle_clock, self)
        self.idle.lock_requested.connect(self.lock)
        app = QApplication.instance()
        if isinstance(app, QApplication):
            app.applicationStateChanged.connect(self._application_state)
        self.show_login()

    # -- screens ---------------------------------------------------------------------------

    def _set_screen(self, screen: QWidget) -> None:
        old = self.screens.currentWidget()
        self.screens.addWidget(screen)
        self.screens.setCurrentWidget(screen)
        if old is not None and old is not screen:
            self._destroy(old)

    def _destroy(self, widget: QWidget) -> None:
        self.screens.removeWidget(widget)
        scrub_tree(widget)
        widget.hide()
        widget.deleteLater()

    def show_login(self, locked_user: str | None = None) -> None:
        screen = LoginScreen(self.device, self._device_runner, locked_user=locked_user)
        screen.signed_in.connect(self._signed_in)
        self.login_screen = screen
        self._set_screen(screen)
        (screen.password if locked_user else screen.user).setFocus()

    def _signed_in(self, session: Session) -> None:
        self.session = session
        self.locked_user = None
        self.login_screen = None
        self.runner = Runner(self.executor, self)
        policy = session.policy
        permissions = decisions.ui_permissions(policy)
        if session.role == CLINICIAN:
            clinical = ClinicalWorkspace(session, self.runner, permissions, self._clock)
            clinical.notify.connect(self.notify)
            clinical.records_changed.connect(self.refresh_status)
            workspace: QWidget = clinical
        elif session.role == AUDITOR:
            audit = AuditWorkspace(session, self.runner)
            audit.notify.connect(self.notify)
            workspace = audit
        elif session.role == ADMIN:
            admin = AdminPanel(session, self.runner)
            admin.notify.connect(self.notify)
            workspace = admin
        else:  # an unknown role sees nothing
            workspace = data_label("Your role has no screen in this version. Contact IT.")
        self.workspace = workspace
        self._set_screen(workspace)
        self.who.setText(f"{session.user_id} ({session.role}) · site {session.device.profile.site}")
        self.toolbar.show()
        self.idle.set_idle_seconds(decisions.idle_lock_seconds(policy))
        self.idle.start()
        if permissions.screen_capture_exclusion:
            exclude_from_capture(self)
        if permissions.kiosk_fullscreen and self.isVisible():
            self.showFullScreen()
        self.refresh_status()
        if isinstance(workspace, ClinicalWorkspace):
            workspace.caseload.focus_search()

    def refresh_status(self) -> None:
        if self.session is None or self.runner is None:
            return
        session = self.session
        self.runner.run(session.status, lambda s: self.status_label.setText(status_text(s)))

    def notify(self, text: str) -> None:
        self.statusBar().showMessage(text, MESSAGE_MS)

    def change_password(self) -> None:
        if self.session is None or self.runner is None:
            return
        dialog = PasswordChangeDialog(self.session, self.runner, self)
        dialog.accepted.connect(lambda: self.notify("Password changed."))
        dialog.finished.connect(lambda _r: dialog.deleteLater())
        dialog.open()

    # -- lock ------------------------------------------------------------------------------

    def lock(self) -> None:
        """Lock now: drop the session, destroy every screen that shows patient data."""
        session, self.session = self.session, None
        if session is None:
            return
        self.idle.stop()
        if self.runner is not None:
            self.runner.revoke()
            self.runner = None
        for dialog in self.findChildren(QDialog):
            dialog.reject()
            scrub_tree(dialog)
            dialog.deleteLater()
        workspace, self.workspace = self.workspace, None
        scrub = getattr(workspace, "scrub", None)
        if callable(scrub):
            scrub()
        self._device_runner.after(session.lock)
        self.toolbar.hide()
        self.who.clear()
        self.status_label.clear()
        self.statusBar().clearMessage()
        self.locked_user = session.user_id
        self.show_login(locked_user=session.user_id)

    def _application_state(self, state: Qt.ApplicationState) -> None:
        if self.session is None or state == Qt.ApplicationState.ApplicationActive:
            return
        if self.session.policy.get_bool("session.lock_on_focus_loss"):
            # A dialog closing can leave the app without a focus window for an instant; lock
            # only if the focus is still elsewhere a moment later.
            QTimer.singleShot(FOCUS_LOSS_GRACE_MS, self, self._check_focus_loss)

    def _check_focus_loss(self) -> None:
        if self.session is not None and self.app_state() != Qt.ApplicationState.ApplicationActive:
            self.lock()

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if (
            event.type() == QEvent.Type.WindowStateChange
            and self.isMinimized()
            and self.session is not None
            and self.session.policy.get_bool("session.lock_on_minimise")
        ):
            self.lock()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.lock()
        self.executor.shutdown(wait=True)
        super().closeEvent(event)
