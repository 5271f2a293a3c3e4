"""The auditor's workspace: the local audit chain as a filterable table, with exports.

Guarantees:
- Only audit metadata is shown (time, user, action, outcome, patient id, purpose, break-glass
  reason): no clinical content anywhere, because the core's ``audit_entries`` returns none and
  this screen calls nothing else.
- Filters (action, user, patient id, break-glass only) work on the loaded entries, in memory.
- The "Online (gateway)" tab (``OnlineAuditPanel``) asks the gateway for the whole site's
  audit trail; see its own guarantees.
- Exports (the local chain, or the gateway results shown) are checked, audited and written by
  the core's one writer, ``client.core.audit_export`` (0600, atomic; formula-safe CSV cells).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from client.core import audit_export, audit_online
from client.core.humanize import format_timestamp
from client.core.session import Session
from client.ui.error_boundary import explain
from client.ui.qt import (
    QAbstractItemView,
    QAbstractTableModel,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QModelIndex,
    QPersistentModelIndex,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner
from client.ui.widgets import TextRowsModel, button, data_label, field
from sync.device.audit_queries import AuditQuery
from sync.protocol.audit.entry import AuditEntry

COLUMNS = ("Time (UK)", "User", "Action", "Outcome", "Patient id", "Purpose", "Reason")
ALL = "All actions"

Index = QModelIndex | QPersistentModelIndex


def is_break_glass(entry: AuditEntry) -> bool:
    return entry.purpose == "BTG" or entry.action == "break_glass"


def local_row(e: AuditEntry) -> tuple[str, ...]:
    """The local log's row: the online row without the device (it is this laptop)."""
    row = online_row(e)
    return row[:2] + row[3:]


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
        title = data_label("Audit log", role="title")
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
        self.model = TextRowsModel(COLUMNS, self)
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
        layout.addLayout(filters)
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
        self.patient.textChanged.connect(self.apply_filters)
        self.break_glass_only.toggled.connect(self.apply_filters)
        self.refresh_button.clicked.connect(self.refresh)
        self.export_fhir.clicked.connect(lambda: self._ask_export("json"))
        self.export_csv.clicked.connect(lambda: self._ask_export("csv"))
        self.refresh()

    def scrub(self) -> None:
        """On lock: drop every row and the typed password (the workspace is then deleted)."""
        self.entries = []
        self.model.clear()
        self.online.scrub()

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
        self.model.set_rows([local_row(e) for e in rows])
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
        self._runner.run(
            lambda: audit_export.export_local(session, path, kind),
            lambda n: self.notify.emit(f"Exported {n} audit entries."),
        )


# -- the online tab: the site's audit trail at the gateway ------------------------------------

ONLINE_COLUMNS = (
    "Time (UK)",
    "User",
    "Device",
    "Action",
    "Outcome",
    "Patient id",
    "Purpose",
    "Reason",
)
CHAIN_COLUMNS = ("Device", "Last entry", "Head hash", "Last receipt", "Alerts", "Latest alert")


def online_row(e: AuditEntry) -> tuple[str, ...]:
    reason = (e.reason_text or str(e.detail.get("reason_code", ""))) if is_break_glass(e) else ""
    return (
        format_timestamp(e.ts),
        e.user_id or "",
        e.device_id,
        e.action,
        e.outcome,
        e.patient_id or "",
        e.purpose or "",
        reason,
    )


def chain_row(c: dict[str, Any]) -> tuple[str, ...]:
    alert = c["latest_alert"]
    latest = (
        ""
        if alert is None
        else f"{alert['reason']} at entry {alert['first_bad_seq']} "
        f"({format_timestamp(str(alert['raised_at']))})"
    )
    return (
        str(c["device_id"]),
        str(c["last_seq"]),
        str(c["head_hash"] or "")[:16],
        format_timestamp(str(c["last_receipt_at"])) if c["last_receipt_at"] else "never",
        str(c["alerts"]),
        latest,
    )


def _table(name: str, model: QAbstractTableModel) -> QTableView:
    table = QTableView()
    table.setObjectName(name)
    table.setAccessibleName(name.replace("_", " ").capitalize())
    table.setModel(model)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setAlternatingRowColors(True)
    table.verticalHeader().hide()
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setStretchLastSection(True)
    return table


class OnlineAuditPanel(QWidget):
    """Queries of the site's audit trail at the gateway, chain status per device, exports.

    Guarantees: every query and export runs on the runner (never on the GUI thread) through
    ``client.core.audit_online``, which re-authenticates (the password typed here, cleared as
    soon as it is used), checks the role and audits the act. Only audit metadata is shown, as
    plain text; the results are dropped by ``scrub`` on lock. Emits ``notify(text)``.
    """

    notify = Signal(str)

    def __init__(self, session: Session, runner: Runner) -> None:
        super().__init__()
        self.setObjectName("audit_online")
        self._session = session
        self._runner = runner
        self.entries: list[AuditEntry] = []
        self.patient = field("Gateway filter: patient id")
        self.patient.setPlaceholderText("patient id")
        self.user = field("Gateway filter: user")
        self.user.setPlaceholderText("user")
        self.device = field("Gateway filter: device")
        self.device.setPlaceholderText("device")
        self.since = field("Gateway filter: from date")
        self.since.setPlaceholderText("from YYYY-MM-DD")
        self.until = field("Gateway filter: to date")
        self.until.setPlaceholderText("to YYYY-MM-DD")
        self.break_glass_only = QCheckBox("Break-&glass only")
        self.break_glass_only.setAccessibleName("Gateway: break-glass entries only")
        self.out_of_hours = QCheckBox("Out of &hours")
        self.out_of_hours.setAccessibleName("Gateway: out-of-hours entries only")
        self.password = field("Your password, to search or export", password=True)
        self.password.setPlaceholderText("your password")
        self.search_button = button("&Search gateway", "Search the gateway's audit trail")
        self.export_fhir = button("Export FHIR…", "Export these results as FHIR AuditEvents")
        self.export_csv = button("Export CSV…", "Export these results as CSV")
        self.feedback = data_label("", role="hint", wrap=True)
        self.summary = data_label("", role="hint", wrap=True)
        filters = QHBoxLayout()
        for widget in (self.patient, self.user, self.device, self.since, self.until):
            filters.addWidget(widget)
        filters.addWidget(self.break_glass_only)
        filters.addWidget(self.out_of_hours)
        actions = QHBoxLayout()
        actions.addWidget(self.password)
        actions.addWidget(self.search_button)
        actions.addStretch(1)
        actions.addWidget(self.export_fhir)
        actions.addWidget(self.export_csv)
        self.model = TextRowsModel(ONLINE_COLUMNS, self)
        self.chains = TextRowsModel(CHAIN_COLUMNS, self)
        self.table = _table("gateway_audit_table", self.model)
        self.chain_table = _table("chain_status_table", self.chains)
        self.chain_table.setMaximumHeight(140)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 8, 0, 0)
        layout.addWidget(
            data_label(
                "The whole site's audit trail as uploaded to the gateway. Each search asks for "
                "your password again and is itself audited. No clinical content is shown here.",
                role="hint",
                wrap=True,
            )
        )
        layout.addLayout(filters)
        layout.addLayout(actions)
        layout.addWidget(self.feedback)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        layout.addWidget(data_label("Audit chain of each device", role="section"))
        layout.addWidget(self.chain_table)
        self.search_button.clicked.connect(self.search)
        self.password.returnPressed.connect(self.search)
        self.export_fhir.clicked.connect(lambda: self._ask_export("json"))
        self.export_csv.clicked.connect(lambda: self._ask_export("csv"))
        self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        self.search_button.setEnabled(not busy)
        self.export_fhir.setEnabled(not busy and bool(self.entries))
        self.export_csv.setEnabled(not busy and bool(self.entries))

    def scrub(self) -> None:
        self.password.clear()
        self.entries = []
        self.model.set_rows([])
        self.chains.set_rows([])
        self.summary.clear()

    def query(self) -> AuditQuery:
        """The filters as typed (``ValueError`` for a date not in YYYY-MM-DD form)."""

        def text(edit: QLineEdit) -> str | None:
            return edit.text().strip() or None

        def day(edit: QLineEdit) -> dt.date | None:
            value = text(edit)
            return None if value is None else dt.date.fromisoformat(value)

        return AuditQuery(
            patient_id=text(self.patient),
            user_id=text(self.user),
            device_id=text(self.device),
            since=day(self.since),
            until=day(self.until),
            break_glass=self.break_glass_only.isChecked(),
            out_of_hours=self.out_of_hours.isChecked(),
        )

    def _take_password(self) -> str | None:
        password = self.password.text()
        self.password.clear()
        if not password:
            self.feedback.setText("Type your password first: every search and export asks again.")
            self.password.setFocus()
            return None
        return password

    def search(self) -> None:
        try:
            query = self.query()
        except ValueError:
            self.feedback.setText("Dates are written YYYY-MM-DD, for example 2026-11-20.")
            return
        password = self._take_password()
        if password is None:
            return
        session = self._session
        self.feedback.setText("Asking the gateway…")
        self._set_busy(True)
        self._runner.run(
            lambda: audit_online.query_gateway(session, password, query),
            self._found,
            self._failed,
        )

    def _found(self, result: audit_online.OnlineAudit) -> None:
        self.entries = list(reversed(result.search.entries))  # newest first, as the laptop's
        self.model.set_rows([online_row(e) for e in self.entries])
        self.chains.set_rows([chain_row(c) for c in result.chains])
        bg = sum(1 for e in self.entries if is_break_glass(e))
        more = " Not all are shown: narrow the filters." if result.search.truncated else ""
        self.summary.setText(
            f"{len(self.entries)} entries at the gateway, newest first; {bg} break-glass; "
            f"{len(result.chains)} device chain(s).{more}"
        )
        self.feedback.clear()
        self._set_busy(False)

    def _failed(self, error: BaseException) -> None:
        self.feedback.setText(explain(error).message)
        self._set_busy(False)

    def _ask_export(self, kind: str) -> None:
        suffix = "FHIR JSON (*.json)" if kind == "json" else "CSV (*.csv)"
        path, _ = QFileDialog.getSaveFileName(
            self, "Export the gateway's audit results", f"gateway-audit.{kind}", suffix
        )
        if path:
            self.export_to(Path(path), kind)

    def export_to(self, path: Path, kind: str) -> None:
        """Write the results shown to ``path`` (``json``: FHIR Bundle, ``csv``), after the core
        has checked the password again and audited the export."""
        password = self._take_password()
        if password is None:
            return
        session, entries = self._session, list(self.entries)

        def work() -> int:
            return audit_export.export_gateway_results(session, password, entries, path, kind)

        self._set_busy(True)

        def done(n: int) -> None:
            self._set_busy(False)
            self.feedback.clear()
            self.notify.emit(f"Exported {n} gateway audit entries.")

        self._runner.run(work, done, self._failed)
