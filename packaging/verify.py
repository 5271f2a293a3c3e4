"""Verify a built bundle: manifest, outputs, and the frozen app's own self-test.

Usage: ``python packaging/verify.py [--dist dist] [--name gatehouse]``
       ``python packaging/verify.py --demo-out DIR``   (after ``packaging/demo_frozen.sh``)

Invariants:
- Exit 0 only when every file of ``dist/<name>/`` is in ``dist/<name>.sha256`` with the same
  SHA-256, no listed file is missing, no unlisted file exists, the SBOM and version files are
  present and well formed, ``dist/<name>/<name> --self-test`` exits 0 with its one ``self-test
  ok`` line, and the bundle is still byte-identical to its manifest after the self-test ran.
- Each problem is printed as one ``FAIL`` line; the exit code is 1 if there is any.
- The self-test runs offscreen when there is no display (``--headless``: the frozen app ignores
  ``QT_QPA_PLATFORM``), with a timeout, never over a network, and with every variable of
  ``hostile_environment`` set (NW-5): it passes only if the frozen app dropped them all.
- ``--demo-out DIR`` checks a headless demo run made with the frozen client instead: exit 0
  only when ``summary.json`` says the journey ran frozen and its audit export verified, the
  device and gateway folders exist, records came down and the consultation went up, every
  expected screen is a PNG of at least 500x300 that is not one flat colour, and
  ``gatehouse-audit verify`` (beside this Python) accepts the export again. Standard library
  only (no Qt in packaging/).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from outputs import BundleError, compare_manifest, parse_manifest

from client.never_ship import NEVER_SHIP_DISTRIBUTIONS

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
    forbidden = NEVER_SHIP_DISTRIBUTIONS & names
    problems = [f"SBOM lacks {name}" for name in sorted(missing)]
    problems += [f"SBOM lists forbidden {name}" for name in sorted(forbidden)]
    return problems


def hostile_environment(folder: Path) -> dict[str, str]:
    """Variables that would load code or move trust, all pointing into ``folder`` (NW-5).

    The frozen app must drop every one before Qt or Python load anything: a bogus platform
    name and plugin folder would make Qt abort, and its self-test fails on any survivor.
    """
    probe = {
        "QT_QPA_PLATFORM": "gatehouse-hostile",
        "QT_QPA_PLATFORM_PLUGIN_PATH": folder / "qt-platforms",
        "QT_PLUGIN_PATH": folder / "qt-plugins",
        "QT_QPA_PLATFORMTHEME": "gatehouse-hostile",
        "QT_STYLE_OVERRIDE": "gatehouse-hostile",
        "QT_LOGGING_CONF": folder / "qtlogging.ini",
        "QML2_IMPORT_PATH": folder / "qml",
        "QML_IMPORT_PATH": folder / "qml",
        "PYTHONPATH": folder / "python",
        "PYTHONSTARTUP": folder / "startup.py",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
        "SSL_CERT_FILE": folder / "ca.pem",
        "SSL_CERT_DIR": folder / "certs",
        "OPENSSL_CONF": folder / "openssl.cnf",
        "OPENSSL_MODULES": folder / "ossl-modules",
        "REQUESTS_CA_BUNDLE": folder / "ca.pem",
        "CURL_CA_BUNDLE": folder / "ca.pem",
        "SSLKEYLOGFILE": folder / "tls-keys.log",
        "LD_LIBRARY_PATH": folder / "lib",
        "KEYRING_PROPERTY_COLLECTION": "gatehouse-hostile",
    }
    return {name: str(value) for name, value in probe.items()}


def needs_headless() -> bool:
    return (
        sys.platform == "linux"
        and not os.environ.get("DISPLAY")
        and not (os.environ.get("WAYLAND_DISPLAY"))
    )


def run_self_test(executable: Path, hostile_folder: Path | None = None) -> list[str]:
    """The bundle's ``--self-test``, run with :func:`hostile_environment` set (NW-5)."""
    env = dict(os.environ)
    if hostile_folder is not None:
        hostile_folder.mkdir(parents=True, exist_ok=True)
        env.update(hostile_environment(hostile_folder))
    command = [str(executable), *(["--headless"] if needs_headless() else []), "--self-test"]
    try:
        result = subprocess.run(  # noqa: S603 (our own freshly built executable)
            command,
            capture_output=True,
            text=True,
            timeout=SELF_TEST_TIMEOUT_SECONDS,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"self-test did not run: {type(exc).__name__}"]
    sys.stderr.write(result.stderr)
    sys.stdout.write(result.stdout)
    lines = result.stdout.splitlines()
    if result.returncode != 0 or not lines or OK_LINE.fullmatch(lines[-1]) is None:
        return [f"self-test failed (exit {result.returncode})"]
    if hostile_folder is not None and any(hostile_folder.rglob("*")):
        return ["self-test wrote into the folder a hostile variable named"]
    return []


DEMO_SCREENS = (
    "provisioning",
    "first-sign-in",
    "sync",
    "search",
    "chart",
    "consultation",
    "break-glass",
    "draft-restored",
    "chart-incomplete",
    "chart-150",
    "locked",
    "audit",
    "audit-by-nhs-number",
)
MIN_SCREENS = 14
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_problem(path: Path) -> str | None:
    """None for a PNG of at least 500x300 that is not one flat colour, else what is wrong.

    A flat image's decompressed scanlines hold only its few colour bytes, zeros and the
    filter-type bytes; a real screen holds far more distinct byte values.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return "missing"
    if not data.startswith(PNG_SIGNATURE):
        return "not a PNG"
    offset, width, height, idat = len(PNG_SIGNATURE), 0, 0, bytearray()
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR" and len(body) >= 8:
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        offset += 12 + length
    if width < 500 or height < 300:
        return f"too small ({width}x{height})"
    try:
        pixels = zlib.decompress(bytes(idat))
    except zlib.error:
        return "corrupt image data"
    if len(set(pixels)) <= 16:
        return "blank (one flat colour)"
    return None


def check_demo(out: Path, audit_tool: Path) -> list[str]:
    """The frozen client's demo run in ``out`` (see the module docstring)."""
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"no readable summary.json in {out}"]
    problems = []
    if summary.get("frozen") is not True:
        problems.append("the journey did not run in the frozen client")
    if summary.get("audit_verified") is not True:
        problems.append("the demo's own audit verification failed")
    if not Path(str(summary.get("device_data")), "device.json").is_file():
        problems.append("no provisioned device folder")
    if not Path(str(summary.get("gateway_data")), "gateway.sqlite3").is_file():
        problems.append("no gateway data folder")
    sync = summary.get("sync") or {}
    if not int(sync.get("pulled") or 0) > 0 or not int(sync.get("pushed") or 0) > 0:
        problems.append(f"sync counts: pulled {sync.get('pulled')}, pushed {sync.get('pushed')}")
    screens = [str(name) for name in summary.get("screens") or []]
    if len(screens) < MIN_SCREENS:
        problems.append(f"only {len(screens)} screens (expected at least {MIN_SCREENS})")
    problems += [
        f"no {wanted} screen" for wanted in DEMO_SCREENS if not any(wanted in s for s in screens)
    ]
    for name in screens:
        problem = png_problem(out / Path(name).name)
        if problem:
            problems.append(f"screen {name}: {problem}")
    export = str(summary.get("audit_export") or "")
    try:
        verify = subprocess.run(  # noqa: S603 (the installed offline verifier)
            [str(audit_tool), "verify", export],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [*problems, f"gatehouse-audit verify did not run: {type(exc).__name__}"]
    if verify.returncode != 0:
        problems.append(f"gatehouse-audit verify refused the export: {verify.stdout.strip()}")
    return problems


def demo_main(out: Path) -> int:
    audit_tool = Path(sys.executable).parent / "gatehouse-audit"
    problems = check_demo(out, audit_tool)
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        return 1
    print(f"verified: the frozen client's demo journey in {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="verify a built Gatehouse bundle")
    parser.add_argument("--dist", type=Path, default=Path("dist"))
    parser.add_argument("--name", default="gatehouse")
    parser.add_argument("--demo-out", type=Path, help="check a frozen demo run instead")
    args = parser.parse_args(argv)
    if args.demo_out is not None:
        return demo_main(args.demo_out)
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
        with tempfile.TemporaryDirectory(prefix="gatehouse-hostile-") as hostile:
            problems += run_self_test(executable, Path(hostile) / "probe")
        problems += [f"after self-test: {p}" for p in check_manifest(bundle, manifest)]
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        return 1
    print(f"verified: {bundle} matches {manifest.name}; self-test passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
