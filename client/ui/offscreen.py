"""Driving the real screens without a person: wait, settle, open a window, sign in, shoot.

Shared by the demo journey (``client/ui/journey.py``, which ships in the laptop bundle) and
``scripts/screenshots.py``, so both drive the screens the same way.

Guarantees:
- Everything runs on the GUI thread and only pumps Qt's event loop; core work still goes through
  the window's executor, exactly as when a person clicks.
- ``wait_until`` never waits forever: past its timeout it raises ``TimeoutError`` naming what
  it waited for (never a password or patient data).
- ``headless_window`` is the real ``MainWindow`` at the laptop size; only the OS focus is
  pinned to "active", because an offscreen platform has no focus to lose (the focus-loss lock
  is tested on its own).
- ``shoot`` writes one PNG of a widget as shown, or raises ``OSError`` if it cannot.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from client.core.device import Device
from client.ui.main_window import WINDOW_SIZE, MainWindow
from client.ui.qt import QApplication, QImage, Qt, QWidget

POLL_SECONDS = 0.01  # how often a wait pumps the event loop


def wait_until(
    condition: Callable[[], bool], what: str = "the screen", timeout: float = 60.0
) -> None:
    """Pump events until ``condition()`` holds (``TimeoutError`` after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        QApplication.processEvents()
        time.sleep(POLL_SECONDS)
    QApplication.processEvents()


def settle(seconds: float = 0.2) -> None:
    """Pump events for ``seconds`` (let layouts, repaints and queued results land)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(POLL_SECONDS)


def shoot(widget: QWidget, path: Path) -> Path:
    """The widget as shown, as a PNG at ``path``."""
    settle(0.15)
    if not widget.grab().save(str(path)):
        raise OSError(f"could not write {path.name}")
    return path


def shoot_scaled(widget: QWidget, path: Path, scale: float) -> Path:
    """The widget as a ``scale``× display shows it (``QT_SCALE_FACTOR``): laid out in logical
    points at its current size, painted into a image of ``scale`` device pixels per point."""
    settle(0.15)
    size = widget.size()
    image = QImage(
        round(size.width() * scale), round(size.height() * scale), QImage.Format.Format_RGB32
    )
    image.setDevicePixelRatio(scale)
    image.fill(Qt.GlobalColor.white)
    widget.render(image)
    if not image.save(str(path)):
        raise OSError(f"could not write {path.name}")
    return path


def laptop_size() -> tuple[int, int]:
    """The laptop's 1366x768 screen in logical points: with ``QT_SCALE_FACTOR=1.5`` (150%
    scaling) that is 911x512, the size every screen must work at."""
    try:
        factor = float(os.environ.get("QT_SCALE_FACTOR", "1") or 1)
    except ValueError:
        factor = 1.0
    factor = factor if factor > 0 else 1.0
    return round(WINDOW_SIZE[0] / factor), round(WINDOW_SIZE[1] / factor)


def headless_window(device: Device) -> MainWindow:
    """The real main window at the laptop size, with the OS focus pinned to active."""
    window = MainWindow(device)
    window.app_state = lambda: Qt.ApplicationState.ApplicationActive
    window.resize(*laptop_size())
    return window


def submit_sign_in(window: MainWindow, user: str, password: str) -> None:
    """Type the user and password into the window's sign-in screen and submit."""
    screen = window.login_screen
    if screen is None:
        raise TimeoutError("no sign-in screen is shown")
    screen.user.setText(user)
    screen.password.setText(password)
    screen.submit()


def sign_in(window: MainWindow, user: str, password: str) -> None:
    """Sign in offline and wait for the workspace; back to the laptop size (kiosk mode may
    have gone full screen on the offscreen "monitor")."""
    submit_sign_in(window, user, password)
    wait_until(lambda: window.session is not None, f"{user}'s sign-in")
    window.showNormal()
    window.resize(*laptop_size())
