"""``gatehouse --self-test`` (client.selftest): passes on a sound installation, and names the
check that fails when an ingredient is missing or wrong — one line per failure, non-zero exit.

Real SQLCipher, real Argon2id, real Ed25519 policy signing, real in-memory TLS 1.3 and real Qt
(offscreen). The only substitutions stand in for a broken environment: a plain sqlite3 in
place of SQLCipher, an OpenSSL without TLS 1.3, an installed keyrings.alt.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from client import selftest
from client.selftest import bundle, crypto, database, gui, os_keyring, tls

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PACKAGE_FILES = sorted(Path(selftest.__file__).parent.glob("*.py"))


def _context(report: selftest.SelfTestReport, tmp_path: Path) -> selftest.Context:
    return selftest.Context(NOW, tmp_path, report)


def test_every_check_passes_on_this_installation() -> None:
    report = selftest.run_checks(now=NOW)
    assert report.failures == []
    assert report.checks == list(selftest.CHECKS)
    assert any(note.startswith("SQLCipher 4.") for note in report.notes)
    assert any(note.startswith("TLS 1.3") for note in report.notes)


def test_main_prints_exactly_one_ok_line_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert selftest.main() == 0
    out = capsys.readouterr().out
    assert out == f"self-test ok ({len(selftest.CHECKS)} checks)\n"


def test_ST2_plain_sqlite_in_place_of_sqlcipher_fails_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(database, "SQLCIPHER_MODULE", "sqlite3")
    failures = selftest.run_self_test(now=NOW, only={"sqlcipher"})
    assert [(f.check, f.reason) for f in failures] == [("sqlcipher", "sqlcipher_missing")]

    assert selftest.main() == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["FAIL sqlcipher: sqlcipher_missing: sqlite3 is not SQLCipher"]


def test_a_missing_sqlcipher_module_is_a_failure_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(database, "SQLCIPHER_MODULE", "no_such_sqlcipher_module")
    failures = selftest.run_self_test(now=NOW, only={"sqlcipher", "fts5"})
    assert {(f.check, f.reason) for f in failures} == {
        ("sqlcipher", "sqlcipher_missing"),
        ("fts5", "sqlcipher_missing"),
    }


def test_ST4_argon2id_must_reproduce_its_known_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert selftest.run_self_test(now=NOW, only={"argon2id"}) == []
    monkeypatch.setattr(crypto, "ARGON2_KAT_HEX", "00" * 32)
    failures = selftest.run_self_test(now=NOW, only={"argon2id"})
    assert [f.reason for f in failures] == ["argon2_wrong_answer"]


def test_NW1_tls13_missing_from_openssl_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls.ssl, "HAS_TLSv1_3", False)
    failures = selftest.run_self_test(now=NOW, only={"tls13"})
    assert [f.reason for f in failures] == ["tls13_missing"]


def test_PO1_signed_policy_check_passes_with_a_fresh_key_each_run() -> None:
    assert selftest.run_self_test(now=NOW, only={"signed_policy"}) == []
    # No key material is committed: no self-test source holds a PEM or raw key literal.
    for path in PACKAGE_FILES:
        source = path.read_text(encoding="utf-8")
        assert "PRIVATE KEY-----" not in source and "from_private_bytes" not in source


def test_ST5_a_forbidden_keyring_backend_is_a_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What keyrings.alt would register (a plain class: registering a real KeyringBackend
    # subclass would leak into every later keyring lookup in this process).
    PlaintextKeyring = type("PlaintextKeyring", (), {"__module__": "keyrings.alt.file"})
    monkeypatch.setattr("keyring.backend.get_all_keyring", lambda: [PlaintextKeyring()])
    report = selftest.SelfTestReport()
    with pytest.raises(selftest.CheckFailed) as caught:
        os_keyring.check_keyring(_context(report, tmp_path))
    assert caught.value.reason == "keyring_forbidden_backend"
    assert "keyrings.alt.file.PlaintextKeyring" in caught.value.detail


def test_ST5_no_keyring_backend_is_a_warning_with_exit_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from keyring.backends import fail

    monkeypatch.setattr("keyring.backend.get_all_keyring", lambda: [fail.Keyring()])
    monkeypatch.setattr("client.core.device_keyring.get_all_keyring", lambda: [fail.Keyring()])
    report = selftest.SelfTestReport()
    os_keyring.check_keyring(_context(report, tmp_path))
    assert report.failures == []
    assert len(report.warnings) == 1 and "keyring.backends.fail.Keyring" in report.warnings[0]


def test_the_frozen_bundle_check_refuses_gateway_and_test_code(tmp_path: Path) -> None:
    report = selftest.SelfTestReport()
    # In the development venv the gateway extra and the tests are importable: exactly what
    # a frozen laptop bundle must not contain.
    with pytest.raises(selftest.CheckFailed) as caught:
        bundle.check_bundle_contents(_context(report, tmp_path), frozen=True)
    assert caught.value.reason == "bundle_forbidden_module"
    assert "sync.gateway" in caught.value.detail and "starlette" in caught.value.detail
    bundle.check_bundle_contents(_context(report, tmp_path), frozen=False)


def test_qt_platform_plugin_lookup_finds_offscreen_and_not_a_missing_one() -> None:
    from client.ui import qt

    plugin_dirs = list(qt.QApplication.libraryPaths())
    assert gui.platform_plugin_present(plugin_dirs, "offscreen")
    assert not gui.platform_plugin_present(plugin_dirs, "nosuchplatform")


def test_offscreen_is_chosen_only_without_a_display_or_explicit_platform() -> None:
    env: dict[str, str] = {}
    gui.prepare_qt_environment(env)
    assert env == ({"QT_QPA_PLATFORM": "offscreen"} if sys.platform == "linux" else {})
    env = {"DISPLAY": ":0"}
    gui.prepare_qt_environment(env)
    assert "QT_QPA_PLATFORM" not in env
    env = {"QT_QPA_PLATFORM": "xcb"}
    gui.prepare_qt_environment(env)
    assert env == {"QT_QPA_PLATFORM": "xcb"}


def test_an_unexpected_exception_in_a_check_is_reported_by_type_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(ctx: selftest.Context) -> None:
        raise RuntimeError("secret detail that must not be printed")

    monkeypatch.setitem(selftest.CHECKS, "fts5", broken)
    failures = selftest.run_self_test(now=NOW, only={"fts5"})
    assert [f.line() for f in failures] == ["FAIL fts5: unexpected_error: RuntimeError"]


def test_importing_the_package_imports_no_qt() -> None:
    assert len(PACKAGE_FILES) > 1
    for path in PACKAGE_FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = [a.name for n in top_level if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in top_level if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.startswith(("PySide6", "client.ui"))], path
    code = "import sys, client.selftest; print(any(m.startswith('PySide6') for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
