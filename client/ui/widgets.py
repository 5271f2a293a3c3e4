"""Small building blocks every screen uses, so plain text and accessibility are not optional.

Guarantees:
- ``data_label`` is the only way screens make a label that shows record, server or user data:
  its ``textFormat`` is set to ``Qt.PlainText`` explicitly (UI-1), so "<b>x</b>" shows literally.
- Every control made here carries an accessible name.
- Full-screen notices (sign-in, set-up, refusals) share one layout: ``centred_card``.
- The stylesheet is one small, calm, high-contrast sheet; meaning is never carried by colour
  alone (alerts also carry a text label such as "⚠ ALERT"). Every text colour contrasts at
  least 4.5:1 with the backgrounds it is drawn on (WCAG 2.2 AA); the keyboard focus ring
  (``FOCUS_RING``, 3 px; ``TOOLBAR_FOCUS_RING`` on the dark toolbar) contrasts at least 3:1
  with the background and with the default button's border (``DEFAULT_BORDER``, 2 px where
  other buttons have 1 px), so "where am I" and "what Enter does" never look alike.
- ``one_tab_stop`` makes every item view in a screen one Tab stop (arrow keys move inside);
  the main window applies it to every screen and dialog it shows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from client.ui.qt import (
    QAbstractItemView,
    QAbstractTableModel,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QPushButton,
    QScrollArea,
    Qt,
    QVBoxLayout,
    QWidget,
)

Index = QModelIndex | QPersistentModelIndex

FOCUS_RING = "#d14900"
TOOLBAR_FOCUS_RING = "#ffcc00"
DEFAULT_BORDER = "#1b1f24"

STYLESHEET = """
QWidget { font-size: 11pt; color: #1b1f24; }
QMainWindow, QStackedWidget > QWidget { background: #f6f7f9; }
QLabel[role="title"] { font-size: 16pt; font-weight: 600; }
QLabel[role="hint"] { color: #3d4650; }
QLabel[role="error"] { color: #8a1010; font-weight: 600; }
QLabel[role="ok"] { color: #0b5d1e; font-weight: 600; }
QLabel[role="warning"] { color: #6b4100; font-weight: 600; }
QLabel[role="section"] { font-size: 12pt; font-weight: 600; padding-top: 6px;
    border-bottom: 1px solid #c5cbd3; }
QFrame[role="banner"] { background: #e8edf3; border: 1px solid #b8c2cf; border-radius: 4px; }
QLabel[role="banner-name"] { font-size: 15pt; font-weight: 700; }
QFrame[role="alert"] { background: #fff1c2; border: 2px solid #1b1f24; border-radius: 3px; }
QFrame[role="allergy"] { background: #ffe0e0; border: 2px solid #1b1f24; border-radius: 3px; }
QLabel[role="alert-head"] { font-weight: 800; }
QLabel[role="missing"] { font-weight: 800; color: #8a1010; }
QFrame[role="breakglass"] { background: #1b1f24; border: 3px solid #ffcc00; }
QFrame[role="breakglass"] QLabel { color: #ffcc00; font-weight: 700; font-size: 12pt; }
QFrame[role="unsent"] { background: #eef3ff; border: 1px dashed #2f4f9e; }
QLabel[role="unsent"] { color: #1f3b80; font-weight: 700; }
QLabel[role="filing-laptop"], QLabel[role="filing-conflict"] { color: #1f3b80; font-weight: 700; }
QLabel[role="filing-gateway"] { color: #3d4650; font-weight: 600; }
QLabel[role="filing-filed"] { color: #0b5d1e; font-weight: 700; }
QLabel[role="filing-held"] { color: #8a1010; font-weight: 700; }
QLabel#note_filing { border: 3px solid transparent; }
QLabel#note_filing:focus { border: 3px solid #d14900; }
QPushButton { padding: 5px 14px; border: 1px solid #7a8794; border-radius: 4px;
    background: #ffffff; }
QPushButton:default { border: 2px solid #1b1f24; }
QLineEdit, QPlainTextEdit, QComboBox, QSpinBox { padding: 4px; border: 1px solid #7a8794;
    border-radius: 3px; background: #ffffff; }
QPushButton:focus, QLineEdit:focus, QPlainTextEdit:focus, QTableView:focus, QComboBox:focus,
QSpinBox:focus, QListWidget:focus, QScrollArea:focus, QCheckBox:focus {
    outline: none; border: 3px solid #d14900; }
QTableView { background: #ffffff; alternate-background-color: #f1f3f6;
    selection-background-color: #1f4e8c; selection-color: #ffffff; gridline-color: #d5dae0; }
QHeaderView::section { background: #e3e7ec; padding: 4px; border: none;
    border-right: 1px solid #c5cbd3; font-weight: 600; }
QToolBar { background: #27313d; spacing: 8px; padding: 3px; }
QToolBar QLabel { color: #ffffff; }
QToolBar QToolButton { color: #ffffff; padding: 4px 10px; border: 3px solid #27313d; }
QToolBar QToolButton:focus { border: 3px solid #ffcc00; }
QStatusBar { background: #e3e7ec; }
QDateEdit:focus { outline: none; border: 3px solid #d14900; }
"""


def one_tab_stop(root: QWidget) -> None:
    """Every item view (table, list) under ``root`` takes one Tab stop: Tab leaves it, the
    arrow keys move inside it (Qt's QTableView otherwise moves cell by cell on Tab)."""
    for view in root.findChildren(QAbstractItemView):
        view.setTabKeyNavigation(False)
    if isinstance(root, QAbstractItemView):
        root.setTabKeyNavigation(False)


def scrolling(content: QWidget, name: str, *, across: bool = False) -> QScrollArea:
    """``content`` in a vertical scroll area that keeps its width (``across``: it may also
    scroll sideways): a screen larger than a small window (1366x768 at 150% is 911x512
    points) scrolls instead of being cut off."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(
        Qt.ScrollBarPolicy.ScrollBarAsNeeded if across else Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    )
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the fields inside take focus, not the area
    area.setAccessibleName(name)
    area.setWidget(content)
    return area


def fitting(size: tuple[int, int], near: QWidget) -> tuple[int, int]:
    """``size``, made no larger than the available area of the screen ``near`` is on."""
    screen = near.screen()
    if screen is None:
        return size
    room = screen.availableGeometry()
    return min(size[0], room.width()), min(size[1], room.height())


def set_role(widget: QWidget, role: str) -> None:
    """Tag a widget for the stylesheet (and re-polish so the style applies now)."""
    widget.setProperty("role", role)
    widget.style().unpolish(widget)
    widget.style().polish(widget)


def data_label(text: str = "", *, role: str | None = None, wrap: bool = False) -> QLabel:
    """A label for data: always plain text (UI-1), never interactive, optionally wrapped."""
    label = QLabel()
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.NoTextInteraction)
    label.setText(text)
    label.setWordWrap(wrap)
    if role:
        label.setProperty("role", role)
    return label


def field(name: str, *, password: bool = False) -> QLineEdit:
    edit = QLineEdit()
    edit.setAccessibleName(name)
    if password:
        edit.setEchoMode(QLineEdit.EchoMode.Password)
    return edit


def button(text: str, name: str) -> QPushButton:
    """A button with a mnemonic in ``text`` (``&Save``) and an accessible name."""
    widget = QPushButton(text)
    widget.setAccessibleName(name)
    return widget


def centred_card(screen: QWidget, max_width: int, *, role: str | None = "banner") -> QVBoxLayout:
    """Lay ``screen`` out as one card, at most ``max_width`` wide, centred across and a little
    above the middle (the sign-in, set-up and refusal screens); returns the card's layout."""
    card = QFrame()
    if role:
        card.setProperty("role", role)
    card.setMaximumWidth(max_width)
    inner = QVBoxLayout(card)
    inner.setContentsMargins(24, 20, 24, 20)
    row = QHBoxLayout()
    row.addStretch(1)
    row.addWidget(card)
    row.addStretch(1)
    outer = QVBoxLayout(screen)
    outer.addStretch(1)
    outer.addLayout(row)
    outer.addStretch(2)
    return inner


def format_nhs(number: str | None) -> str:
    """NHS number as 3-3-4 (``999 123 4567``); anything else unchanged; empty when absent."""
    if not number:
        return ""
    digits = "".join(ch for ch in number if ch.isdigit())
    if len(digits) == 10:
        return f"{digits[:3]} {digits[3:6]} {digits[6:]}"
    return number


def format_date(day: dt.date | str | None) -> str:
    """Dates as ``07-Mar-1984`` (unambiguous for UK readers); empty when absent."""
    if day is None or day == "":
        return ""
    if isinstance(day, str):
        try:
            day = dt.date.fromisoformat(day[:10])
        except ValueError:
            return str(day)
    return day.strftime("%d-%b-%Y")


def age_on(born: dt.date | str | None, today: dt.date) -> int | None:
    if born is None or born == "":
        return None
    if isinstance(born, str):
        try:
            born = dt.date.fromisoformat(born[:10])
        except ValueError:
            return None
    if born > today:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


class TextRowsModel(QAbstractTableModel):
    """A read-only table whose every cell is a plain string (Qt never renders a string cell
    as rich text). ``rows`` are tuples of strings, one per column; the same strings are the
    cells' accessible text. Every data table in the client is one of these."""

    def __init__(self, columns: Sequence[str], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._columns = tuple(columns)
        self.rows: list[tuple[str, ...]] = []

    def set_rows(self, rows: Sequence[tuple[str, ...]]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.endResetModel()

    def clear(self) -> None:
        self.set_rows([])

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._columns)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self._columns[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.AccessibleTextRole):
            return None
        if not 0 <= index.row() < len(self.rows):
            return None
        return self.rows[index.row()][index.column()]
