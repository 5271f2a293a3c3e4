"""Self-test of the frozen bundle's contents: gateway, admin and test code are not in it.

``FORBIDDEN_IN_BUNDLE`` is a plain module-level constant: the list of module names that must
never be importable on a laptop.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Final

from client.selftest.base import CheckFailed, Context

# Modules that must never be importable from the frozen laptop bundle.
FORBIDDEN_IN_BUNDLE: Final = (
    "sync.gateway",
    "starlette",
    "uvicorn",
    "psycopg",
    "tests",
    "tkinter",
    "policy.cli",
)


def check_bundle_contents(ctx: Context, *, frozen: bool | None = None) -> None:
    """In the frozen bundle, gateway, admin and test code must not be importable."""
    if frozen is None:
        frozen = bool(getattr(sys, "frozen", False))
    if not frozen:
        ctx.note("not a frozen bundle: bundle contents not checked")
        return
    present = []
    for name in FORBIDDEN_IN_BUNDLE:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            present.append(name)
    if present:
        raise CheckFailed("bundle_forbidden_module", ", ".join(present))
