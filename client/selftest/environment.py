"""Self-test of the frozen app's environment: nothing left that could load code or change trust.

Invariants (NW-5):
- In the frozen bundle, no variable named by ``client.launch_environment.is_hostile`` is in the
  process environment, except ``QT_PLUGIN_PATH`` set to the bundle's own plugin folder and
  ``QT_QPA_PLATFORM=offscreen`` (set by the app itself for ``--headless`` or a display-less
  self-test). On POSIX the C-level ``environ`` (what Qt and OpenSSL read) is checked, not only
  Python's copy.
- Outside a bundle the check only notes how many such variables the frozen app would remove.
- A failure names the variables, never their values.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

from client.launch_environment import bundle_pins, hostile_names
from client.selftest.base import CheckFailed, Context

# Values the app sets itself after the scrub (the offscreen plugin is one of the bundle's own).
APP_SET_VALUES = {"QT_QPA_PLATFORM": "offscreen"}


def process_environment() -> dict[str, str]:
    """The C-level environment on POSIX (what native code reads), else ``os.environ``."""
    if os.name != "posix":
        return dict(os.environ)
    try:
        entries = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
    except (OSError, ValueError, AttributeError):
        return dict(os.environ)
    env: dict[str, str] = {}
    index = 0
    while entries[index] is not None:
        raw: bytes = entries[index]
        name, _, value = raw.decode("utf-8", "surrogateescape").partition("=")
        env[name] = value
        index += 1
    return env


def check_environment(
    ctx: Context, *, frozen: bool | None = None, env: Mapping[str, str] | None = None
) -> None:
    """In the frozen bundle, the environment holds no variable that loads code or moves trust."""
    if frozen is None:
        frozen = bool(getattr(sys, "frozen", False))
    current = process_environment() if env is None else env
    left = hostile_names(current, {**bundle_pins(), **APP_SET_VALUES})
    if not frozen:
        ctx.note(f"not a frozen bundle: environment not cleaned ({len(left)} variables to drop)")
        return
    if left:
        raise CheckFailed("environment_not_clean", ", ".join(left))
