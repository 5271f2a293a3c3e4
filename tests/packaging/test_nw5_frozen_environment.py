"""NW-5: the frozen app drops every variable that could load code or change trust, first thing.

Real parts: the entry script and the runtime hook run in a real child Python with hostile
variables set, and the C-level environment (what Qt and OpenSSL read) is inspected there; the
self-test check is the one the frozen bundle runs. When ``dist/gatehouse`` is built (CI:
``make package``), the bundle's own self-test runs under the same hostile variables.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from client import launch_environment
from client.launch_environment import hostile_names, is_hostile, scrub
from client.selftest import CheckFailed, Context, SelfTestReport
from client.selftest.environment import check_environment

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "packaging"))

from verify import hostile_environment, run_self_test  # noqa: E402

ENTRY = ROOT / "packaging" / "gatehouse_main.py"
RUNTIME_HOOK = ROOT / "packaging" / "rthook_clean_environment.py"
BUNDLE = ROOT / "dist" / "gatehouse" / "gatehouse"
# The PyInstaller bootloader starts Python ignoring PYTHON* (Py_IgnoreEnvironmentFlag); a plain
# interpreter does the same with -E, so PYTHONHOME cannot stop it before the entry script runs.
FROZEN_LIKE = ("-E",)
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)

LOADER_AND_CASE = {
    "LD_PRELOAD": "/tmp/evil.so",
    "LD_AUDIT": "/tmp/evil.so",
    "DYLD_INSERT_LIBRARIES": "/tmp/evil.dylib",
    "qt_plugin_path": "/tmp/evil",  # Windows names are case-insensitive
    "PYTHONHOME": "/tmp/evil",
    "OPENSSL_ENGINES": "/tmp/evil",
}
HARMLESS = {
    "HOME": "/home/nurse",
    "DISPLAY": ":0",
    "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus",
    "QT_SCALE_FACTOR": "1.5",
    "QT_IM_MODULE": "ibus",
    "LANG": "en_GB.UTF-8",
}


def _hostile(tmp_path: Path) -> dict[str, str]:
    return {**hostile_environment(tmp_path / "probe"), **LOADER_AND_CASE}


def test_nw5_scrub_drops_every_variable_that_loads_code_or_moves_trust(tmp_path: Path) -> None:
    env = {**_hostile(tmp_path), **HARMLESS}
    pins = {"QT_PLUGIN_PATH": "/opt/gatehouse/_internal/PySide6/Qt/plugins"}

    removed = scrub(env, pins)

    assert env == {**HARMLESS, **pins}
    assert set(removed) == set(_hostile(tmp_path)) - set(pins)
    assert hostile_names(env, pins) == []
    for name in ("QT_QPA_PLATFORM_PLUGIN_PATH", "QML2_IMPORT_PATH", "SSL_CERT_FILE", "LD_PRELOAD"):
        assert is_hostile(name)


def test_nw5_entry_script_cleans_before_any_other_import() -> None:
    body = [
        node
        for node in ast.parse(ENTRY.read_text(encoding="utf-8")).body
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
        and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
    ]
    first, second = body[0], body[1]
    assert isinstance(first, ast.ImportFrom) and first.module == "client.launch_environment"
    assert isinstance(second, ast.Expr) and isinstance(second.value, ast.Call)
    assert ast.unparse(second.value) == "harden_frozen_process()"
    # the runtime hook (earliest Python in the bundle) does the same, and the spec runs it
    hook = ast.unparse(ast.parse(RUNTIME_HOOK.read_text(encoding="utf-8")))
    assert "from client.launch_environment import harden_frozen_process" in hook
    assert "runtime_hooks=[str(ROOT / 'packaging' / 'rthook_clean_environment.py')]" in (
        ast.unparse(ast.parse((ROOT / "packaging" / "gatehouse.spec").read_text()))
    )


def _child_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not is_hostile(k)}
    return {**env, **_hostile(tmp_path)}


def test_nw5_entry_script_leaves_a_clean_c_environment_in_a_real_process(tmp_path: Path) -> None:
    probe = (
        "import json, runpy, sys\n"
        f"runpy.run_path({str(ENTRY)!r}, run_name='gatehouse_entry')\n"
        "from client.launch_environment import hostile_names\n"
        "from client.selftest.environment import process_environment\n"
        "print(json.dumps(hostile_names(process_environment())))\n"
    )
    done = subprocess.run(
        [sys.executable, *FROZEN_LIKE, "-c", probe],
        env=_child_env(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_nw5_entry_script_runs_headless_by_flag_with_hostile_qt_variables(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, *FROZEN_LIKE, str(ENTRY), "--headless", "--self-test"],
        env=_child_env(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    assert done.stdout.splitlines()[-1].startswith("self-test ok")
    assert "Qt platform 'offscreen'" in done.stderr
    assert not any((tmp_path / "probe").rglob("*")), "something was written where a variable said"


def test_nw5_self_test_check_fails_in_a_frozen_app_with_a_variable_left(tmp_path: Path) -> None:
    report = SelfTestReport()
    context = Context(NOW, tmp_path, report)
    dirty = {**HARMLESS, "QT_QPA_PLATFORM_PLUGIN_PATH": "/tmp/evil", "SSL_CERT_FILE": "/x"}
    with pytest.raises(CheckFailed) as failed:
        check_environment(context, frozen=True, env=dirty)
    assert failed.value.reason == "environment_not_clean"
    assert failed.value.detail == "QT_QPA_PLATFORM_PLUGIN_PATH, SSL_CERT_FILE"
    assert "/tmp/evil" not in failed.value.detail

    scrub(dirty, launch_environment.bundle_pins())
    check_environment(context, frozen=True, env={**dirty, "QT_QPA_PLATFORM": "offscreen"})


@pytest.mark.frozen_bundle  # run by `make package` right after the build, so never skipped
def test_nw5_frozen_bundle_self_test_passes_under_hostile_variables(tmp_path: Path) -> None:
    assert BUNDLE.is_file(), f"no frozen bundle at {BUNDLE}: run `make package`"
    assert run_self_test(BUNDLE, tmp_path / "probe") == []
