"""Start the desktop client: ``python -m client.ui.app --data <folder>`` (or env GATEHOUSE_DATA).

Guarantees:
- The device folder is opened with ``Device.open`` (which finishes an interrupted wipe first);
  a folder that is not provisioned shows a clear placeholder screen, never a traceback.
- Any failure to open the device is explained through the one error boundary.
- Provisioning from a bundle and sync arrive in a later slice (the placeholder says so).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from client.core.device import Device, is_provisioned
from client.ui.error_boundary import explain
from client.ui.main_window import WINDOW_SIZE, MainWindow
from client.ui.qt import QApplication, QHBoxLayout, QMainWindow, Qt, QVBoxLayout, QWidget
from client.ui.widgets import STYLESHEET, data_label

DATA_ENV = "GATEHOUSE_DATA"


class NotProvisionedScreen(QWidget):
    """Shown when the folder holds no provisioned device (or it cannot be opened)."""

    def __init__(self, data_dir: Path | None, detail: str | None = None) -> None:
        super().__init__()
        self.setObjectName("not_provisioned_screen")
        self.setAccessibleName("This laptop is not set up")
        layout = QVBoxLayout(self)
        layout.addStretch(1)
        row = QHBoxLayout()
        row.addStretch(1)
        box = QVBoxLayout()
        box.addWidget(data_label("This laptop is not set up for Gatehouse yet", role="title"))
        text = detail or (
            "IT sets up each laptop with a provisioning bundle for one site. Setting up from a "
            "bundle on this screen arrives in a later version; until then IT provisions the "
            "laptop with the gatehouse command-line tool."
        )
        box.addWidget(data_label(text, wrap=True))
        where = str(data_dir) if data_dir else f"not given (use --data or {DATA_ENV})"
        box.addWidget(data_label(f"Data folder: {where}", role="hint", wrap=True))
        box.addWidget(data_label("Nothing is stored until the laptop is set up.", role="hint"))
        holder = QWidget()
        holder.setLayout(box)
        holder.setMaximumWidth(640)
        row.addWidget(holder)
        row.addStretch(1)
        layout.addLayout(row)
        layout.addStretch(2)


def placeholder_window(data_dir: Path | None, detail: str | None = None) -> QMainWindow:
    window = QMainWindow()
    window.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    window.setWindowTitle("Gatehouse — not set up")
    window.setStyleSheet(STYLESHEET)
    window.setCentralWidget(NotProvisionedScreen(data_dir, detail))
    window.resize(*WINDOW_SIZE)
    return window


def build_window(data_dir: Path | None) -> QMainWindow:
    """The main window for ``data_dir``, or the placeholder when it cannot be used."""
    if data_dir is None or not is_provisioned(data_dir):
        return placeholder_window(data_dir)
    try:
        device = Device.open(data_dir)
    except Exception as error:  # the boundary: explained, never a traceback
        return placeholder_window(data_dir, explain(error).message)
    return MainWindow(device)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gatehouse-ui", description="Gatehouse desktop client")
    parser.add_argument("--data", type=Path, help=f"device data folder (default: ${DATA_ENV})")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    env = os.environ.get(DATA_ENV)
    data_dir = args.data or (Path(env) if env else None)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = build_window(data_dir)
    window.show()
    return int(app.exec())


if __name__ == "__main__":
    raise SystemExit(main())
