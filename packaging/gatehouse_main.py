"""PyInstaller entry script for the laptop bundle (``dist/gatehouse/gatehouse``).

Invariants:
- The first import is ``client.launch_environment`` (standard library only), which removes
  every variable that could load code or change trust (NW-5) before any other product module
  or Qt is imported. The runtime hook ``packaging/rthook_clean_environment.py`` did the same
  before PyInstaller's own runtime hooks; this second pass undoes what those hooks set
  (``QML2_IMPORT_PATH``) and pins ``QT_PLUGIN_PATH`` to the bundle's own plugins.
- ``client.cli.main`` is the whole program; its return value is the exit code
  (``gatehouse --self-test`` is routed by it to ``client.selftest.main()``).
"""

from __future__ import annotations

from client.launch_environment import harden_frozen_process

harden_frozen_process()

import sys  # noqa: E402 (after the environment is clean)

from client.cli import main  # noqa: E402 (after the environment is clean)

if __name__ == "__main__":
    sys.exit(main())
