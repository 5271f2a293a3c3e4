"""PyInstaller entry script for the laptop bundle (``dist/gatehouse/gatehouse``).

Invariant: ``client.cli.main`` is the whole program; its return value is the exit code
(``gatehouse --self-test`` is routed by it to ``client.selftest.main()``).
"""

from __future__ import annotations

import sys

from client.cli import main

if __name__ == "__main__":
    sys.exit(main())
