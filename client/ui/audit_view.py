"""The auditor's workspace: the local audit chain as a filterable table, with exports.

Guarantees:
- Only audit metadata is shown (time, user, action, outcome, patient id, purpose, break-glass
  reason): no clinical content anywhere, because the core's ``audit_entries`` and
  ``audit_search`` return none and this screen calls nothing else.
- Actions, outcomes and purposes read as plain words (``client.core.audit_words``: "Opened
  record", "Break-glass"), never as codes, in the table and in the action list.
- "Who opened patient X": a patient (name, NHS number, date of birth, id) and From/To days
  (UK local) run ``Session.audit_search`` on the runner, which resolves the patient through
  the vault's patient index and audits the search; ``search(patient_text, since, until)`` is
  the same for a script. The action, user and break-glass filters then work in memory.
- Exports write exactly the rows shown (``audit_export.export_entries``, audited with their
  count; 0600, atomic; formula-safe CSV cells) and the status sentence names the full path.
- The "Online (gateway)" tab is ``OnlineAuditPanel`` (``client.ui.audit_online_view``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from client.core import audit_export
from client.core.audit_search import AuditSearchResult
from client.core.audit_words import action_choices
from client.core.session import Session
from client.ui.audit_filters import PatientDaysFilter
from client.ui.audit_online_view import CHAIN_COLUMNS as CHAIN_COLUMNS
from client.ui.audit_online_view import ONLINE_COLUMNS as ONLINE_COLUMNS
from client.ui.audit_online_view import OnlineAuditPanel as OnlineAuditPanel
from client.ui.audit_online_view import audit_table, is_break_glass, online_row
from client.ui.error_boundary import explain
from client.ui.qt import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QTabWidget,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner
from client.ui.widgets import TextRowsModel, button, data_label, field
from sync.protocol.audit.entry import AuditEntry

COLUMNS = ("Time (UK)", "User", "Action", "Outcome", "Patient id", "Purpose", "Reason")
ALL = "All actions"

__all__ = [
    "ALL",
    "CHAIN_COLUMNS",
    "COLUMNS",
    "ONLINE_COLUMNS",
    "AuditWorkspace",
    "OnlineAuditPanel",
    "local_row",
]


def local_row(e: AuditEntry) -> tuple[str, ...]:
    """The local log's row: the online row without the device (it is this laptop)."""
    row = online_row(e)
    return row[:2] + row[3:]


def exported_sentence(count: int, path: Path) -> str:
    return f"Exported {count} audit entries to {path.resolve()}."


class AuditWorkspace(QWidget):
    """Entries, a patient and days to search, filters, exports. Emits ``notify(text)``."""

    notify = Signal(str)

    def __init__(self, session: Session, runner: Runner) -> None:
        super().__init__()
        self.setObjectName("audit_workspace")
        self.setAccessibleName("Audit log")
        self._session = session
        self._runner = runner
        self.entries: list[AuditEntry] = []
        self.searched: AuditSearchResult | None = None  # None: no patient/day search applied
        title = data_label("Audit log", role="title")
        self.summary = data_label("", role="hint", wrap=True)
        self.feedback = data_label("", role="hint", wrap=True)
        self.feedback.setObjectName("audit_feedback")
        self.finder = PatientDaysFilter("audit", ("&Patient", "Fro&m", "&To"))
        self.patient = self.finder.patient
        self.find_button = button("F&ind", "Find this patient's entries between these days")
        self.find_button.setObjectName("audit_find")
        self.show_all = button("Cl&ear", "Clear the patient and days: show every entry")
        self.action = QComboBox()
        self.action.setObjectName("audit_action")
        self.action.setAccessibleName("Filter by action")
        self.action.setMinimumContentsLength(16)
        self.action.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.user = field("Filter by user")
        self.user.setObjectName("audit_user")
        self.break_glass_only = QCheckBox("&Break-glass only")
        self.break_glass_only.setAccessibleName("Show break-glass entries only")
        self.refresh_button = button("&Refresh", "Reload the audit log")
        self.export_fhir = button("Export &FHIR…", "Export the rows shown as FHIR AuditEvents")
        self.export_csv = button("Export &CSV…", "Export the rows shown as CSV")
        finding = QHBoxLayout()
        finding.addWidget(self.finder)
        finding.addWidget(self.find_button)
        finding.addWidget(self.show_all)
        finding.addStretch(1)
        filters = QHBoxLayout()
        action_label = QLabel("&Action")
        action_label.setBuddy(self.action)
        user_label = QLabel("&User")
        user_label.setBuddy(self.user)
        for widget in (action_label, self.action, user_label, self.user, self.break_glass_only):
            filters.addWidget(widget)
        filters.addStretch(1)
        filters.addWidget(self.refresh_button)
        filters.addWidget(self.export_fhir)
        filters.addWidget(self.export_csv)
        self.model = TextRowsModel(COLUMNS, self)
        self.table = audit_table("audit_table", self.model)
        self.table.setAccessibleName("Audit entries")
        local = QWidget()
        local.setObjectName("audit_local")
        layout = QVBoxLayout(local)
        layout.setContentsMargins(0, 8, 0, 0)
        layout.addWidget(
            data_label(
                "Who did what on this laptop. No clinical content is shown here. Newest first.",
                role="hint",
            )
        )
        layout.addLayout(finding)
        layout.addLayout(filters)
        layout.addWidget(self.feedback)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        self.online = OnlineAuditPanel(session, runner)
        self.online.notify.connect(self.notify)
        self.tabs = QTabWidget()
        self.tabs.setAccessibleName("Audit sources")
        self.tabs.addTab(local, "&On this laptop")
        self.tabs.addTab(self.online, "O&nline (gateway)")
        outer = QVBoxLayout(self)
        outer.setContentsMargins(16, 12, 16, 12)
        outer.addWidget(title)
        outer.addWidget(self.tabs, 1)
        self.action.currentIndexChanged.connect(self.apply_filters)
        self.user.textChanged.connect(self.apply_filters)
        self.break_glass_only.toggled.connect(self.apply_filters)
        self.finder.submitted.connect(self.run_search)
        self.find_button.clicked.connect(self.run_search)
        self.show_all.clicked.connect(self._show_all)
        self.refresh_button.clicked.connect(self.refresh)
        self.export_fhir.clicked.connect(lambda: self._ask_export("json"))
        self.export_csv.clicked.connect(lambda: self._ask_export("csv"))
        self.refresh()

    def scrub(self) -> None:
        """On lock: drop every row and the typed password (the workspace is then deleted)."""
        self.entries = []
        self.searched = None
        self.model.clear()
        self.finder.clear()
        self.online.scrub()

    def refresh(self) -> None:
        session = self._session
        self._runner.run(session.audit_entries, self._loaded)

    def _loaded(self, entries: list[AuditEntry]) -> None:
        self.entries = sorted(entries, key=lambda e: e.seq, reverse=True)
        current = self.action.currentData()
        self.action.blockSignals(True)
        self.action.clear()
        self.action.addItem(ALL, "")
        for words, code in action_choices({e.action for e in self.entries}):
            self.action.addItem(words, code)
        found = self.action.findData(current) if current else 0
        self.action.setCurrentIndex(max(found, 0))
        self.action.blockSignals(False)
        if self.searched is not None:
            self.run_search()  # a search in force is run again on the fresh chain
        else:
            self.apply_filters()

    # -- "who opened patient X last week" ---------------------------------------------------

    def search(self, patient_text: str, since: dt.date | None, until: dt.date | None) -> None:
        """Fill the patient and days and run the search (for people, the Find button)."""
        self.finder.set_values(patient_text, since, until)
        self.run_search()

    def run_search(self) -> None:
        patient_text = self.finder.patient_text()
        since, until = self.finder.days()
        if not patient_text and since is None and until is None:
            self._show_all()
            return
        session = self._session
        self.find_button.setEnabled(False)
        self.feedback.setText("Searching…")
        self._runner.run(
            lambda: session.audit_search(patient_text, since, until), self._found, self._failed
        )

    def _found(self, result: AuditSearchResult) -> None:
        self.find_button.setEnabled(True)
        self.searched = result
        if result.patient_ids is not None and not result.patient_ids:
            self.feedback.setText(
                "No patient on this laptop matches. Check the spelling, the NHS number or the "
                "date of birth."
            )
        else:
            self.feedback.clear()
        self.apply_filters()

    def _failed(self, error: BaseException) -> None:
        self.find_button.setEnabled(True)
        self.feedback.setText(explain(error).message)

    def _show_all(self) -> None:
        self.finder.clear()
        self.searched = None
        self.feedback.clear()
        self.apply_filters()

    # -- the table ---------------------------------------------------------------------------

    def filtered(self) -> list[AuditEntry]:
        """The rows shown, newest first: the search (if any), then action, user, break-glass."""
        action = self.action.currentData()
        user = self.user.text().strip().casefold()
        bg = self.break_glass_only.isChecked()
        if self.searched is None:
            source = self.entries
        else:
            source = sorted(self.searched.entries, key=lambda e: e.seq, reverse=True)
        return [
            e
            for e in source
            if (not action or e.action == action)
            and (not user or user in (e.user_id or "").casefold())
            and (not bg or is_break_glass(e))
        ]

    def apply_filters(self) -> None:
        rows = self.filtered()
        self.model.set_rows([local_row(e) for e in rows])
        bg = sum(1 for e in self.entries if is_break_glass(e))
        self.summary.setText(
            f"{len(rows)} of {len(self.entries)} entries shown; {bg} break-glass entries in all."
        )
        self.export_fhir.setEnabled(bool(rows))
        self.export_csv.setEnabled(bool(rows))

    def _ask_export(self, kind: str) -> None:
        suffix = "FHIR JSON (*.json)" if kind == "json" else "CSV (*.csv)"
        path, _ = QFileDialog.getSaveFileName(
            self, "Export audit log", f"audit-export.{kind}", suffix
        )
        if path:
            self.export_to(Path(path), kind)

    def export_to(self, path: Path, kind: str) -> None:
        """Export exactly the rows shown (audited by the core) to ``path`` as ``json``/``csv``."""
        session, entries = self._session, self.filtered()
        self._runner.run(
            lambda: audit_export.export_entries(session, entries, path, kind),
            lambda n: self._exported(n, path),
            self._failed,
        )

    def _exported(self, count: int, path: Path) -> None:
        sentence = exported_sentence(count, path)
        self.feedback.setText(sentence)
        self.notify.emit(sentence)
