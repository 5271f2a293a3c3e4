"""PyInstaller entry script for the laptop bundle (``dist/gatehouse/gatehouse``).

Invariants:
- When ``client.cli`` exists it is the whole program: its ``main()`` return value is the exit
  code (``gatehouse --self-test`` is routed by it to ``client.selftest.main()``).
- Until then, the bundle still proves itself: ``--self-test`` runs ``client.selftest.main()``;
  any other invocation exits 2 with one line saying only the self-test is available.
- The check is ``find_spec``, not a caught ``ImportError``, so a real import failure inside
  ``client.cli`` is never mistaken for its absence.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


def run(argv: list[str]) -> int:
    if importlib.util.find_spec("client.cli") is not None:
        cli = importlib.import_module("client.cli")
        code: int = cli.main()
        return code
    if argv == ["--self-test"]:
        from client.selftest import main as self_test_main

        return self_test_main()
    print("gatehouse: this build only supports --self-test", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
