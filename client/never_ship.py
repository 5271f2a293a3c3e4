"""The one list of what must never ship on a laptop.

Invariants:
- This is the only such list. ``packaging/gatehouse.spec`` excludes these modules and stops the
  build if analysis still finds one; the frozen app's self-test (``client.selftest.bundle``)
  fails if one is importable; ``packaging/verify.py`` refuses an SBOM naming one of the
  distributions; ``tests/test_boundaries.py`` fails if laptop code imports one.
- A name covers the module and everything below it (``sync.gateway`` covers
  ``sync.gateway.store.sqlite``).
- No imports beyond the standard library: the spec and verify.py load it at build time, outside
  the app.
"""

from __future__ import annotations

from typing import Final

# The gateway server and the libraries only it needs.
GATEWAY_MODULES: Final = (
    "sync.gateway",
    "starlette",
    "uvicorn",
    "psycopg",
    "psycopg_binary",
    "psycopg_pool",
)
# Command-line tools for IT and security staff; installable from the wheel, not on a laptop.
ADMIN_MODULES: Final = ("policy.cli", "policy.docs", "sync.protocol.audit.cli")
# Tests and their tools; a plaintext keyring backend; a GUI toolkit we do not use.
DEVELOPMENT_MODULES: Final = (
    "tests",
    "pytest",
    "_pytest",
    "pytestqt",
    "hypothesis",
    "keyrings",
    "tkinter",
)
NEVER_SHIP_MODULES: Final = GATEWAY_MODULES + ADMIN_MODULES + DEVELOPMENT_MODULES

# The same, as distribution names an SBOM would list.
NEVER_SHIP_DISTRIBUTIONS: Final = frozenset(
    {
        "starlette",
        "uvicorn",
        "psycopg",
        "psycopg-binary",
        "psycopg-pool",
        "keyrings.alt",
        "keyrings-alt",
        "pytest",
        "pytest-qt",
        "hypothesis",
    }
)


def never_ships(module: str) -> bool:
    """True when ``module`` is, or lies below, a module that must never ship on a laptop."""
    return any(module == name or module.startswith(name + ".") for name in NEVER_SHIP_MODULES)
