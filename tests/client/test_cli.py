"""The device CLI, run as real processes against a real Secret Service (gnome-keyring in
dbus-run-session): provision, status, export the audit chain and verify it with gatehouse-audit.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.device import DEVICE_ID, SITE, policy_envelope, trust_pem

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.secret_service


def _in_keyring_session(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    if not shutil.which("dbus-run-session") or not shutil.which("gnome-keyring-daemon"):
        pytest.skip("dbus-run-session and gnome-keyring-daemon are not installed")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    wrapper = tmp_path / "run.sh"
    wrapper.write_text(
        "set -euo pipefail\n"
        "printf 'keyring-test' | gnome-keyring-daemon --unlock --components=secrets >/dev/null\n"
        + script
    )
    env = {
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_RUNTIME_DIR": str(tmp_path),
    }
    return subprocess.run(
        ["dbus-run-session", "--", "bash", str(wrapper)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_device_init_status_and_audit_export_round_trip(tmp_path: Path) -> None:
    (tmp_path / "policy.jws").write_bytes(policy_envelope(around=dt.datetime.now(dt.UTC)))
    (tmp_path / "trust.pem").write_text(trust_pem())
    data, export = tmp_path / "device", tmp_path / "audit.json"
    result = _in_keyring_session(
        tmp_path,
        f"""
printf 'a long enough admin password\\n' | gatehouse device init --data {data} \\
    --device-id {DEVICE_ID} --site {SITE} --policy {tmp_path}/policy.jws \\
    --trust {tmp_path}/trust.pem --user it.admin --role admin
gatehouse device status --data {data} --json > {tmp_path}/status.json
printf 'a long enough admin password\\n' | gatehouse device export-audit --data {data} \\
    {export} --user it.admin
gatehouse-audit verify {export}
if printf 'wrong password here\\n' | gatehouse device export-audit --data {data} \\
    {tmp_path}/x.json --user it.admin 2> {tmp_path}/err.txt; then exit 9; fi
""",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "keyring: Secret Service" in result.stdout or "SecretService" in result.stdout
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["device_id"] == DEVICE_ID and status["site"] == SITE
    assert status["policy"]["version"] == 1 and status["policy"]["mode"] == "normal"
    assert status["keyring_weak"] is False
    assert status["users"] == [{"user_id": "it.admin", "role": "admin"}]
    assert "OK:" in result.stdout
    error = (tmp_path / "err.txt").read_text()
    assert error.startswith("error: The user name or password is not right.")
    assert "Traceback" not in error


def test_init_refuses_a_password_given_too_short_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "policy.jws").write_bytes(policy_envelope(around=dt.datetime.now(dt.UTC)))
    (tmp_path / "trust.pem").write_text(trust_pem())
    result = _in_keyring_session(
        tmp_path,
        f"""
printf 'short\\n' | gatehouse device init --data {tmp_path}/d --device-id d1 --site {SITE} \\
    --policy {tmp_path}/policy.jws --trust {tmp_path}/trust.pem --user u1 --role clinician \\
    && exit 9 || echo "exit=$?"
""",
    )
    assert result.returncode == 0, result.stderr
    assert "exit=1" in result.stdout
    assert "at least 12 characters" in result.stderr
    assert "Traceback" not in result.stderr
