"""The frozen app's environment, cleaned before Qt or Python load anything (NW-5).

A variable in the environment must not decide which code the laptop app loads (a Qt platform
plugin from a folder the user controls, a Python module, an OpenSSL provider) nor whom it
trusts (a CA bundle, a key-log file, a keyring collection). The frozen app therefore removes
every such variable at start.

Invariants:
- Standard library only (``os``, ``sys``): the PyInstaller runtime hook
  (``packaging/rthook_clean_environment.py``) imports this module before every other runtime
  hook (PyInstaller's PySide6 hook imports ``PySide6.QtCore``), and the entry script
  (``packaging/gatehouse_main.py``) imports it again before any product module, so nothing it
  relies on can be steered by what it cleans.
- :func:`scrub` leaves no variable for which :func:`is_hostile` holds, except the ``pinned``
  ones, which it sets to the bundle's own value (``QT_PLUGIN_PATH`` = the bundle's Qt plugin
  folder, which PyInstaller's hook sets too). Names compare case-insensitively (Windows).
- A small allow-list of Qt variables that only change scaling or pick one of the bundle's own
  input methods survives (``SAFE_QT_VARIABLES``); the plugin path is pinned, so an input
  method name can only select a bundled plugin.
- The dynamic loader reads ``LD_*``/``DYLD_*`` when the process starts, before any Python runs:
  removing them protects what the app starts later and every ``dlopen`` that consults the
  environment, not the loader's first pass (docs/deploy.md says what the launcher must do).
- The headless switch is a command-line flag (``gatehouse --headless``), never the
  environment: ``client.cli`` sets ``QT_QPA_PLATFORM=offscreen`` after the scrub.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Final

# Every variable whose (upper-case) name starts with one of these can load code or change trust:
# Qt (QT_PLUGIN_PATH, QT_QPA_PLATFORM_PLUGIN_PATH, QT_QPA_PLATFORM, QT_QPA_PLATFORMTHEME,
# QT_QPA_GENERIC_PLUGINS, QT_STYLE_OVERRIDE, QT_LOGGING_CONF, QT_XCB_GL_INTEGRATION,
# QT_WAYLAND_*, QT_OPENGL, QT_DEBUG_PLUGINS, QTWEBENGINE_*), QML (QML_IMPORT_PATH,
# QML2_IMPORT_PATH), Python (PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, PYTHONINSPECT,
# PYTHON_KEYRING_BACKEND, ...), OpenSSL (OPENSSL_CONF loads engines and providers,
# OPENSSL_MODULES, OPENSSL_ENGINES), the CA store (SSL_CERT_FILE, SSL_CERT_DIR), the dynamic
# loader (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, DYLD_INSERT_LIBRARIES, DYLD_LIBRARY_PATH)
# and keyring's backend properties (KEYRING_PROPERTY_COLLECTION would move the device secret).
HOSTILE_PREFIXES: Final = (
    "QT",
    "QML",
    "PYTHON",
    "OPENSSL",
    "SSL_CERT_",
    "LD_",
    "DYLD_",
    "KEYRING_PROPERTY_",
)

# Named one by one: CA bundles requests and curl honour, and the TLS key-log file.
HOSTILE_NAMES: Final = frozenset({"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSLKEYLOGFILE"})

# Qt variables that only scale the window or pick one of the bundle's own input methods.
SAFE_QT_VARIABLES: Final = frozenset(
    {
        "QT_SCALE_FACTOR",
        "QT_SCREEN_SCALE_FACTORS",
        "QT_ENABLE_HIGHDPI_SCALING",
        "QT_SCALE_FACTOR_ROUNDING_POLICY",
        "QT_FONT_DPI",
        "QT_IM_MODULE",
        "QT_ACCESSIBILITY",
    }
)


def is_hostile(name: str) -> bool:
    """True for a variable the frozen app must not see (case-insensitive)."""
    upper = name.upper()
    if upper in SAFE_QT_VARIABLES:
        return False
    return upper in HOSTILE_NAMES or upper.startswith(HOSTILE_PREFIXES)


def hostile_names(env: Mapping[str, str], pinned: Mapping[str, str] | None = None) -> list[str]:
    """The hostile variables in ``env``, sorted; a pinned one counts only with another value."""
    pinned = pinned or {}
    return sorted(
        name
        for name, value in env.items()
        if is_hostile(name) and not (name in pinned and pinned[name] == value)
    )


def scrub(env: MutableMapping[str, str], pinned: Mapping[str, str] | None = None) -> list[str]:
    """Remove every hostile variable from ``env``, then set the pinned ones; names removed."""
    removed = sorted(name for name in list(env) if is_hostile(name))
    for name in removed:
        del env[name]
    for name, value in (pinned or {}).items():
        env[name] = value
    return [name for name in removed if name not in (pinned or {})]


def bundle_pins() -> dict[str, str]:
    """The values the frozen bundle itself needs: its own Qt plugin folder (empty unfrozen)."""
    bundle_dir = getattr(sys, "_MEIPASS", None)
    if not getattr(sys, "frozen", False) or not bundle_dir:
        return {}
    if sys.platform.startswith("win"):
        plugins = os.path.join(bundle_dir, "PySide6", "plugins")
    else:
        plugins = os.path.join(bundle_dir, "PySide6", "Qt", "plugins")
    return {"QT_PLUGIN_PATH": plugins}


def harden_frozen_process() -> list[str]:
    """Scrub ``os.environ`` (and so the C environment) with the bundle's pins; names removed."""
    return scrub(os.environ, bundle_pins())
