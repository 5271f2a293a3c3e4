"""The auditor's "Online (gateway)" tab: the whole site's audit trail at the gateway.

Guarantees:
- Every query and export runs on the runner (never on the GUI thread) through
  ``client.core.audit_online``, which re-authenticates, checks the role and audits the act.
- One password per auditor session of a few minutes: the password field is asked only when the
  core holds no re-authentication from the last ``REAUTH_WINDOW_SECONDS`` (``Session.reauth``,
  memory only, forgotten on lock). The typed password is cleared as soon as it is used.
- "Who opened patient X": the patient (name, NHS number, date of birth, id) is resolved on the
  laptop and sent to the gateway's patient filter; From/To are UK local days.
  ``search(patient_text, since, until)`` does the same for a script.
- Actions, outcomes and purposes read as plain words (``client.core.audit_words``).
- Only audit metadata is shown, as plain text; ``scrub`` drops the results on lock.
- Exports write exactly the rows shown and the status sentence names the full path.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from client.core import audit_export, audit_online
from client.core.audit_reauth import REAUTH_WINDOW_SECONDS
from client.core.audit_words import action_words, outcome_words, purpose_words
from client.core.humanize import format_timestamp
from client.core.note_filing import HELD_OTHERWISE, HELD_REASONS
from client.core.session import Session
from client.ui.audit_filters import PatientDaysFilter
from client.ui.error_boundary import explain
from client.ui.qt import (
    QAbstractItemView,
    QAbstractTableModel,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QTableView,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner
from client.ui.widgets import TextRowsModel, button, data_label, field
from sync.device.audit_queries import AuditQuery
from sync.protocol.audit.entry import AuditEntry

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
NOT_FILED_COLUMNS = ("Patient", "Record", "State", "Why", "Since")
NOT_FILED_HEAD = "Notes not filed in the health record"
MINUTES = REAUTH_WINDOW_SECONDS // 60


def is_break_glass(entry: AuditEntry) -> bool:
    return entry.purpose == "BTG" or entry.action == "break_glass"


def online_row(e: AuditEntry) -> tuple[str, ...]:
    reason = (e.reason_text or str(e.detail.get("reason_code", ""))) if is_break_glass(e) else ""
    return (
        format_timestamp(e.ts),
        e.user_id or "",
        e.device_id,
        action_words(e.action),
        outcome_words(e.outcome),
        e.patient_id or "",
        purpose_words(e.purpose),
        reason,
    )


def chain_row(c: dict[str, Any]) -> tuple[str, ...]:
    """One device's audit chain; its latest alert names the first bad entry where there is one
    (a chain break), and no entry where the alert is about the device (``device_wiped``)."""
    alert = c["latest_alert"]
    latest = ""
    if alert is not None:
        seq = alert.get("first_bad_seq")
        where = "" if seq is None else f" at entry {seq}"
        latest = f"{alert['reason']}{where} ({format_timestamp(str(alert['raised_at']))})"
    return (
        str(c["device_id"]),
        str(c["last_seq"]),
        str(c["head_hash"] or "")[:16],
        format_timestamp(str(c["last_receipt_at"])) if c["last_receipt_at"] else "never",
        str(c["alerts"]),
        latest,
    )


def not_filed_row(n: dict[str, Any]) -> tuple[str, ...]:
    """One note the gateway holds back: held (the reason in words, IT acts, then ``upstream
    retry``) or in conflict (the clinician who wrote it resolves it on the laptop)."""
    if n["state"] == "conflict":
        state, why = "Conflict", "the health record changed it too: the clinician resolves it"
    else:
        state, why = "Held", HELD_REASONS.get(str(n["reason"]), HELD_OTHERWISE)
    since = format_timestamp(str(n["since"])) if n["since"] else "time not recorded"
    return (
        str(n["patient_id"] or "no patient"),
        f"{n['type']}/{n['id']} v{n['version']}",
        state,
        why,
        since,
    )


def audit_table(name: str, model: QAbstractTableModel) -> QTableView:
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


def fit_rows(table: QTableView, most_rows: int = 4) -> None:
    """Height for its rows (at least one, at most ``most_rows``; more scroll), so short lists
    leave the room to the site's audit trail and every section stays on a small screen."""
    rows = max(1, min(most_rows, table.model().rowCount()))
    height = (
        table.horizontalHeader().sizeHint().height()
        + rows * table.verticalHeader().defaultSectionSize()
    )
    table.setFixedHeight(height + 2 * table.frameWidth() + 2)


class OnlineAuditPanel(QWidget):
    """Queries of the site's audit trail at the gateway, chain status per device, exports.
    Emits ``notify(text)``."""

    notify = Signal(str)

    def __init__(self, session: Session, runner: Runner) -> None:
        super().__init__()
        self.setObjectName("audit_online")
        self._session = session
        self._runner = runner
        self.entries: list[AuditEntry] = []
        self.finder = PatientDaysFilter("gateway", ("&Patient", "Fro&m", "&To"))
        self.patient = self.finder.patient
        self.user = field("Gateway filter: user")
        self.user.setObjectName("gateway_user")
        self.device = field("Gateway filter: device")
        self.device.setObjectName("gateway_device")
        self.break_glass_only = QCheckBox("Break-&glass only")
        self.break_glass_only.setAccessibleName("Gateway: break-glass entries only")
        self.out_of_hours = QCheckBox("Out of &hours")
        self.out_of_hours.setAccessibleName("Gateway: out-of-hours entries only")
        self.password = field("Your password, to search or export", password=True)
        self.password.setObjectName("gateway_password")
        self.search_button = button("&Search gateway", "Search the gateway's audit trail")
        self.export_fhir = button("Export FHIR…", "Export these results as FHIR AuditEvents")
        self.export_csv = button("Export CSV…", "Export these results as CSV")
        self.feedback = data_label("", role="hint", wrap=True)
        self.summary = data_label("", role="hint", wrap=True)
        finding = QHBoxLayout()
        finding.addWidget(self.finder)
        finding.addStretch(1)
        filters = QHBoxLayout()
        for text, widget in (("&User", self.user), ("&Device", self.device)):
            label = QLabel(text)
            label.setBuddy(widget)
            filters.addWidget(label)
            filters.addWidget(widget)
        filters.addWidget(self.break_glass_only)
        filters.addWidget(self.out_of_hours)
        filters.addStretch(1)
        actions = QHBoxLayout()
        self.password_label = QLabel("Passwo&rd")
        self.password_label.setBuddy(self.password)
        actions.addWidget(self.password_label)
        actions.addWidget(self.password)
        actions.addWidget(self.search_button)
        actions.addStretch(1)
        actions.addWidget(self.export_fhir)
        actions.addWidget(self.export_csv)
        self.model = TextRowsModel(ONLINE_COLUMNS, self)
        self.chains = TextRowsModel(CHAIN_COLUMNS, self)
        self.table = audit_table("gateway_audit_table", self.model)
        self.chain_table = audit_table("chain_status_table", self.chains)
        self.not_filed = TextRowsModel(NOT_FILED_COLUMNS, self)
        self.not_filed_table = audit_table("not_filed_table", self.not_filed)
        self.not_filed_summary = data_label("", wrap=True)
        fit_rows(self.chain_table)
        fit_rows(self.not_filed_table)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 8, 0, 0)
        layout.addWidget(
            data_label(
                "The whole site's audit trail as uploaded to the gateway. Your password is "
                f"asked once every {MINUTES} minutes; every search is itself audited. No "
                "clinical content is shown here.",
                role="hint",
                wrap=True,
            )
        )
        layout.addLayout(finding)
        layout.addLayout(filters)
        layout.addLayout(actions)
        layout.addWidget(self.feedback)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        layout.addWidget(data_label("Audit chain of each device", role="section"))
        layout.addWidget(self.chain_table)
        layout.addWidget(data_label(NOT_FILED_HEAD, role="section"))
        layout.addWidget(self.not_filed_summary)
        layout.addWidget(self.not_filed_table)
        self.search_button.clicked.connect(self.run_search)
        self.password.returnPressed.connect(self.run_search)
        self.finder.submitted.connect(self.run_search)
        self.export_fhir.clicked.connect(lambda: self._ask_export("json"))
        self.export_csv.clicked.connect(lambda: self._ask_export("csv"))
        self._set_busy(False)

    def needs_password(self) -> bool:
        """True unless the password was proved within the last few minutes."""
        return self._session.reauth.token() is None

    def _set_busy(self, busy: bool) -> None:
        self.search_button.setEnabled(not busy)
        self.export_fhir.setEnabled(not busy and bool(self.entries))
        self.export_csv.setEnabled(not busy and bool(self.entries))

    def scrub(self) -> None:
        self.password.clear()
        self.entries = []
        self.model.set_rows([])
        self.chains.set_rows([])
        self.not_filed.set_rows([])
        self.not_filed_summary.clear()
        self.summary.clear()
        self.finder.clear()

    def query(self) -> AuditQuery:
        """The user, device and flag filters as typed (the patient and days go separately)."""

        def text(edit: QLineEdit) -> str | None:
            return edit.text().strip() or None

        return AuditQuery(
            user_id=text(self.user),
            device_id=text(self.device),
            break_glass=self.break_glass_only.isChecked(),
            out_of_hours=self.out_of_hours.isChecked(),
        )

    def _take_password(self) -> str | bool | None:
        """The typed password (cleared), None when none is needed, False when one is missing."""
        password = self.password.text()
        self.password.clear()
        if password:
            return password
        if not self.needs_password():
            return None
        self.feedback.setText(
            f"Type your password first: it is asked once every {MINUTES} minutes."
        )
        self.password.setFocus()
        return False

    def search(
        self,
        patient_text: str | None = None,
        since: dt.date | None = None,
        until: dt.date | None = None,
    ) -> None:
        """Fill the patient and days and search the gateway (for people, the Search button);
        with no patient text, the fields are searched as they are."""
        if patient_text is not None:
            self.finder.set_values(patient_text, since, until)
        self.run_search()

    def run_search(self) -> None:
        query = self.query()
        patient_text = self.finder.patient_text()
        since, until = self.finder.days()
        password = self._take_password()
        if password is False:
            return
        session, typed = self._session, password if isinstance(password, str) else None
        self.feedback.setText("Asking the gateway…")
        self._set_busy(True)
        self._runner.run(
            lambda: audit_online.query_gateway(
                session, typed, query, patient_text=patient_text, since=since, until=until
            ),
            self._found,
            self._failed,
        )

    def _found(self, result: audit_online.OnlineAudit) -> None:
        self.entries = list(reversed(result.search.entries))  # newest first, as the laptop's
        self.model.set_rows([online_row(e) for e in self.entries])
        self.chains.set_rows([chain_row(c) for c in result.chains])
        notes = result.not_filed
        self.not_filed.set_rows([not_filed_row(n) for n in notes or []])
        fit_rows(self.chain_table)
        fit_rows(self.not_filed_table)
        if notes is None:
            self.not_filed_summary.setText("This gateway does not list them.")
        elif not notes:
            self.not_filed_summary.setText(
                "None held or in conflict (notes on their way up are not listed)."
            )
        else:
            self.not_filed_summary.setText(
                f"{len(notes)} note(s) held or in conflict, oldest first; IT sees the same, "
                "with the health record's own words, in: gatehouse-gateway upstream status."
            )
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
        if self.needs_password():
            self.password.setFocus()

    def _ask_export(self, kind: str) -> None:
        suffix = "FHIR JSON (*.json)" if kind == "json" else "CSV (*.csv)"
        path, _ = QFileDialog.getSaveFileName(
            self, "Export the gateway's audit results", f"gateway-audit.{kind}", suffix
        )
        if path:
            self.export_to(Path(path), kind)

    def export_to(self, path: Path, kind: str) -> None:
        """Write exactly the results shown to ``path`` (``json``: FHIR Bundle, ``csv``), after
        the core has checked the re-authentication and audited the export."""
        password = self._take_password()
        if password is False:
            return
        session, entries = self._session, list(self.entries)
        typed = password if isinstance(password, str) else None

        def work() -> int:
            return audit_export.export_gateway_results(session, typed, entries, path, kind)

        self._set_busy(True)

        def done(n: int) -> None:
            self._set_busy(False)
            sentence = f"Exported {n} gateway audit entries to {path.resolve()}."
            self.feedback.setText(sentence)
            self.notify.emit(sentence)

        self._runner.run(work, done, self._failed)
