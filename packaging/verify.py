"""Verify a built bundle: manifest, outputs, and the frozen app's own self-test.

Usage: ``python packaging/verify.py [--dist dist] [--name gatehouse]``

Invariants:
- Exit 0 only when every file of ``dist/<name>/`` is in ``dist/<name>.sha256`` with the same
  SHA-256, no listed file is missing, no unlisted file exists, the SBOM and version files are
  present and well formed, ``dist/<name>/<name> --self-test`` exits 0 with its one ``self-test
  ok`` line, and the bundle is still byte-identical to its manifest after the self-test ran.
- Each problem is printed as one ``FAIL`` line; the exit code is 1 if there is any.
- The self-test runs offscreen when there is no display, with a timeout, never over a network.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from outputs import BundleError, compare_manifest, parse_manifest

SELF_TEST_TIMEOUT_SECONDS = 180
OK_LINE = re.compile(r"self-test ok \(\d+ checks\)")


def check_manifest(bundle: Path, manifest: Path) -> list[str]:
    try:
        expected = parse_manifest(manifest.read_text(encoding="utf-8"))
        return compare_manifest(bundle, expected)
    except FileNotFoundError:
        return [f"no manifest at {manifest}"]
    except BundleError as exc:
        return [f"manifest: {exc.reason} ({exc.detail})"]


def check_sbom(sbom: Path) -> list[str]:
    try:
        document = json.loads(sbom.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"no readable SBOM at {sbom}"]
    if document.get("bomFormat") != "CycloneDX" or document.get("specVersion") != "1.5":
        return ["SBOM is not CycloneDX 1.5"]
    names = {c.get("name") for c in document.get("components", [])}
    missing = {"cryptography", "argon2-cffi", "sqlcipher3", "keyring", "pyside6-essentials"} - names
    forbidden = {"starlette", "uvicorn", "psycopg", "keyrings-alt", "pytest"} & names
    problems = [f"SBOM lacks {name}" for name in sorted(missing)]
    problems += [f"SBOM lists forbidden {name}" for name in sorted(forbidden)]
    return problems


def self_test_environment() -> dict[str, str]:
    env = dict(os.environ)
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY") and sys.platform == "linux":
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
    return env


def run_self_test(executable: Path) -> list[str]:
    try:
        result = subprocess.run(  # noqa: S603 (our own freshly built executable)
            [str(executable), "--self-test"],
            capture_output=True,
            text=True,
            timeout=SELF_TEST_TIMEOUT_SECONDS,
            env=self_test_environment(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"self-test did not run: {type(exc).__name__}"]
    sys.stderr.write(result.stderr)
    sys.stdout.write(result.stdout)
    lines = result.stdout.splitlines()
    if result.returncode != 0 or not lines or OK_LINE.fullmatch(lines[-1]) is None:
        return [f"self-test failed (exit {result.returncode})"]
    return []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="verify a built Gatehouse bundle")
    parser.add_argument("--dist", type=Path, default=Path("dist"))
    parser.add_argument("--name", default="gatehouse")
    args = parser.parse_args(argv)
    dist: Path = args.dist
    bundle = dist / args.name
    executable = bundle / (args.name + (".exe" if sys.platform == "win32" else ""))
    manifest = dist / f"{args.name}.sha256"

    problems = check_manifest(bundle, manifest)
    problems += check_sbom(dist / f"{args.name}.sbom.json")
    version = dist / f"{args.name}.version"
    if not version.is_file() or not version.read_text(encoding="utf-8").strip():
        problems.append(f"no version in {version}")
    if not problems:
        problems += run_self_test(executable)
        problems += [f"after self-test: {p}" for p in check_manifest(bundle, manifest)]
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        return 1
    print(f"verified: {bundle} matches {manifest.name}; self-test passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
