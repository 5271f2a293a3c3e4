"""Self-test of Qt: a window can be shown on this machine's platform.

Invariants:
- Importing this module imports no Qt: the check imports the UI shim (``client.ui.qt``)
  lazily, so a broken Qt is reported as a failure line, not an import crash.
- Before any Qt object exists, the requested platform plugin must be present on disk, because
  Qt aborts the process (not an exception) when it cannot load one.
- Without a display (and no platform chosen) the offscreen platform is used.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from client.selftest.base import CheckFailed, Context

# The Qt application is kept for the life of the process: deleting and re-creating a
# QApplication in one process is not supported by PySide6.
_qt_application: Any = None


def prepare_qt_environment(env: MutableMapping[str, str]) -> None:
    """Use the offscreen platform when none is chosen and there is no display."""
    if env.get("QT_QPA_PLATFORM"):
        return
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY") and sys.platform == "linux":
        env["QT_QPA_PLATFORM"] = "offscreen"


def platform_plugin_present(plugin_dirs: list[str], platform_name: str) -> bool:
    for directory in plugin_dirs:
        platforms = Path(directory) / "platforms"
        for candidate in platforms.glob(f"*q{platform_name}.*"):
            if candidate.stem in (f"q{platform_name}", f"libq{platform_name}"):
                return True
    return False


def check_qt(ctx: Context) -> None:
    global _qt_application
    prepare_qt_environment(os.environ)
    try:
        from client.ui import qt
    except ImportError as exc:
        raise CheckFailed("qt_import", f"the Qt shim cannot be imported ({exc.name})") from None
    requested = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0]
    app = qt.QApplication.instance()
    if app is None:
        if requested and not platform_plugin_present(
            list(qt.QApplication.libraryPaths()), requested
        ):
            raise CheckFailed("qt_platform_plugin_missing", f"no '{requested}' platform plugin")
        app = qt.QApplication([sys.argv[0] if sys.argv else "gatehouse"])
        _qt_application = app
    elif not isinstance(app, qt.QApplication):
        raise CheckFailed("qt_no_widgets", "a non-widget Qt application is already running")
    widget = qt.QWidget()
    try:
        widget.setWindowTitle("Gatehouse self-test")
        widget.resize(320, 200)
        widget.show()
        app.processEvents()
        if not widget.isVisible() or widget.windowHandle() is None:
            raise CheckFailed("qt_window", "a window could not be shown")
        ctx.note(f"Qt platform '{qt.QGuiApplication.platformName()}'")
    finally:
        widget.close()
        widget.deleteLater()
        app.processEvents()
