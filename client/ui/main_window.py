"""The main window: switches screens and owns the executor, the idle watcher and the lock.

Guarantees:
- One ``Executor`` for the window; every core call goes through it (via ``Runner``).
- The window holds a session only while unlocked. ``lock()`` — on idle (``IdleWatcher`` with
  the policy's seconds, on the boot clock), on the Lock button / Ctrl+L, on minimise and on the
  application losing focus when the policy says so — revokes the session's runner (late
  results are dropped), scrubs and deletes the workspace and every dialog, queues
  ``Session.lock()`` on the executor and shows the lock screen (UI-3, AU-3). A consultation
  being written is kept as an encrypted draft first, queued before the lock (CR-4).
- Screens are chosen by role: clinician → clinical workspace, auditor → audit workspace,
  admin → admin panel. The window does no clinical work itself.
- Kiosk full screen, screen-capture exclusion and the watermark follow the signed policy.
- Conditional launch: right after a clinician's login (on the executor, before any record is
  read) the policy's device rules are checked (``client.core.conditional_launch``); a failing
  device gets the conditional-launch screen instead of the clinical workspace, and the refusal
  is audited. IT sees the same checks earlier, at provisioning and on the admin panel.
- Keyboard: every toolbar action takes Tab focus and has a Ctrl shortcut (application-wide)
  and a working Alt+letter (``TOOLBAR_ACTIONS``); every item view takes one Tab stop
  (``widgets.one_tab_stop`` on each screen and dialog). The user line shrinks first, so Lock
  stays on the toolbar at 911x512 points (1366x768 at 150%).
- The status bar has one owner, ``StatusLine``: notices (newest wins), the sync state and the
  session state never print over one another.
- Sync runs on the window's ``SyncController`` (its own worker), so the window never freezes.
  Locking during a sync shows the lock screen at once, cancels the sync, and locks the session
  (closes the vault) only once the sync has stopped. A sync that reports a remote lock or wipe
  (``lock_requested``) locks the window; after a remote wipe (or an admin's wipe from the admin
  panel) the window says the laptop was wiped instead of offering a sign-in.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass

from client.core.conditional_launch import (
    LaunchCheck,
    LaunchFailure,
    check_launch,
    launch_failures,
)
from client.core.device import Device
from client.core.humanize import format_moment
from client.core.session import ADMIN, AUDITOR, CLINICIAN, Session, SessionStatus
from client.core.sync_runner import run_sync
from client.ui.admin import AdminPanel
from client.ui.audit_view import AuditWorkspace
from client.ui.clinical import ClinicalWorkspace
from client.ui.conditional_launch import ConditionalLaunchScreen
from client.ui.conflicts import ConflictsDialog
from client.ui.executor import Executor
from client.ui.idle import IdleWatcher, boot_clock
from client.ui.lockdown import exclude_from_capture, printer_available, scrub_tree
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
    QShortcut,
    QSizePolicy,
    QStackedWidget,
    Qt,
    QTimer,
    QToolBar,
    QVBoxLayout,
    QWidget,
)
from client.ui.runner import Runner, show_error
from client.ui.status_line import StatusLine
from client.ui.sync_panel import (
    SyncController,
    SyncFunction,
    SyncOutcome,
    SyncPanel,
    describe_progress,
    failure_sentence,
    refused_policy,
)
from client.ui.widgets import STYLESHEET, data_label, fitting, one_tab_stop, scrolling
from policy import decisions
from sync.device.engine import Progress

WINDOW_SIZE = (1366, 768)
SYNC_DIALOG_SIZE = (900, 640)
FOCUS_LOSS_GRACE_MS = 400  # how long the app may be without focus before it locks


@dataclass(frozen=True)
class ToolbarAction:
    """A toolbar action: its text (``&`` marks the Alt+letter), its shortcut, its name."""

    text: str
    shortcut: str
    mnemonic: str
    name: str


# The letters are unique across every screen the toolbar sits above (the clinical, audit and
# admin workspaces); tests/ui/test_keyboard_and_layout.py checks that and that each works.
TOOLBAR_ACTIONS = (
    ToolbarAction("S&ync… (Ctrl+Y)", "Ctrl+Y", "Alt+Y", "Sync and readiness"),
    ToolbarAction("Change pass&word… (Ctrl+Shift+P)", "Ctrl+Shift+P", "Alt+W", "Change password"),
    ToolbarAction("&Lock (Ctrl+L)", "Ctrl+L", "Alt+L", "Lock Gatehouse"),
)


def sync_status_text(outcome: SyncOutcome) -> str:
    """The status line's sync part: counts after a sync, or what went wrong and what to do."""
    result = outcome.result
    if outcome.ok and result is not None:
        errors = result.push_errors
        refused = f", {errors} refused (open Sync for why)" if errors else ""
        policy = " · policy update refused (open Sync)" if refused_policy(result) else ""
        return (
            f"Synced {format_moment(outcome.finished_at)}: {result.pulled:,} in, "
            f"{result.pushed:,} out{refused}{policy}"
        )
    return f"Last sync stopped: {failure_sentence(outcome)}"


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
        launch_check: LaunchCheck = launch_failures,
        sync: SyncFunction = run_sync,
        has_printer: Callable[[], bool] = printer_available,
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
        self._launch_check = launch_check
        self._has_printer = has_printer
        self.sync = SyncController(self, sync=sync, clock=self._clock)
        self.sync.started.connect(self._sync_started)
        self.sync.progressed.connect(self._sync_progress)
        self.sync.finished.connect(self._sync_finished)
        self.sync_dialog: QDialog | None = None
        self.sync_panel: SyncPanel | None = None
        self.conflicts_dialog: ConflictsDialog | None = None

        self.toolbar = QToolBar("Session")
        self.toolbar.setMovable(False)
        self.toolbar.setFloatable(False)
        self.toolbar.setAccessibleName("Session toolbar")
        self.who = QLabel()
        self.who.setTextFormat(Qt.TextFormat.PlainText)
        self.who.setAccessibleName("Signed in as")
        # The user line may shrink (elided, full text in the tooltip) so that the actions, and
        # Lock above all, stay on the toolbar in a narrow window or at 150% scaling.
        self.who.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.who.setMinimumWidth(0)
        self.toolbar.addWidget(data_label("Gatehouse  ", role="title"))
        self.toolbar.addWidget(self.who)
        self.sync_action = self._toolbar_action(TOOLBAR_ACTIONS[0], self.open_sync)
        self.password_action = self._toolbar_action(TOOLBAR_ACTIONS[1], self.change_password)
        self.lock_action = self._toolbar_action(TOOLBAR_ACTIONS[2], self.lock)
        self.addToolBar(self.toolbar)
        self.toolbar.hide()
        self.status_line = StatusLine()
        self.statusBar().addWidget(self.status_line, 1)

        self.app_state: Callable[[], Qt.ApplicationState] = QGuiApplication.applicationState
        self.idle = IdleWatcher(300, idle_clock, self)
        self.idle.lock_requested.connect(self.lock)
        app = QApplication.instance()
        if isinstance(app, QApplication):
            app.applicationStateChanged.connect(self._application_state)
        self.show_login()

    def _toolbar_action(self, spec: ToolbarAction, slot: Callable[[], None]) -> QAction:
        """A toolbar action reachable three ways: Tab (its button takes focus), its Ctrl
        shortcut (anywhere in the application) and its Alt+letter (in this window; toolbar
        buttons do not handle mnemonics themselves, so a window shortcut does)."""
        action = QAction(spec.text, self)
        action.setShortcut(QKeySequence(spec.shortcut))
        action.setShortcutContext(Qt.ShortcutContext.ApplicationShortcut)
        action.setToolTip(spec.name)
        action.triggered.connect(slot)
        self.toolbar.addAction(action)
        tool_button = self.toolbar.widgetForAction(action)
        if tool_button is not None:
            tool_button.setFocusPolicy(Qt.FocusPolicy.TabFocus)
            tool_button.setAccessibleName(spec.name)
        mnemonic = QShortcut(QKeySequence(spec.mnemonic), self)
        mnemonic.setContext(Qt.ShortcutContext.WindowShortcut)
        mnemonic.activated.connect(lambda: action.trigger() if self.toolbar.isVisible() else None)
        return action

    # -- screens ---------------------------------------------------------------------------

    def _set_screen(self, screen: QWidget) -> None:
        one_tab_stop(screen)
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
        screen = LoginScreen(
            self.device,
            self._device_runner,
            locked_user=locked_user,
            prepare=functools.partial(check_launch, self._launch_check),
        )
        screen.signed_in.connect(self._signed_in)
        self.login_screen = screen
        self._set_screen(screen)
        (screen.password if locked_user else screen.user).setFocus()

    def _signed_in(self, session: Session, prepared: object = None) -> None:
        failures = (
            [f for f in prepared if isinstance(f, LaunchFailure)]
            if isinstance(prepared, list)
            else []
        )
        self.session = session
        self.locked_user = None
        self.login_screen = None
        self.runner = Runner(self.executor, self)
        policy = session.policy
        permissions = decisions.ui_permissions(policy)
        if session.role == CLINICIAN and failures:
            workspace: QWidget = ConditionalLaunchScreen(
                failures, session.device.profile.site, session.device.profile.device_id
            )
        elif session.role == CLINICIAN:
            clinical = ClinicalWorkspace(
                session, self.runner, permissions, self._clock, has_printer=self._has_printer
            )
            clinical.notify.connect(self.notify)
            clinical.records_changed.connect(self.refresh_status)
            workspace = clinical
        elif session.role == AUDITOR:
            audit = AuditWorkspace(session, self.runner)
            audit.notify.connect(self.notify)
            workspace = audit
        elif session.role == ADMIN:
            admin = AdminPanel(session, self.runner, launch_check=self._launch_check)
            admin.notify.connect(self.notify)
            admin.wiped.connect(lambda: self._lock(wiped=True, remote=False))
            workspace = admin
        else:  # an unknown role sees nothing
            workspace = data_label("Your role has no screen in this version. Contact IT.")
        self.workspace = workspace
        if isinstance(workspace, AuditWorkspace | AdminPanel):
            # Forms and tables taller (or wider) than a small window scroll, never clip; the
            # clinical workspace scrolls inside its own screens (banner and buttons fixed).
            self._set_screen(scrolling(workspace, workspace.accessibleName(), across=True))
        else:
            self._set_screen(workspace)
        who = f"{session.user_id} ({session.role}) · site {session.device.profile.site}"
        self.who.setText(who)
        self.who.setToolTip(who)
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
        elif isinstance(workspace, AuditWorkspace):
            workspace.finder.patient.setFocus()  # the auditor's first question: which patient
        elif isinstance(workspace, AdminPanel):
            workspace.users.setFocus()  # who holds a key slot: IT's first read

    def refresh_status(self) -> None:
        if self.session is None or self.runner is None:
            return
        session = self.session
        self.runner.run(session.status, lambda s: self.status_line.set_session(status_text(s)))

    # -- sync ------------------------------------------------------------------------------

    def open_sync(self) -> None:
        """The sync panel (status, Sync now, progress, result, readiness) in its own dialog."""
        if self.session is None or self.runner is None:
            return
        if self.sync_dialog is not None:
            self.sync_dialog.raise_()
            return
        dialog = QDialog(self)
        dialog.setObjectName("sync_dialog")
        dialog.setWindowTitle("Sync and readiness")
        dialog.setAccessibleName("Sync and readiness")
        panel = SyncPanel(self.session, self.runner, self.sync, self._clock)
        panel.conflicts_requested.connect(self.open_conflicts)
        layout = QVBoxLayout(dialog)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scrolling(panel, "Sync and readiness details"))
        dialog.resize(*fitting(SYNC_DIALOG_SIZE, self))
        self.sync_dialog, self.sync_panel = dialog, panel

        def closed(_result: int) -> None:
            if self.sync_dialog is dialog:
                self.sync_dialog, self.sync_panel = None, None
            dialog.deleteLater()

        dialog.finished.connect(closed)
        dialog.show()
        panel.sync_now.setFocus()

    def start_sync(self) -> bool:
        return self.session is not None and self.sync.start(self.session)

    def open_conflicts(self) -> None:
        if self.session is None or self.runner is None or self.conflicts_dialog is not None:
            return
        dialog = ConflictsDialog(self.session, self.runner, self)
        one_tab_stop(dialog)
        self.conflicts_dialog = dialog

        def closed(_result: int) -> None:
            if self.conflicts_dialog is dialog:
                self.conflicts_dialog = None
            dialog.deleteLater()
            self.refresh_status()
            if self.sync_panel is not None:
                self.sync_panel.refresh()

        dialog.resolved.connect(lambda _keep: self.refresh_status())
        dialog.finished.connect(closed)
        dialog.open()

    def _sync_started(self) -> None:
        self.status_line.set_sync("Syncing…")

    def _sync_progress(self, progress: Progress) -> None:
        if self.session is not None:
            self.status_line.set_sync(f"Syncing · {describe_progress(progress)}")

    def _sync_finished(self, outcome: SyncOutcome) -> None:
        self.status_line.set_sync(sync_status_text(outcome))
        if self.session is None:
            return
        if outcome.wiped:
            self._lock(wiped=True)
            return
        if outcome.lock_requested:
            self.lock()
            self.notify("IT locked this laptop remotely. Sign in again to continue.")
            return
        self.idle.set_idle_seconds(decisions.idle_lock_seconds(self.session.policy))
        self.refresh_status()

    def show_wiped(self, *, remote: bool = True) -> None:
        """After a wipe (remote, or by an admin here): nothing to sign in to; say so."""
        self.login_screen = None
        who = "IT wiped this laptop remotely" if remote else "This laptop was wiped"
        screen = data_label(
            f"{who}: the Gatehouse records and keys on it have been "
            "destroyed. Close Gatehouse and contact IT to set the laptop up again.",
            role="title",
            wrap=True,
        )
        screen.setObjectName("wiped_screen")
        screen.setAccessibleName("This laptop has been wiped")
        screen.setContentsMargins(48, 48, 48, 48)
        self._set_screen(screen)

    def notify(self, text: str) -> None:
        """A notice in the status line (the newest replaces any older one)."""
        self.status_line.notice(text)

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
        self._lock(wiped=False)

    def _lock(self, *, wiped: bool, remote: bool = True) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        # The auditor's remembered password goes at once (the vault closes on the worker).
        session.reauth.forget()
        self.idle.stop()
        if self.runner is not None:
            self.runner.revoke()
            self.runner = None
        for dialog in self.findChildren(QDialog):
            dialog.reject()
            scrub_tree(dialog)
            dialog.deleteLater()
        workspace, self.workspace = self.workspace, None
        # Typing in an open consultation is kept as a draft before the vault closes (CR-4).
        draft = workspace.pending_draft() if isinstance(workspace, ClinicalWorkspace) else None
        if draft is not None:
            self._device_runner.after(functools.partial(session.save_draft, *draft))
        scrub = getattr(workspace, "scrub", None)
        if callable(scrub):
            scrub()
        if self.sync.running:
            # The sync holds its own connection: stop it first, then close the vault.
            self.sync.cancel()
            self.status_line.set_sync("Stopping the sync before locking…")
            self.sync.when_idle(lambda: self._device_runner.after(session.lock))
        else:
            self._device_runner.after(session.lock)
        self.sync_dialog, self.sync_panel, self.conflicts_dialog = None, None, None
        self.toolbar.hide()
        self.who.clear()
        self.status_line.clear()
        self.locked_user = session.user_id
        if wiped:
            self.show_wiped(remote=remote)
        else:
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
        if self.sync.running:
            self.sync.cancel()
            self.sync.executor.shutdown(wait=True)
            QApplication.sendPostedEvents(self.sync.executor, 0)  # its outcome → the lock
        self.sync.executor.shutdown(wait=True)
        self.executor.shutdown(wait=True)
        super().closeEvent(event)
