"""Helpers for the screen tests: a real provisioned device, a real window, real sign-in.

Only the clocks are fake (outside the product). Every core call still runs on the window's
executor; reads that tests make of the vault go through the same executor, because the
SQLCipher connection belongs to its worker thread.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pytestqt.qtbot import QtBot

from client.core import accounts
from client.core.kdf import FLOOR
from client.core.session import Session
from client.ui.chart_view import ChartScreen
from client.ui.clinical import ClinicalWorkspace
from client.ui.main_window import MainWindow
from client.ui.qt import (
    QAbstractItemView,
    QApplication,
    QEvent,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    Qt,
    QWidget,
)
from sync.gateway.seed.generator import generate
from tests.support.device import (
    CLINICIAN,
    OTHER_SITE,
    SITE,
    ProvisionedDevice,
    load_records,
    policy_envelope,
    provision,
)
from tests.support.fhir import allergy, flag, meta, nhs_number, patient

HTML = "<b>Bold</b><script>alert(1)</script>"
HTML_PATIENT = "pt-html-1"
HTML_FAMILY = f"{HTML}Zephyrine"  # unique, so tests can find it anywhere
OUTSIDE_PATIENT = "pt-outside-1"
OUTSIDE_FAMILY = "Quennell"
__all__ = ["CLINICIAN", "OTHER_SITE", "SITE", "ProvisionedDevice"]


def note(rid: str, pid: str, text: str, when: str = "2026-05-20T10:00:00+00:00") -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": rid,
        "meta": meta(),
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "description": "Progress note",
        "subject": {"reference": f"Patient/{pid}"},
        "date": when,
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(text.encode()).decode(),
                }
            }
        ],
    }


def records() -> list[dict[str, Any]]:
    """Synthetic patients plus one with HTML in the name and a note, and one to transfer."""
    seeded = [
        r for r in generate(sites=2, patients=10, seed=7) if r["resourceType"] != "Organization"
    ]
    extra = [
        patient(HTML_PATIENT, HTML_FAMILY, ["Ada"], nhs=nhs_number(18), prison="A1234BC"),
        flag("fl-html-1", HTML_PATIENT, "Violence risk: two staff present"),
        allergy("al-html-1", HTML_PATIENT, "Penicillin"),
        note("doc-html-1", HTML_PATIENT, f"Note says {HTML}"),
        patient(OUTSIDE_PATIENT, OUTSIDE_FAMILY, ["Ivo"], prison="B2345CD"),
    ]
    return seeded + extra


def device(
    tmp_path: Path,
    *,
    role: str = "clinician",
    user: tuple[str, str] = CLINICIAN,
    load: bool = True,
    transfer: bool = False,
    **policy: Any,
) -> ProvisionedDevice:
    td = provision(
        tmp_path / "data",
        role=role,
        user=user,
        policy=policy_envelope(**policy) if policy else None,
    )
    if load:
        load_records(td.device, records(), user=user)
    if transfer:
        transfer_outside_patient(td)
    return td


def transfer_outside_patient(td: ProvisionedDevice) -> None:
    """Write unsent work for OUTSIDE_PATIENT, then move them to another site (as a sync would).

    Retention keeps a transferred patient only while their work is unsent, so this is how an
    out-of-scope patient is on the laptop at all; opening them needs break-glass.
    """
    session = Session.login(td.device, *CLINICIAN)
    session.write_consultation(
        OUTSIDE_PATIENT, vitals=[], note_text="Seen on the wing.", plan_text="Review."
    )
    session.lock()
    moved = patient(
        OUTSIDE_PATIENT,
        OUTSIDE_FAMILY,
        ["Ivo"],
        prison="B2345CD",
        site=OTHER_SITE,
        version="2",
        updated="2026-11-02T10:00:00+00:00",
    )
    load_records(td.device, [moved])


class IdleClock:
    """The boot clock the idle watcher reads, moved by tests."""

    def __init__(self) -> None:
        self.seconds = 5000.0

    def __call__(self) -> float:
        return self.seconds


def disk_is_fine(_policy: Any, _data_dir: Path) -> list[Any]:
    """The test machine's own disk is outside the product (its encryption is tested with a
    fake sysfs tree in test_conditional_launch.py)."""
    return []


def window(
    qtbot: QtBot,
    td: ProvisionedDevice,
    idle: Callable[[], float] | None = None,
    **options: Any,
) -> MainWindow:
    options.setdefault("launch_check", disk_is_fine)
    win = MainWindow(td.device, idle_clock=idle or IdleClock(), wall_clock=td.clocks.now, **options)
    # The OS focus is outside the product: the offscreen platform can leave no focus window for
    # a while after a dialog closes, so tests say "ours" unless they test focus loss.
    win.app_state = lambda: Qt.ApplicationState.ApplicationActive
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    return win


def sign_in(qtbot: QtBot, win: MainWindow, user: tuple[str, str] = CLINICIAN) -> Session:
    screen = win.login_screen
    assert screen is not None
    screen.user.setText(user[0])
    screen.password.setText(user[1])
    screen.submit()
    qtbot.waitUntil(lambda: win.session is not None, timeout=15000)
    assert win.session is not None
    return win.session


def workspace(
    qtbot: QtBot,
    td: ProvisionedDevice,
    idle: Callable[[], float] | None = None,
    user: tuple[str, str] = CLINICIAN,
) -> tuple[MainWindow, ClinicalWorkspace, Session]:
    """A shown window, signed in, on the clinical workspace."""
    win = window(qtbot, td, idle)
    session = sign_in(qtbot, win, user)
    ws = win.workspace
    assert isinstance(ws, ClinicalWorkspace)
    return win, ws, session


def open_chart(qtbot: QtBot, ws: ClinicalWorkspace, pid: str) -> ChartScreen:
    """Open ``pid`` from the workspace and wait for its chart."""
    ws.open_patient(pid)
    qtbot.waitUntil(lambda: isinstance(ws.patient_screen, ChartScreen), timeout=5000)
    screen = ws.patient_screen
    assert isinstance(screen, ChartScreen)
    return screen


def on_worker(win: MainWindow, work: Callable[[], Any]) -> Any:
    """Run ``work`` on the window's executor (the vault's thread) and wait for it."""
    return win.executor.submit(work).result(timeout=30)


def audit_actions(win: MainWindow, session: Session) -> list[str]:
    def read() -> list[str]:
        with session._act() as conn:  # raw read: the clinician role may not list the audit
            return [e.action for e in session._audit.entries(conn)]

    return list(on_worker(win, read))


def flush_deletes() -> None:
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    QApplication.processEvents()


def widget_texts(widgets: Iterable[QWidget] | None = None) -> list[str]:
    """Every text any live widget shows: labels, fields, editors, item views, tooltips, titles."""
    texts: list[str] = []
    for w in widgets if widgets is not None else QApplication.allWidgets():
        texts.extend((w.windowTitle(), w.toolTip(), w.accessibleName()))
        if isinstance(w, QLabel | QLineEdit):
            texts.append(w.text())
        elif isinstance(w, QPlainTextEdit):
            texts.append(w.toPlainText())
        elif isinstance(w, QAbstractItemView) and w.model() is not None:
            model = w.model()
            for row in range(model.rowCount()):
                for col in range(model.columnCount()):
                    value = model.data(model.index(row, col))
                    texts.append(value if isinstance(value, str) else "")
    return texts


def add_slot(td: ProvisionedDevice, user: tuple[str, str], role: str) -> None:
    """Give ``user`` a key slot (what an admin or an online first login does)."""
    unlocked = accounts.login(td.device, *CLINICIAN)
    td.device.header.add_slot(user[0], role, user[1], unlocked.dek, FLOOR)
