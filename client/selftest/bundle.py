"""Self-test of the frozen bundle's contents: gateway, admin and test code are not in it.

The names checked are ``client.never_ship.NEVER_SHIP_MODULES``, the one list the build and
``packaging/verify.py`` use too.
"""

from __future__ import annotations

import importlib.util
import sys

from client.never_ship import NEVER_SHIP_MODULES
from client.selftest.base import CheckFailed, Context


def check_bundle_contents(ctx: Context, *, frozen: bool | None = None) -> None:
    """In the frozen bundle, gateway, admin and test code must not be importable."""
    if frozen is None:
        frozen = bool(getattr(sys, "frozen", False))
    if not frozen:
        ctx.note("not a frozen bundle: bundle contents not checked")
        return
    present = []
    for name in NEVER_SHIP_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            present.append(name)
    if present:
        raise CheckFailed("bundle_forbidden_module", ", ".join(present))
