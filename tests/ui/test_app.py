"""Starting the client: the device folder from --data / GATEHOUSE_DATA, the first-run
provisioning window for a folder not set up yet, and the placeholder without any folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pytestqt.qtbot import QtBot

from client.ui.app import NotProvisionedScreen, build_window, parse_args
from client.ui.provisioning import ProvisioningScreen, ProvisioningWindow
from client.ui.qt import QImage, QLabel, Qt

ROOT = Path(__file__).resolve().parents[2]


def test_no_data_folder_shows_the_placeholder(qtbot: QtBot, tmp_path: Path) -> None:
    window = build_window(None)
    qtbot.addWidget(window)
    screen = window.centralWidget()
    assert isinstance(screen, NotProvisionedScreen)
    labels = screen.findChildren(QLabel)
    assert any("not set up" in label.text() for label in labels)
    assert all(label.textFormat() == Qt.TextFormat.PlainText for label in labels)


def test_a_folder_not_set_up_opens_provisioning_and_writes_nothing(
    qtbot: QtBot, tmp_path: Path
) -> None:
    folder = tmp_path / "empty"
    window = build_window(folder)
    qtbot.addWidget(window)
    assert isinstance(window, ProvisioningWindow)
    assert isinstance(window.centralWidget(), ProvisioningScreen)
    assert not window.screen_widget.enrol.isEnabled()  # nothing to enrol with yet
    assert not folder.exists() or not any(folder.iterdir())  # nothing was written


def test_data_folder_comes_from_the_command_line() -> None:
    assert parse_args(["--data", "/x/y"]).data == Path("/x/y")
    assert parse_args([]).data is None
    assert parse_args(["--data", "d", "--bundle", "/b.json"]).bundle == Path("/b.json")


def test_screenshots_script_writes_every_screen(qtbot: QtBot, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("screenshots", ROOT / "scripts/screenshots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "05-chart.png" in names and "09-chart-break-glass.png" in names
    assert len(names) >= 12
    for name in names:
        image = QImage(str(tmp_path / name))
        assert image.width() >= 500
        colours = {
            image.pixel(x, y)
            for x in range(0, image.width(), 37)
            for y in range(0, image.height(), 29)
        }
        assert len(colours) > 3, f"{name} looks blank"
