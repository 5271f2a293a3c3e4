"""Caseload and search: search-as-you-type into a table on a Qt model, keyboard first.

Guarantees:
- Typing is debounced (``DEBOUNCE_MS``); each search runs on the executor; an answer to an
  older query never replaces the answer to a newer one.
- Cells are plain strings from ``PatientSummary`` (a model's DisplayRole is never rich text);
  meaning never rests on colour: alerts read "⚠ Alerts", out-of-scope rows read "Other site".
- Keyboard: type, Down moves into the results, arrows move, Enter on a row opens it. Enter in
  the search box opens a record only when exactly one patient matches (also for a search still
  on its way); with several it moves into the results and asks the user to choose, so a
  half-typed name never opens the wrong patient.
  ``open_requested(patient_id)`` is the only way out.
- An empty query shows the site's caseload (``Session.caseload``: in-scope patients by name,
  audited by the core) under the same ordering rule, so a newer search always wins. An empty
  caseload says why: "No records yet — sync first" on a laptop that has never received
  records (``Session.never_synced``), otherwise that no patient of the site is here; both
  differ from "No patient matches" for a search.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from client.core.search import PatientSummary
from client.core.session import Session
from client.ui.qt import (
    QAbstractItemView,
    QEvent,
    QFont,
    QHeaderView,
    QKeyEvent,
    QLabel,
    QObject,
    Qt,
    QTableView,
    QTimer,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner
from client.ui.widgets import (
    Index,
    TextRowsModel,
    age_on,
    data_label,
    field,
    format_date,
    format_nhs,
)

DEBOUNCE_MS = 150
RESULT_LIMIT = 50
COLUMNS = (
    "Name",
    "Date of birth (age)",
    "Gender",
    "NHS number",
    "Prison number",
    "Site",
    "Alerts",
    "Scope",
)
GENDER_WORDS = {"male": "Male", "female": "Female", "other": "Other", "unknown": "Unknown"}
NOT_RECORDED = "Not recorded"  # the record does not say: never shown as blank
ALERT_MARK = "⚠ Alerts"
OTHER_SITE = "Other site"
EMPTY_HINT = (
    "Type a name, NHS number, prison number or date of birth (dd/mm/yyyy) to find a patient."
)
NEVER_SYNCED = (
    "No records yet — sync first. This laptop has not received any records from the gateway: "
    "connect to the health board's network and press Sync (Ctrl+Y)."
)
NONE_AT_SITE = (
    "No patients of your site are on this laptop. Sync (Ctrl+Y) to get the latest caseload; "
    "search to find a patient from another site."
)
NO_MATCH = "No patient matches. Check the spelling or try another detail."


class PatientTableModel(TextRowsModel):
    """Search hits as rows of display strings; ``patient(row)`` gives the hit behind a row."""

    def __init__(self, today: Callable[[], dt.date], parent: QObject | None = None) -> None:
        super().__init__(COLUMNS, parent)
        self._patients: list[PatientSummary] = []
        self._today = today

    def set_patients(self, hits: Sequence[PatientSummary]) -> None:
        self._patients = list(hits)
        self.set_rows([tuple(self.cell(h, c) for c in range(len(COLUMNS))) for h in hits])

    def clear(self) -> None:
        self.set_patients([])

    def patient(self, row: int) -> PatientSummary | None:
        return self._patients[row] if 0 <= row < len(self._patients) else None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.FontRole and index.column() in (0, 5):
            if self.patient(index.row()) is None:
                return None
            font = QFont()
            font.setBold(True)
            return font
        return super().data(index, role)

    def cell(self, hit: PatientSummary, column: int) -> str:
        if column == 0:
            return hit.display_name
        if column == 1:
            age = age_on(hit.birth_date, self._today())
            shown = format_date(hit.birth_date)
            if not shown:
                return NOT_RECORDED if hit.birth_date is None else hit.birth_date
            return f"{shown} ({age})" if age is not None else shown
        if column == 2:
            return GENDER_WORDS.get(hit.gender or "", hit.gender or NOT_RECORDED)
        if column == 3:
            return format_nhs(hit.nhs_number)
        if column == 4:
            return hit.prison_number or ""
        if column == 5:
            return hit.site or ""
        if column == 6:
            return ALERT_MARK if hit.has_alerts else ""
        return "" if hit.in_scope else OTHER_SITE


class CaseloadScreen(QWidget):
    """The search box and the results table. Emits ``open_requested(patient_id)``."""

    open_requested = Signal(str)

    def __init__(self, session: Session, runner: Runner, today: Callable[[], dt.date]) -> None:
        super().__init__()
        self.setObjectName("caseload_screen")
        self.setAccessibleName("Find a patient")
        self._session = session
        self._runner = runner
        self._asked = 0
        self._open_when_ready = False
        self.query = field("Search patients")
        self.query.setPlaceholderText("Name, NHS number, prison number or date of birth")
        self.query.setClearButtonEnabled(True)
        label = QLabel("&Find a patient")
        label.setBuddy(self.query)
        label.setProperty("role", "title")
        self.hint = data_label(EMPTY_HINT, role="hint", wrap=True)
        self.hint.setAccessibleName("Search status")
        self.model = PatientTableModel(today, self)
        self.table = QTableView()
        self.table.setObjectName("patient_table")
        self.table.setAccessibleName("Search results")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setDragEnabled(False)
        self.table.setAlternatingRowColors(True)
        self.table.setTabKeyNavigation(False)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        # Every column shows its whole text, the name above all (a cut name is a wrong-patient
        # risk): in a narrow window (150%) the table scrolls sideways instead of eliding.
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.setTextElideMode(Qt.TextElideMode.ElideNone)
        header.setMinimumSectionSize(90)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addWidget(label)
        layout.addWidget(self.query)
        layout.addWidget(self.hint)
        layout.addWidget(self.table, 1)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.search_now)
        self.query.textChanged.connect(self._typed)
        self.query.returnPressed.connect(self._open_from_box)
        self.query.installEventFilter(self)
        self.table.installEventFilter(self)
        self.table.doubleClicked.connect(lambda index: self._open_row(index.row()))
        self.setTabOrder(self.query, self.table)
        self.query.setFocus()
        self.search_now()  # the caseload, until something is typed

    # -- searching -------------------------------------------------------------------------

    def _typed(self, _text: str) -> None:
        self._debounce.start()

    def search_now(self) -> None:
        self._debounce.stop()
        text = self.query.text()
        self._asked += 1
        asked = self._asked
        session = self._session
        if not text.strip():
            self._open_when_ready = False
            self.hint.setText(EMPTY_HINT)
            self._runner.run(
                lambda: session.caseload(limit=RESULT_LIMIT),
                lambda rows: self._show_caseload(asked, rows),
            )
            return
        self._runner.run(
            lambda: session.search(text, limit=RESULT_LIMIT),
            lambda hits: self._show(asked, hits),
        )

    def _show_caseload(self, asked: int, rows: list[PatientSummary]) -> None:
        if asked != self._asked:
            return  # something was typed meanwhile
        self.model.set_patients(rows)
        if rows:
            more = " (the first ones; type to search)" if len(rows) >= RESULT_LIMIT else ""
            self.hint.setText(f"Your site's patients on this laptop{more}, by name. {EMPTY_HINT}")
            return
        session = self._session
        self._runner.run(session.never_synced, lambda never: self._show_empty(asked, never))

    def _show_empty(self, asked: int, never_synced: bool) -> None:
        """An empty caseload is never just an empty table: say why and what to do."""
        if asked != self._asked:
            return
        self.hint.setText(NEVER_SYNCED if never_synced else NONE_AT_SITE)

    def _show(self, asked: int, hits: list[PatientSummary]) -> None:
        if asked != self._asked:
            return  # a newer query is on its way
        self.model.set_patients(hits)
        if not hits:
            self.hint.setText(NO_MATCH)
        elif len(hits) >= RESULT_LIMIT:
            self.hint.setText(
                f"Showing the first {RESULT_LIMIT} matches. Type more to narrow the search."
            )
        else:
            outside = sum(1 for h in hits if not h.in_scope)
            extra = f" ({outside} at another site: break-glass needed)" if outside else ""
            self.hint.setText(
                f"{len(hits)} patient{'s' if len(hits) != 1 else ''} found{extra}. "
                "Press Down to choose, Enter to open."
            )
        if hits and self.table.currentIndex().row() < 0:
            self.table.selectRow(0)
        if self._open_when_ready:
            self._open_when_ready = False
            self._open_only_match()

    # -- keyboard ---------------------------------------------------------------------------

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
            key = event.key()
            if watched is self.query and key == Qt.Key.Key_Down and self.model.rowCount() > 0:
                self.table.setFocus()
                if self.table.currentIndex().row() < 0:
                    self.table.selectRow(0)
                return True
            if watched is self.table and key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                self._open_row(self.table.currentIndex().row())
                return True
            if (
                watched is self.table
                and key == Qt.Key.Key_Up
                and self.table.currentIndex().row() <= 0
            ):
                self.query.setFocus()
                return True
        return False

    def _open_from_box(self) -> None:
        if self._debounce.isActive():  # typed and pressed Enter at once: decide on the answer
            self._open_when_ready = True
            self.search_now()
            return
        self._open_only_match()

    def _open_only_match(self) -> None:
        """Open the one patient that matches; with several, move into the results to choose."""
        count = self.model.rowCount()
        if count == 1:
            self._open_row(0)
        elif count > 1:
            self.table.setFocus()
            if self.table.currentIndex().row() < 0:
                self.table.selectRow(0)
            self.hint.setText(
                f"{count} patients match. Check the date of birth and NHS number, choose with "
                "the arrow keys, then press Enter."
            )

    def _open_row(self, row: int) -> None:
        hit = self.model.patient(row)
        if hit is not None:
            self.open_requested.emit(hit.id)

    def focus_search(self) -> None:
        self.query.setFocus()
        self.query.selectAll()

    def scrub(self) -> None:
        """Drop every patient detail this screen holds (called by the lock before deletion)."""
        self._asked += 1
        self._open_when_ready = False
        self._debounce.stop()
        self.model.clear()
        self.query.clear()
