"""The auditor's workspace: the local audit chain as a filterable table, with exports.

Guarantees:
- Only audit metadata is shown (time, user, action, outcome, patient id, purpose, break-glass
  reason): no clinical content anywhere, because the core's ``audit_entries`` returns none and
  this screen calls nothing else.
- Filters (action, user, patient id, break-glass only) work on the loaded entries, in memory.
- Exports are audited by the core (``export_audit``); files are written with ``atomic_write``
  (0600, atomic). CSV rows come from ``sync.audit_fhir.to_csv_rows`` (formula-safe cells).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.core.session import Session
from client.ui.qt import (
    QAbstractItemView,
    QAbstractTableModel,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    QTableView,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner
from client.ui.widgets import button, data_label, field
from policy.atomic import atomic_write
from sync.audit_entry import AuditEntry
from sync.audit_fhir import entries_from_bundle, to_csv_rows

COLUMNS = ("Time (UTC)", "User", "Action", "Outcome", "Patient id", "Purpose", "Reason")
ALL = "All actions"

Index = QModelIndex | QPersistentModelIndex


def is_break_glass(entry: AuditEntry) -> bool:
    return entry.purpose == "BTG" or entry.action == "break_glass"


class AuditTableModel(QAbstractTableModel):
    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[AuditEntry] = []

    def set_rows(self, rows: Sequence[AuditEntry]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def clear(self) -> None:
        self.set_rows([])

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role != Qt.ItemDataRole.DisplayRole or not 0 <= index.row() < len(self._rows):
            return None
        e = self._rows[index.row()]
        values = (
            e.ts[:19].replace("T", " "),
            e.user_id or "",
            e.action,
            e.outcome,
            e.patient_id or "",
            e.purpose or "",
            (e.reason_text or str(e.detail.get("reason_code", ""))) if is_break_glass(e) else "",
        )
        return values[index.column()]


class AuditWorkspace(QWidget):
    """Entries, filters, exports. Emits ``notify(text)``."""

    notify = Signal(str)

    def __init__(self, session: Session, runner: Runner) -> None:
        super().__init__()
        self.setObjectName("audit_workspace")
        self.setAccessibleName("Audit log")
        self._session = session
        self._runner = runner
        self.entries: list[AuditEntry] = []
        title = data_label("Audit log on this laptop", role="title")
        self.summary = data_label("", role="hint", wrap=True)
        self.action = QComboBox()
        self.action.setAccessibleName("Filter by action")
        self.action.setMinimumContentsLength(16)
        self.action.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.user = field("Filter by user")
        self.user.setPlaceholderText("user")
        self.patient = field("Filter by patient id")
        self.patient.setPlaceholderText("patient id")
        self.break_glass_only = QCheckBox("&Break-glass only")
        self.break_glass_only.setAccessibleName("Show break-glass entries only")
        self.refresh_button = button("&Refresh", "Reload the audit log")
        self.export_fhir = button("Export &FHIR…", "Export as FHIR AuditEvent bundle")
        self.export_csv = button("Export &CSV…", "Export as CSV")
        filters = QHBoxLayout()
        action_label = QLabel("&Action")
        action_label.setBuddy(self.action)
        filters.addWidget(action_label)
        filters.addWidget(self.action)
        filters.addWidget(self.user)
        filters.addWidget(self.patient)
        filters.addWidget(self.break_glass_only)
        filters.addStretch(1)
        filters.addWidget(self.refresh_button)
        filters.addWidget(self.export_fhir)
        filters.addWidget(self.export_csv)
        self.model = AuditTableModel(self)
        self.table = QTableView()
        self.table.setObjectName("audit_table")
        self.table.setAccessibleName("Audit entries")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addWidget(title)
        layout.addWidget(
            data_label(
                "Who did what on this laptop. No clinical content is shown here. Newest first.",
                role="hint",
            )
        )
        layout.addLayout(filters)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        self.action.currentIndexChanged.connect(self.apply_filters)
        self.user.textChanged.connect(self.apply_filters)
        self.patient.textChanged.connect(self.apply_filters)
        self.break_glass_only.toggled.connect(self.apply_filters)
        self.refresh_button.clicked.connect(self.refresh)
        self.export_fhir.clicked.connect(lambda: self._ask_export("json"))
        self.export_csv.clicked.connect(lambda: self._ask_export("csv"))
        self.refresh()

    def refresh(self) -> None:
        session = self._session
        self._runner.run(session.audit_entries, self._loaded)

    def _loaded(self, entries: list[AuditEntry]) -> None:
        self.entries = sorted(entries, key=lambda e: e.seq, reverse=True)
        current = self.action.currentText()
        self.action.blockSignals(True)
        self.action.clear()
        self.action.addItem(ALL)
        self.action.addItems(sorted({e.action for e in self.entries}))
        self.action.setCurrentText(current if current else ALL)
        self.action.blockSignals(False)
        self.apply_filters()

    def filtered(self) -> list[AuditEntry]:
        action = self.action.currentText()
        user = self.user.text().strip().casefold()
        patient = self.patient.text().strip()
        bg = self.break_glass_only.isChecked()
        return [
            e
            for e in self.entries
            if (action in ("", ALL) or e.action == action)
            and (not user or user in (e.user_id or "").casefold())
            and (not patient or patient == (e.patient_id or ""))
            and (not bg or is_break_glass(e))
        ]

    def apply_filters(self) -> None:
        rows = self.filtered()
        self.model.set_rows(rows)
        bg = sum(1 for e in self.entries if is_break_glass(e))
        self.summary.setText(
            f"{len(rows)} of {len(self.entries)} entries shown; {bg} break-glass entries in all."
        )

    def _ask_export(self, kind: str) -> None:
        suffix = "FHIR JSON (*.json)" if kind == "json" else "CSV (*.csv)"
        path, _ = QFileDialog.getSaveFileName(
            self, "Export audit log", f"audit-export.{kind}", suffix
        )
        if path:
            self.export_to(Path(path), kind)

    def export_to(self, path: Path, kind: str) -> None:
        """Export the whole chain (audited by the core) to ``path`` as ``json`` or ``csv``."""
        session = self._session

        def work() -> int:
            bundle = session.export_audit()
            if kind == "json":
                data = json.dumps(bundle, indent=1, ensure_ascii=False).encode("utf-8")
            else:
                out = io.StringIO()
                csv.writer(out).writerows(to_csv_rows(entries_from_bundle(bundle)))
                data = out.getvalue().encode("utf-8")
            atomic_write(path, data)
            entries = bundle.get("entry")
            return len(entries) if isinstance(entries, list) else 0

        self._runner.run(work, lambda n: self.notify.emit(f"Exported {n} audit entries."))
