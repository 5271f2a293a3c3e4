"""AD-1 across two files: an act that took effect is in the audit chain, whatever instant a
SIGKILL hits.

A password change re-wraps a key slot in ``vault.header``; a policy install replaces
``policy.store``; the chain lives in the vault database. A real child process does the act on a
fresh copy of a provisioned device and SIGKILLs itself right after its N-th ``os.fsync`` or
``os.replace`` (every fsync and rename of the act, N = 1, 2, ... until the act completes
without reaching N). After each kill the laptop restarts and signs in:

- password: exactly one of the old and the new password opens the vault; the new one does iff
  the chain holds one ``password_changed`` entry;
- policy: the installed version has exactly one ``policy_installed`` entry in the chain, also
  after a later sync finds the policy "current";
- the chain verifies, and SQLite's integrity check passes.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from keyring.backends import fail

from client.core.device import Device, FirstUser
from client.core.kdf import FLOOR
from client.core.keyslots import UnlockFailed, normalise_password, unwrap_slot
from client.core.session import Session
from client.core.sync_runner import SyncContext
from sync.protocol.audit.chain import verify
from sync.protocol.audit.entry import AuditEntry
from tests.support.device import DEVICE_ID, SITE, policy_envelope, trust_pem

ROOT = Path(__file__).resolve().parents[2]
USER = ("nurse.ad1", "old password for ad one")
NEW_PASSWORD = "new password for ad one"
MAX_KILL_POINTS = 60  # far more fsyncs and renames than either act does

# Kill this process (SIGKILL, no clean-up) right after the N-th fsync or rename from now on.
KILL_HOOK = """
import os, signal

def arm(n):
    count = [0]

    def after(real):
        def call(*args, **kwargs):
            result = real(*args, **kwargs)
            count[0] += 1
            if count[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return call

    os.fsync, os.replace, os.rename = after(os.fsync), after(os.replace), after(os.rename)
    return count
"""

PASSWORD_CHILD = """
import sys
from keyring.backends import fail
from client.core.device import Device
from client.core.kdf import FLOOR
from client.core.keyslots import UnlockFailed, normalise_password, unwrap_slot
from client.core.session import Session

device = Device.open(sys.argv[1], keyring_backend=fail.Keyring(), kdf_params=FLOOR)
session = Session.login(device, {user!r}, {old!r})
count = arm(int(sys.argv[2]))
session.change_password({old!r}, {new!r})
print("completed", count[0], flush=True)
"""

POLICY_CHILD = """
import sys
from pathlib import Path
from keyring.backends import fail
from client.core.device import Device
from client.core.kdf import FLOOR
from client.core.keyslots import UnlockFailed, normalise_password, unwrap_slot
from client.core.session import Session
from client.core.sync_runner import SyncContext

device = Device.open(sys.argv[1], keyring_backend=fail.Keyring(), kdf_params=FLOOR)
session = Session.login(device, {user!r}, {old!r})
envelope = Path(sys.argv[3]).read_bytes()
context = SyncContext(session)
count = arm(int(sys.argv[2]))
outcome = context.offer_policy(envelope)
context.close()
print("completed", count[0], outcome, flush=True)
"""


def _provision(data: Path) -> None:
    Device.provision(
        data,
        device_id=DEVICE_ID,
        site=SITE,
        trust_keys=[trust_pem()],
        trust_threshold=1,
        policy_envelope=policy_envelope(
            around=dt.datetime.now(dt.UTC), keyring__allow_file_fallback=True
        ),
        first_user=FirstUser(USER[0], "clinician", USER[1]),
        keyring_backend=fail.Keyring(),
        kdf_params=FLOOR,
    )


def _open(data: Path) -> Device:
    return Device.open(data, keyring_backend=fail.Keyring(), kdf_params=FLOOR)


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )


def _opens(device: Device, password: str) -> bool:
    """Does ``password`` unwrap the user's key slot? (Slot cryptography only: trying the wrong
    password through a sign-in would count as a failed attempt and throttle the next one.)"""
    slot = device.header._slot(USER[0])
    assert slot is not None
    secret = device.keyring.device_secret()
    try:
        unwrap_slot(slot, normalise_password(password), secret, DEVICE_ID)
    except UnlockFailed:
        return False
    return True


def _checked_chain(session: Session) -> list[AuditEntry]:
    with session._act() as conn:  # raw read: the clinician role may not list the audit
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        entries = session._audit.entries(conn)
    report = verify(entries, device_id=DEVICE_ID, initial_key=None)
    assert report.ok, report.sentence
    return entries


def _kill_rounds(tmp_path: Path, child: str, *extra: str) -> list[tuple[int, Path]]:
    """Run the act killed after each fsync/rename; the killed copies, by kill point."""
    template = tmp_path / "template"
    _provision(template)
    script = tmp_path / "child.py"
    script.write_text(
        KILL_HOOK + textwrap.dedent(child.format(user=USER[0], old=USER[1], new=NEW_PASSWORD))
    )
    killed: list[tuple[int, Path]] = []
    for point in range(1, MAX_KILL_POINTS + 1):
        data = tmp_path / f"round-{point}"
        shutil.copytree(template, data)
        done = _run(script, str(data), str(point), *extra)
        if done.returncode == 0:
            assert done.stdout.startswith("completed"), done.stdout
            assert point > 1, "the act did no fsync or rename at all"
            print(f"{len(killed)} kill points, then: {done.stdout.strip()}")
            return killed
        assert done.returncode == -9, done.stderr[-2000:]
        killed.append((point, data))
    pytest.fail(f"the act still had an fsync or rename after {MAX_KILL_POINTS}")


def test_AD1_password_change_killed_after_each_fsync_or_rename_is_audited_iff_it_took_effect(
    tmp_path: Path,
) -> None:
    killed = _kill_rounds(tmp_path, PASSWORD_CHILD)
    outcomes = []
    for point, data in killed:
        device = _open(data)
        opens_new, opens_old = _opens(device, NEW_PASSWORD), _opens(device, USER[1])
        assert opens_new != opens_old, f"kill point {point}: exactly one password must work"
        changed = opens_new
        session = Session.login(device, USER[0], NEW_PASSWORD if changed else USER[1])
        entries = _checked_chain(session)
        session.lock()
        recorded = [e for e in entries if e.action == "password_changed"]
        assert len(recorded) == (1 if changed else 0), f"kill point {point}: changed={changed}"
        if changed:
            assert (recorded[0].user_id, recorded[0].role) == (USER[0], "clinician")
        outcomes.append(changed)
    assert True in outcomes and False in outcomes, "the kill points never split the act"


def test_AD1_policy_install_killed_after_each_fsync_or_rename_has_its_entry(
    tmp_path: Path,
) -> None:
    newer = tmp_path / "policy-v2.jws"
    newer.write_bytes(
        policy_envelope(2, around=dt.datetime.now(dt.UTC), keyring__allow_file_fallback=True)
    )
    killed = _kill_rounds(tmp_path, POLICY_CHILD, str(newer))
    versions = []
    for point, data in killed:
        device = _open(data)
        session = Session.login(device, *USER)
        installed = device.policy().version
        context = SyncContext(session)  # a later sync: the gateway offers the same policy
        outcome = context.offer_policy(newer.read_bytes())
        context.close()
        assert outcome == ("current" if installed == 2 else "installed")
        entries = _checked_chain(session)
        session.lock()
        recorded = [e.detail.get("version") for e in entries if e.action == "policy_installed"]
        assert recorded.count(1) == 1, f"kill point {point}: {recorded}"
        assert recorded.count(2) == 1, f"kill point {point}: {recorded}"
        versions.append(installed)
    assert 2 in versions, "no kill landed after the policy file was replaced"
