"""The conflict view: a change made on this laptop met a newer change on the gateway (a 412).

Guarantees:
- The patient's banner is at the top, so the clinician knows whose record it is.
- Both versions are shown side by side in clinical words (``client.core.conflict_words``):
  "Consultation note", "Blood pressure 120/80 mmHg", the note's text; never a field path, a
  resource id or a code. Each side names its author ("unknown author" when the record does
  not say) and its time in UK local time. Everything is plain text (read-only plain-text
  views and ``data_label``), never rich text.
- Nothing is discarded without asking: "Keep mine" (the gateway's words are replaced at the
  next sync) and "Keep theirs" (the laptop's words are deleted) each open a confirmation that
  says whose words go; its default button, and Esc, is the safe "Go back", which changes
  nothing. Only the discarding button resolves, through ``Session.resolve_conflict`` on the
  database executor, which audits it; the list is reloaded afterwards.
- Keyboard: every action is reachable by Tab and Enter (the read-only views pass Tab on), and
  by its mnemonic (Alt+M keep mine, Alt+T keep theirs; Alt+G go back, Alt+D / Alt+R confirm).
- Listing goes through ``Session.conflict_views()`` (role-checked and audited by the core).
"""

from __future__ import annotations

from client.core.conflict_words import ConflictView, Version, confirmation
from client.core.session import Session
from client.ui.chart_view import PatientBanner
from client.ui.error_boundary import explain
from client.ui.qt import (
    QAbstractButton,
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    Qt,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.runner import Runner
from client.ui.widgets import button, data_label, fitting


def _plain_view(name: str) -> QPlainTextEdit:
    view = QPlainTextEdit()
    view.setReadOnly(True)
    view.setTabChangesFocus(True)
    view.setAccessibleName(name)
    view.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
    return view


def side_heading(where: str, version: Version) -> str:
    if not version.present:
        return f"{where} — no longer there"
    return f"{where} — {version.author}, {version.when}"


class ConflictsDialog(QDialog):
    """The open conflicts; both versions side by side; keep mine / keep theirs, confirmed."""

    resolved = Signal(str)  # "mine" | "theirs"

    def __init__(self, session: Session, runner: Runner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("conflicts_dialog")
        self.setWindowTitle("Sync conflicts")
        self.setAccessibleName("Sync conflicts")
        self.resize(*fitting((1100, 660), parent or self))  # never larger than the screen
        self._session = session
        self._runner = runner
        self.items: list[ConflictView] = []
        self.confirmation: QMessageBox | None = None
        self.listing = QListWidget()
        self.listing.setObjectName("conflicts_list")
        self.listing.setAccessibleName("Conflicts")
        self.listing.setMaximumHeight(110)
        self.banner_holder = QVBoxLayout()
        self.banner: PatientBanner | None = None
        self.mine_heading = data_label("", role="section", wrap=True)
        self.theirs_heading = data_label("", role="section", wrap=True)
        self.mine = _plain_view("Your version, on this laptop")
        self.mine.setObjectName("conflict_mine")
        self.theirs = _plain_view("The gateway's version")
        self.theirs.setObjectName("conflict_theirs")
        self.differences = data_label("", role="hint", wrap=True)
        self.feedback = data_label("", role="hint", wrap=True)
        self.keep_mine = button("Keep &mine", "Keep my version (asks first)")
        self.keep_mine.setObjectName("keep_mine")
        self.keep_theirs = button("Keep &theirs", "Keep the gateway's version (asks first)")
        self.keep_theirs.setObjectName("keep_theirs")
        closer = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        closer.rejected.connect(self.reject)
        grid = QGridLayout()
        grid.addWidget(self.mine_heading, 0, 0)
        grid.addWidget(self.theirs_heading, 0, 1)
        grid.addWidget(self.mine, 1, 0)
        grid.addWidget(self.theirs, 1, 1)
        grid.addWidget(self.keep_mine, 2, 0)
        grid.addWidget(self.keep_theirs, 2, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(data_label("Someone changed these records on the gateway", role="title"))
        layout.addWidget(
            data_label(
                "Your change was not applied because the gateway already had a newer version. "
                "Compare both and choose which one to keep; nothing is discarded until you "
                "confirm.",
                wrap=True,
            )
        )
        layout.addWidget(self.listing)
        layout.addLayout(self.banner_holder)
        layout.addLayout(grid)
        layout.addWidget(self.differences)
        layout.addWidget(self.feedback)
        layout.addWidget(closer)
        self.listing.currentRowChanged.connect(self._selected)
        self.keep_mine.clicked.connect(lambda: self.ask("mine"))
        self.keep_theirs.clicked.connect(lambda: self.ask("theirs"))
        self._enable(False)
        self.reload()

    def _enable(self, enabled: bool) -> None:
        self.keep_mine.setEnabled(enabled)
        self.keep_theirs.setEnabled(enabled)

    def reload(self) -> None:
        self._runner.run(self._session.conflict_views, self._loaded)

    def _loaded(self, views: list[ConflictView]) -> None:
        self.items = list(views)
        self.listing.clear()
        for view in self.items:
            item = QListWidgetItem(view.summary())
            item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
            self.listing.addItem(item)
        if self.items:
            self.listing.setCurrentRow(0)
            self.feedback.setText(f"{len(self.items)} conflict(s) to resolve.")
        else:
            self._show_banner(None)
            for widget in (self.mine, self.theirs):
                widget.clear()
            for label in (self.mine_heading, self.theirs_heading, self.differences):
                label.clear()
            self._enable(False)
            self.feedback.setText("No conflicts left. Everything else syncs as usual.")

    def current(self) -> ConflictView | None:
        row = self.listing.currentRow()
        return self.items[row] if 0 <= row < len(self.items) else None

    def _show_banner(self, view: ConflictView | None) -> None:
        if self.banner is not None:
            self.banner_holder.removeWidget(self.banner)
            self.banner.deleteLater()
            self.banner = None
        if view is not None and view.banner is not None:
            self.banner = PatientBanner(view.banner)
            self.banner_holder.addWidget(self.banner)

    def _selected(self, _row: int) -> None:
        view = self.current()
        if view is None:
            return
        self._show_banner(view)
        self.mine_heading.setText(side_heading("Yours, on this laptop", view.mine))
        self.theirs_heading.setText(side_heading("Theirs, on the gateway", view.theirs))
        self.mine.setPlainText(view.mine.text())
        self.theirs.setPlainText(view.theirs.text())
        differing = [r.label for r in view.rows if r.differs and r.label not in ("When",)]
        self.differences.setText(
            f"Different: {', '.join(differing)}." if differing else "Both versions read the same."
        )
        self._enable(True)
        # Keeping mine needs the gateway's record to exist, to go on top of it.
        self.keep_mine.setEnabled(view.theirs.present)

    # -- asking before anyone's words are discarded --------------------------------------------

    def ask(self, keep: str) -> None:
        """Open the confirmation for ``keep``; only its discarding button resolves."""
        view = self.current()
        if view is None or self.confirmation is not None:
            return
        title, sentence, discard_words = confirmation(view, keep)
        box = QMessageBox(self)
        box.setObjectName("conflict_confirmation")
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle(title)
        box.setText(title)
        box.setInformativeText(sentence)
        box.setTextFormat(Qt.TextFormat.PlainText)
        go_back = box.addButton("&Go back", QMessageBox.ButtonRole.RejectRole)
        discard = box.addButton(discard_words, QMessageBox.ButtonRole.DestructiveRole)
        go_back.setObjectName("go_back")
        discard.setObjectName("discard")
        box.setDefaultButton(go_back)
        box.setEscapeButton(go_back)
        self.confirmation = box

        def answered(clicked: QAbstractButton) -> None:
            self.confirmation = None
            box.deleteLater()
            if clicked is discard:
                self.resolve(keep)
            else:
                self.feedback.setText("Nothing was changed. Both versions are kept for now.")

        box.buttonClicked.connect(answered)
        box.open()
        go_back.setFocus()

    def confirm_button(self, which: str) -> QPushButton:
        """The open confirmation's ``go_back`` or ``discard`` button (for keyboard walks)."""
        box = self.confirmation
        if box is None:
            raise LookupError("no confirmation is open")
        found = box.findChild(QPushButton, which)
        if found is None:
            raise LookupError(which)
        return found

    def resolve(self, keep: str) -> None:
        """Resolve the selected conflict now (after the clinician confirmed)."""
        view, session = self.current(), self._session
        if view is None:
            return
        self._enable(False)
        conflict_id = int(view.conflict_id)
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
            else "Kept the gateway's version; yours was removed from this laptop."
        )
        self.reload()

    def _failed(self, error: BaseException) -> None:
        self._enable(True)
        self.feedback.setText(explain(error).message)
