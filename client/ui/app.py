"""Start the desktop client: ``python -m client.ui.app --data <folder> [--bundle FILE]``
(or env ``GATEHOUSE_DATA`` / ``GATEHOUSE_BUNDLE``, which ``gatehouse`` with no arguments uses).

Guarantees:
- The device folder is opened with ``Device.open`` (which finishes an interrupted wipe first);
  before that, a finished wipe's pending report is sent to the gateway on a background thread
  (WP-2, WP-3), so a wiped laptop reports itself at its next start.
- A data folder that is not provisioned yet opens the first-run provisioning screen (with the
  bundle file preselected when one is given); no data folder at all shows a placeholder that
  says how to give one. Never a traceback.
- Any failure to open the device is explained through the one error boundary.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from client.core.device import Device, is_provisioned, report_wipe_in_background
from client.ui.collector import GuiThreadCollector
from client.ui.error_boundary import explain
from client.ui.main_window import WINDOW_SIZE, MainWindow
from client.ui.provisioning import ProvisioningWindow
from client.ui.qt import QApplication, QMainWindow, Qt, QWidget
from client.ui.widgets import STYLESHEET, centred_card, data_label

DATA_ENV = "GATEHOUSE_DATA"
BUNDLE_ENV = "GATEHOUSE_BUNDLE"


class NotProvisionedScreen(QWidget):
    """Shown when the folder holds no provisioned device (or it cannot be opened)."""

    def __init__(self, data_dir: Path | None, detail: str | None = None) -> None:
        super().__init__()
        self.setObjectName("not_provisioned_screen")
        self.setAccessibleName("This laptop is not set up")
        box = centred_card(self, 640, role=None)
        box.addWidget(data_label("This laptop is not set up for Gatehouse yet", role="title"))
        text = detail or (
            "IT sets up each laptop with a provisioning bundle for one site. Start Gatehouse "
            "with a data folder (--data, or the GATEHOUSE_DATA setting) to set it up here."
        )
        box.addWidget(data_label(text, wrap=True))
        where = str(data_dir) if data_dir else f"not given (use --data or {DATA_ENV})"
        box.addWidget(data_label(f"Data folder: {where}", role="hint", wrap=True))
        box.addWidget(data_label("Nothing is stored until the laptop is set up.", role="hint"))


def placeholder_window(data_dir: Path | None, detail: str | None = None) -> QMainWindow:
    window = QMainWindow()
    window.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    window.setWindowTitle("Gatehouse — not set up")
    window.setStyleSheet(STYLESHEET)
    window.setCentralWidget(NotProvisionedScreen(data_dir, detail))
    window.resize(*WINDOW_SIZE)
    return window


def build_window(data_dir: Path | None, bundle: Path | None = None) -> QMainWindow:
    """The main window for ``data_dir``, the first-run provisioning window when the folder is
    not set up yet, or the placeholder when there is no folder or it cannot be used."""
    if data_dir is None:
        return placeholder_window(data_dir)
    try:  # a wipe a kill interrupted completes first; its report goes to the gateway (WP-3)
        report_wipe_in_background(data_dir)
    except Exception as error:  # the boundary: explained, never a traceback
        return placeholder_window(data_dir, explain(error).message)
    if not is_provisioned(data_dir):
        return ProvisioningWindow(data_dir, bundle_path=bundle)
    try:
        device = Device.open(data_dir)
    except Exception as error:  # the boundary: explained, never a traceback
        return placeholder_window(data_dir, explain(error).message)
    return MainWindow(device)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gatehouse-ui", description="Gatehouse desktop client")
    parser.add_argument("--data", type=Path, help=f"device data folder (default: ${DATA_ENV})")
    parser.add_argument(
        "--bundle",
        type=Path,
        help=f"provisioning bundle for the first run (default: ${BUNDLE_ENV})",
    )
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    env = os.environ.get(DATA_ENV)
    data_dir = args.data or (Path(env) if env else None)
    bundle_env = os.environ.get(BUNDLE_ENV)
    bundle = args.bundle or (Path(bundle_env) if bundle_env else None)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    collector = GuiThreadCollector(app)
    collector.start()
    window = build_window(data_dir, bundle)
    window.show()
    try:
        return int(app.exec())
    finally:
        collector.stop()


if __name__ == "__main__":
    raise SystemExit(main())
