"""Keyboard, accessibility and layout (issue 12): every screen by keyboard, at 150% scaling.

1366x768 at 150% scaling (QT_SCALE_FACTOR=1.5) gives 911x512 logical points; every screen must
fit there with Lock on the toolbar. Real windows, real sign-in, offscreen.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PySide6.QtWidgets import QAbstractButton, QSizeGrip
from pytestqt.qtbot import QtBot

from client.ui.admin import AdminPanel
from client.ui.audit_view import AuditWorkspace
from client.ui.chart_view import banner_details
from client.ui.clinical import ClinicalWorkspace
from client.ui.consultation_form import ConsultationForm
from client.ui.main_window import TOOLBAR_ACTIONS, MainWindow, sync_status_text
from client.ui.qt import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QDialog,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QScrollArea,
    QSpinBox,
    Qt,
    QWidget,
)
from client.ui.sync_panel import SyncOutcome
from client.ui.widgets import DEFAULT_BORDER, FOCUS_RING, STYLESHEET, TOOLBAR_FOCUS_RING
from sync.device.engine import SyncResult
from tests.support.contrast import contrast_ratio, stylesheet_rules
from tests.support.device import T0, load_records
from tests.support.fhir import patient
from tests.support.ui import (
    CLINICIAN,
    HTML_PATIENT,
    add_slot,
    device,
    open_chart,
    sign_in,
    window,
    workspace,
)

SMALL = (911, 512)  # 1366x768 at 150% scaling, in logical points
AUDITOR = ("ig.officer", "audit trail reviewer 2026")
ADMIN = ("it.admin", "provisioning desk password")


def _visible_in_toolbar(win: MainWindow, action_index: int) -> bool:
    action = (win.sync_action, win.password_action, win.lock_action)[action_index]
    button = win.toolbar.widgetForAction(action)
    if button is None or not button.isVisible():
        return False
    inside = button.geometry()
    return win.toolbar.rect().contains(inside)


def _fits(win: MainWindow, screen: QWidget) -> None:
    """The window at 911x512 holds ``screen`` without clipping, Lock on the toolbar."""
    win.resize(*SMALL)
    QApplication.processEvents()
    hint = win.minimumSizeHint()
    assert hint.width() <= SMALL[0], f"{screen.objectName()} needs {hint.width()} points wide"
    assert hint.height() <= SMALL[1], f"{screen.objectName()} needs {hint.height()} points high"
    assert win.width() <= SMALL[0] and win.height() <= SMALL[1]
    shown = win.screens.currentWidget()
    assert shown.minimumSizeHint().width() <= shown.width()
    assert shown.minimumSizeHint().height() <= shown.height()
    if isinstance(shown, QScrollArea):  # what does not fit scrolls: it is not clipped
        assert shown.widget().isAncestorOf(screen) or shown.widget() is screen
    else:
        assert shown.isAncestorOf(screen) or shown is screen
    assert _visible_in_toolbar(win, 2), "Lock fell off the toolbar"


def test_every_clinical_screen_fits_911_by_512_points_with_lock_visible(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path)
    win, ws, _session = workspace(qtbot, td)
    _fits(win, ws.caseload)
    table = ws.caseload.table
    qtbot.waitUntil(lambda: ws.caseload.model.rowCount() > 0, timeout=5000)
    QApplication.processEvents()
    assert table.columnWidth(0) >= table.sizeHintForColumn(0)  # names whole, never "Boaten…"
    chart = open_chart(qtbot, ws, HTML_PATIENT)
    _fits(win, chart)
    ws.new_consultation()
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ConsultationForm))
    assert ws.patient_screen is not None
    _fits(win, ws.patient_screen)
    win.open_sync()
    dialog = win.sync_dialog
    assert dialog is not None
    hint = dialog.minimumSizeHint()
    assert hint.width() <= SMALL[0] and hint.height() <= SMALL[1]
    assert dialog.width() <= max(SMALL[0], dialog.screen().availableGeometry().width())
    dialog.reject()


@pytest.mark.parametrize(
    ("user", "role", "kind"), [(AUDITOR, "auditor", AuditWorkspace), (ADMIN, "admin", AdminPanel)]
)
def test_audit_and_admin_screens_fit_911_by_512_points(
    qtbot: QtBot, tmp_path: Path, user: tuple[str, str], role: str, kind: type
) -> None:
    td = device(tmp_path)
    add_slot(td, user, role)
    win = window(qtbot, td)
    sign_in(qtbot, win, user)
    assert isinstance(win.workspace, kind)
    _fits(win, win.workspace)


def test_the_patient_banner_follows_nhs_cui_and_wraps(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path)
    record = patient(
        "pt-cui-1",
        "O'Brien-Smith",
        ["Mary", "Anne"],
        birth_date="1978-11-19",
        nhs="9434765919",
        prison="A7654ZZ",
        gender="female",
    )
    record["name"][0]["prefix"] = ["Ms"]
    load_records(td.device, [record])
    win, ws, _session = workspace(qtbot, td)
    chart = open_chart(qtbot, ws, "pt-cui-1")
    assert chart.header.name.text() == "O'BRIEN-SMITH, Mary Anne (Ms)"
    details = chart.header.details.text().replace("\u00a0", " ")
    today = td.clocks.now().date()
    age = today.year - 1978 - ((today.month, today.day) < (11, 19))
    for item in (
        f"Born 19-Nov-1978 ({age}y)",
        "Gender Female",
        "NHS No. 943 476 5919",
        "Prison No. A7654ZZ",
    ):
        assert item in details
    assert chart.header.site.text() == "hmp-brixton"
    assert chart.header.details.wordWrap() and chart.header.name.wordWrap()
    # One item never breaks inside ("NHS No. 943 476 5919" stays on one line) ...
    assert "NHS\u00a0No.\u00a0943\u00a0476\u00a05919" in banner_details(chart.chart)  # type: ignore[arg-type]
    # ... and the banner wraps instead of widening the window (it needed 1,089 points).
    assert chart.header.minimumSizeHint().width() < SMALL[0] // 2
    win.resize(*SMALL)
    QApplication.processEvents()
    assert chart.header.details.height() >= chart.header.details.heightForWidth(
        chart.header.details.width()
    )


CTRL = Qt.KeyboardModifier.ControlModifier
SHORTCUTS = {
    "ctrl": ((Qt.Key.Key_Y, CTRL), (Qt.Key.Key_P, CTRL | Qt.KeyboardModifier.ShiftModifier),
             (Qt.Key.Key_L, CTRL)),
    "alt": tuple((key, Qt.KeyboardModifier.AltModifier)
                 for key in (Qt.Key.Key_Y, Qt.Key.Key_W, Qt.Key.Key_L)),
}  # fmt: skip


@pytest.mark.parametrize("keys", ["ctrl", "alt"])
def test_each_toolbar_shortcut_and_alt_letter_triggers_its_action(
    qtbot: QtBot, tmp_path: Path, keys: str
) -> None:
    """Sync, Change password and Lock, each by its Ctrl shortcut and by its Alt+letter."""
    (sync_key, sync_mod), (pw_key, pw_mod), (lock_key, lock_mod) = SHORTCUTS[keys]
    win, ws, _session = workspace(qtbot, device(tmp_path))
    ws.caseload.query.setFocus()
    qtbot.keyClick(win, sync_key, sync_mod)
    qtbot.waitUntil(lambda: win.sync_dialog is not None, timeout=3000)
    assert win.sync_dialog is not None
    win.sync_dialog.reject()
    qtbot.waitUntil(lambda: win.sync_dialog is None, timeout=3000)
    ws.caseload.query.setFocus()
    qtbot.keyClick(win, pw_key, pw_mod)
    qtbot.waitUntil(lambda: bool(_password_dialogs(win)), timeout=3000)
    for dialog in _password_dialogs(win):
        dialog.reject()
    ws.caseload.query.setFocus()
    qtbot.keyClick(win, lock_key, lock_mod)
    qtbot.waitUntil(lambda: win.session is None, timeout=3000)


def _password_dialogs(win: MainWindow) -> list[QDialog]:
    return [d for d in win.findChildren(QDialog) if d.windowTitle() == "Change password"]


def test_toolbar_actions_are_reachable_by_tab(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path)
    win, ws, _session = workspace(qtbot, td)
    ws.caseload.query.setFocus()
    buttons = {win.toolbar.widgetForAction(a) for a in (win.sync_action, win.password_action)}
    buttons.add(win.toolbar.widgetForAction(win.lock_action))
    reached = set()
    for _ in range(12):
        qtbot.keyClick(QApplication.focusWidget() or win, Qt.Key.Key_Tab)
        reached.add(QApplication.focusWidget())
    assert buttons <= reached
    qtbot.keyClick(win.toolbar.widgetForAction(win.lock_action), Qt.Key.Key_Space)
    qtbot.waitUntil(lambda: win.session is None, timeout=3000)


def _mnemonics(root: QWidget) -> list[str]:
    letters = []
    for widget in root.findChildren(QWidget):
        if not widget.isVisibleTo(root):
            continue
        text = ""
        if isinstance(widget, QAbstractButton) or (
            isinstance(widget, QLabel) and widget.buddy() is not None
        ):
            text = widget.text()
        found = re.search(r"&([^&\s])", text)
        if found:
            letters.append(found.group(1).lower())
    return letters


@pytest.mark.parametrize("role", ["clinician", "auditor", "admin"])
def test_toolbar_alt_letters_clash_with_no_mnemonic_on_any_screen_below(
    qtbot: QtBot, tmp_path: Path, role: str
) -> None:
    toolbar = [spec.mnemonic.removeprefix("Alt+").lower() for spec in TOOLBAR_ACTIONS]
    assert len(set(toolbar)) == len(toolbar)
    td = device(tmp_path)
    user = {"clinician": CLINICIAN, "auditor": AUDITOR, "admin": ADMIN}[role]
    if role != "clinician":
        add_slot(td, user, role)
    win = window(qtbot, td)
    sign_in(qtbot, win, user)
    screens: list[QWidget] = [win.screens.currentWidget()]
    if isinstance(win.workspace, ClinicalWorkspace):
        ws = win.workspace
        screens.append(open_chart(qtbot, ws, HTML_PATIENT))
        ws.new_consultation()
        qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ConsultationForm))
        screens.append(ws.patient_screen)  # type: ignore[arg-type]
    for screen in screens:
        clashes = set(toolbar) & set(_mnemonics(screen))
        assert not clashes, f"{screen.objectName()} also uses Alt+{clashes}"


def test_the_focus_ring_differs_from_the_default_button_border() -> None:
    rules = stylesheet_rules(STYLESHEET)

    def rule_with(selector: str) -> list[dict[str, str]]:
        return [r.properties for r in rules if selector in r.selectors]

    assert any(FOCUS_RING in p.get("border", "") for p in rule_with("QPushButton:focus"))
    assert any(DEFAULT_BORDER in p.get("border", "") for p in rule_with("QPushButton:default"))
    assert any(
        TOOLBAR_FOCUS_RING in p.get("border", "") for p in rule_with("QToolBar QToolButton:focus")
    )
    assert any("3px" in p.get("border", "") for p in rule_with("QPushButton:focus"))
    for background in ("#ffffff", "#f6f7f9", "#e8edf3", "#e3e7ec"):
        assert contrast_ratio(FOCUS_RING, background) >= 3.0
    assert contrast_ratio(FOCUS_RING, DEFAULT_BORDER) >= 3.0
    assert contrast_ratio(TOOLBAR_FOCUS_RING, "#27313d") >= 3.0


def test_every_text_colour_has_aa_contrast_with_its_background() -> None:
    """Each rule's text colour against its own background, else its container's (the first
    part of its selector), else every light background a plain label can sit on."""
    rules = stylesheet_rules(STYLESHEET)
    own = {sel: r.colour("background") for r in rules for sel in r.selectors}
    light = {c for c in own.values() if c is not None and contrast_ratio(c, "#ffffff") < 1.5}
    checked = 0
    for rule in rules:
        for colour_name in ("color", "selection-color"):
            text = rule.colour(colour_name)
            if text is None:
                continue
            for selector in rule.selectors:
                container = selector.split()[0] if " " in selector else None
                key = "selection-background-color" if colour_name == "selection-color" else None
                background = rule.colour(key) if key else rule.colour("background")
                if background is None and container is not None:
                    background = own.get(container)
                behind = [background] if background else sorted(light)
                for colour in behind:
                    ratio = contrast_ratio(text, colour)
                    assert ratio >= 4.5, f"{selector}: {text} on {colour} is {ratio:.2f}:1"
                    checked += 1
    assert checked > 20


def test_every_item_view_takes_one_tab_stop(qtbot: QtBot, tmp_path: Path) -> None:
    td = device(tmp_path)
    add_slot(td, AUDITOR, "auditor")
    win = window(qtbot, td)
    sign_in(qtbot, win, AUDITOR)
    views = win.screens.currentWidget().findChildren(QAbstractItemView)
    assert views
    assert not any(view.tabKeyNavigation() for view in views)
    view = next(v for v in views if v.isVisible())
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_Tab)
    assert QApplication.focusWidget() is not view


@pytest.mark.parametrize("screen_name", ["login", "caseload", "consultation", "admin", "sync"])
def test_inputs_have_visible_labels_not_only_placeholders(
    qtbot: QtBot, tmp_path: Path, screen_name: str
) -> None:
    td = device(tmp_path)
    win = window(qtbot, td)
    root: QWidget = win
    if screen_name != "login":
        user = ADMIN if screen_name == "admin" else CLINICIAN
        if screen_name == "admin":
            add_slot(td, ADMIN, "admin")
        sign_in(qtbot, win, user)
    if screen_name == "consultation":
        ws = win.workspace
        assert isinstance(ws, ClinicalWorkspace)
        open_chart(qtbot, ws, HTML_PATIENT)
        ws.new_consultation()
        qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ConsultationForm))
    if screen_name == "sync":
        win.open_sync()
        assert win.sync_dialog is not None
        root = win.sync_dialog
    labelled = {
        label.buddy()
        for label in root.findChildren(QLabel)
        if label.buddy() is not None and label.isVisible() and label.text().strip()
    }
    inputs = [
        w
        for w in root.findChildren(QWidget)
        if isinstance(w, QLineEdit | QPlainTextEdit | QComboBox | QSpinBox)
        and w.isVisible()
        and not isinstance(w.parent(), QComboBox | QSpinBox)  # their own inner line edit
    ]
    assert inputs
    missing = [w.accessibleName() or w.objectName() for w in inputs if w not in labelled]
    assert not missing, f"no visible label for {missing}"


def test_the_status_bar_has_one_owner_and_the_newest_notice_wins(
    qtbot: QtBot, tmp_path: Path
) -> None:
    td = device(tmp_path)
    win, _ws, _session = workspace(qtbot, td)
    qtbot.waitUntil(
        lambda: (
            "not yet sent" in win.status_line.text() or "All work sent" in win.status_line.text()
        )
    )
    bar = win.statusBar()
    shown = [w for w in bar.findChildren(QWidget) if w.isVisible() and w.parent() is bar]
    assert shown == [win.status_line] or set(shown) <= {
        win.status_line,
        *bar.findChildren(QSizeGrip),
    }
    win.notify("First notice.")
    win.notify("Second notice.")
    assert win.status_line.text() == "Second notice."
    assert bar.currentMessage() == ""  # nothing painted over the line
    win.status_line._notice_expired()
    assert "Second notice." not in win.status_line.text()
    assert "sent" in win.status_line.text()


def test_a_sync_that_stopped_on_a_bug_says_what_to_do_not_bug(qtbot: QtBot, tmp_path: Path) -> None:
    outcome = SyncOutcome(None, RuntimeError("boom"), T0)
    text = sync_status_text(outcome)
    assert "bug" not in text.lower() and "boom" not in text
    assert "Sync again" in text and "call IT" in text
    failed = SyncOutcome(SyncResult(error="bug"), None, T0)
    assert "Sync again" in sync_status_text(failed)
    assert "refused part of the sync" not in sync_status_text(failed)
