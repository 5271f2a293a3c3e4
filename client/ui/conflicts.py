"""The conflict view: a change made on this laptop met a newer change on the gateway (a 412).

Guarantees:
- Both versions are shown side by side, as plain text only (read-only plain-text editors),
  never rich text: the laptop's version ("mine") and the gateway's ("theirs"); a note's
  attachment is decoded to its text so people compare words, not base64.
- Nothing is overwritten silently: the clinician chooses "Keep mine" (queued again on top of
  the gateway's version, sent at the next sync) or "Keep theirs" (the laptop takes the
  gateway's version). The choice runs through the session on the database executor, which
  audits it; the list is reloaded afterwards.
- Listing and resolving go through ``Session.conflicts()`` and
  ``Session.resolve_conflict(conflict_id, keep)`` (role-checked and audited by the core).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from client.core.conflicts import Conflict
from client.core.session import Session
from client.ui.error_boundary import explain
from client.ui.qt import (
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    Qt,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner
from client.ui.widgets import button, data_label

MAX_RENDERED = 20_000  # characters of one version shown; a conflict is a note, not a book
SKIPPED_KEYS = {"meta", "text"}  # server bookkeeping and generated narrative (HTML) are left out


def _decoded(attachment: Mapping[str, Any]) -> str | None:
    data = attachment.get("data")
    if not isinstance(data, str):
        return None
    try:
        return base64.b64decode(data, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return None


def _lines(value: Any, path: str, out: list[str]) -> None:
    if isinstance(value, Mapping):
        if path.endswith("attachment") or "contentType" in value:
            text = _decoded(value)
            if text is not None:
                out.append(f"{path}: (text)\n{text}")
                return
        for key, item in value.items():
            if key in SKIPPED_KEYS:
                continue
            _lines(item, f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _lines(item, f"{path}[{index}]", out)
    else:
        out.append(f"{path}: {value}")


def readable(resource: Mapping[str, Any] | None) -> str:
    """A resource as plain 'field: value' lines for people (no markup is ever interpreted)."""
    if resource is None:
        return (
            "The gateway no longer holds this record for this site (it was deleted, or the "
            "patient moved to another site)."
        )
    out: list[str] = []
    _lines(resource, "", out)
    text = "\n".join(out)
    return text if len(text) <= MAX_RENDERED else text[:MAX_RENDERED] + "\n… (shortened)"


def _plain_view(name: str) -> QPlainTextEdit:
    view = QPlainTextEdit()
    view.setReadOnly(True)
    view.setAccessibleName(name)
    view.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
    return view


class ConflictsDialog(QDialog):
    """The open conflicts; both versions side by side; keep mine / keep theirs."""

    resolved = Signal(str)  # "mine" | "theirs"

    def __init__(self, session: Session, runner: Runner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("conflicts_dialog")
        self.setWindowTitle("Sync conflicts")
        self.setAccessibleName("Sync conflicts")
        self.resize(1100, 620)
        self._session = session
        self._runner = runner
        self.items: list[Conflict] = []
        self.listing = QListWidget()
        self.listing.setAccessibleName("Conflicts")
        self.listing.setMaximumHeight(120)
        self.mine = _plain_view("Your version, on this laptop")
        self.theirs = _plain_view("The gateway's version")
        self.feedback = data_label("", role="hint", wrap=True)
        self.keep_mine = button("Keep &mine", "Keep my version")
        self.keep_theirs = button("Keep &theirs", "Keep the gateway's version")
        closer = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        closer.rejected.connect(self.reject)
        grid = QGridLayout()
        grid.addWidget(data_label("Mine — on this laptop, not yet accepted", role="section"), 0, 0)
        grid.addWidget(data_label("Theirs — on the gateway now", role="section"), 0, 1)
        grid.addWidget(self.mine, 1, 0)
        grid.addWidget(self.theirs, 1, 1)
        grid.addWidget(self.keep_mine, 2, 0)
        grid.addWidget(self.keep_theirs, 2, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(data_label("Someone changed these records on the gateway", role="title"))
        layout.addWidget(
            data_label(
                "Your change was not applied because the gateway already had a newer version. "
                "Compare both and choose which one to keep; nothing is overwritten until you "
                "choose.",
                wrap=True,
            )
        )
        layout.addWidget(self.listing)
        layout.addLayout(grid)
        layout.addWidget(self.feedback)
        layout.addWidget(closer)
        self.listing.currentRowChanged.connect(self._selected)
        self.keep_mine.clicked.connect(lambda: self.resolve("mine"))
        self.keep_theirs.clicked.connect(lambda: self.resolve("theirs"))
        self._enable(False)
        self.reload()

    def _enable(self, enabled: bool) -> None:
        self.keep_mine.setEnabled(enabled)
        self.keep_theirs.setEnabled(enabled)

    def reload(self) -> None:
        self._runner.run(self._session.conflicts, self._loaded)

    def _loaded(self, conflicts: list[Conflict]) -> None:
        self.items = list(conflicts)
        self.listing.clear()
        for conflict in self.items:
            item = QListWidgetItem(
                f"{conflict.resource_type} · patient {conflict.patient_id or 'unknown'} · "
                f"since {str(conflict.created_at)[:16]}"
            )
            item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
            self.listing.addItem(item)
        if self.items:
            self.listing.setCurrentRow(0)
            self.feedback.setText(f"{len(self.items)} conflict(s) to resolve.")
        else:
            self.mine.clear()
            self.theirs.clear()
            self._enable(False)
            self.feedback.setText("No conflicts left. Everything else syncs as usual.")

    def current(self) -> Conflict | None:
        row = self.listing.currentRow()
        return self.items[row] if 0 <= row < len(self.items) else None

    def _selected(self, _row: int) -> None:
        conflict = self.current()
        if conflict is None:
            return
        self.mine.setPlainText(readable(conflict.local_body))
        self.theirs.setPlainText(readable(conflict.server_body))
        self._enable(True)
        # Keeping mine needs the gateway's record to exist, to go on top of it.
        self.keep_mine.setEnabled(conflict.server_body is not None)

    def resolve(self, keep: str) -> None:
        conflict, session = self.current(), self._session
        if conflict is None:
            return
        self._enable(False)
        conflict_id = int(conflict.id)
        self._runner.run(
            lambda: session.resolve_conflict(conflict_id, keep),
            lambda _r: self._resolved(keep),
            self._failed,
        )

    def _resolved(self, keep: str) -> None:
        self.resolved.emit(keep)
        self.feedback.setText(
            "Kept your version: it goes to the gateway with the next sync."
            if keep == "mine"
            else "Kept the gateway's version on this laptop."
        )
        self.reload()

    def _failed(self, error: BaseException) -> None:
        self._enable(True)
        self.feedback.setText(explain(error).message)
