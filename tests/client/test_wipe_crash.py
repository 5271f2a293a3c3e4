"""WP-2 after kill -9: a remote wipe's receipt reaches the gateway whatever instant the laptop
died at (issue 16 item 5), against the real gateway over real mutual TLS.

Each round enrols a fresh laptop (real SQLCipher vault, the policy-allowed file keyring so a
child process can share it), queues a remote wipe, and runs a real sync in a child process
that SIGKILLs itself right after the N-th fsync, rename, unlink or request to the gateway
counted from the moment the wipe command starts (N = 1, 2, … until a round completes
unkilled, so every such point of the wipe is hit once). Then the laptop starts again (what the
app and every ``gatehouse device`` command do first) and, if the wipe had not begun, makes
its next contact (sign-in and sync). After every round: the gateway's command is no longer
"pending", the device is "wiped", and nothing of the vault, its keys or the report is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path

import pytest
from keyring.backends import fail

from client.core.device import Device, is_provisioned, report_wipe_if_any
from client.core.kdf import FLOOR
from client.core.provisioning import add_user_online
from client.core.session import Session
from client.core.sync_runner import run_sync
from sync.gateway.store.base import CommandRecord
from tests.support.gateway import Gateway
from tests.support.laptop import NURSE, laptop_gateway, now, provision_laptop

ROOT = Path(__file__).resolve().parents[2]
MAX_ROUNDS = 80  # far more than a wipe's operations; a runaway loop fails instead

CHILD = """
import os
import signal
import sys

from keyring.backends import fail

from client.core import sync_runner
from client.core.device import Device
from client.core.kdf import FLOOR
from client.core.session import Session
from sync.device.transport import Transport

kill_at = int(sys.argv[2])
armed = False
count = 0


def counted(operation):
    def run(*args, **kwargs):
        global count
        result = operation(*args, **kwargs)
        if armed:
            count += 1
            if count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return result

    return run


os.fsync = counted(os.fsync)
os.replace = counted(os.replace)
os.rename = counted(os.rename)
os.unlink = counted(os.unlink)
Transport.post_json = counted(Transport.post_json)
Transport.get = counted(Transport.get)
real_run_command = sync_runner.SyncContext.run_command


def run_command(self, command):
    global armed
    armed = armed or command.kind == "wipe"
    return real_run_command(self, command)


sync_runner.SyncContext.run_command = run_command
device = Device.open(sys.argv[1], keyring_backend=fail.Keyring(), kdf_params=FLOOR)
session = Session.login(device, {user!r}, {password!r})
result = sync_runner.run_sync(session)
print("unkilled", count, result.control.get("wipe_report"), flush=True)
"""


def _queue_wipe(gw: Gateway, device_id: str) -> str:
    command_id = str(uuid.uuid4())
    gw.store.add_command(
        CommandRecord(command_id, device_id, "wipe", None, now(), "pending")  # type: ignore[arg-type]
    )
    return command_id


def _next_contact(data: Path) -> str:
    """The laptop starts again; if it still holds its vault (the wipe never began), the next
    sign-in and sync is its next contact, which runs the command again."""
    sent = report_wipe_if_any(data, keyring_backend=fail.Keyring())
    if not is_provisioned(data):
        return f"start:{sent}"
    device = Device.open(data, keyring_backend=fail.Keyring(), kdf_params=FLOOR)
    session = Session.login(device, *NURSE, for_sync=True)
    result = run_sync(session)
    session.lock()
    return f"sync:{result.control.get('wipe_report')}"


@pytest.mark.timeout(1200)
def test_WP2_kill_9_after_each_fsync_rename_unlink_and_send_of_a_remote_wipe(
    tmp_path: Path,
) -> None:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(user=NURSE[0], password=NURSE[1])))
    paths: Counter[str] = Counter()
    with laptop_gateway(tmp_path / "gw", keyring__allow_file_fallback=True) as gw:
        for kill_at in range(1, MAX_ROUNDS + 1):
            data = tmp_path / f"laptop-{kill_at}"
            device = provision_laptop(gw, data, fail.Keyring())
            add_user_online(device, *NURSE)
            device_id = device.profile.device_id
            command_id = _queue_wipe(gw, device_id)
            child = subprocess.run(
                [sys.executable, str(script), str(data), str(kill_at)],
                capture_output=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                timeout=120,
                check=False,
            )
            killed = child.returncode == -9
            assert killed or child.returncode == 0, child.stderr.decode()[-2000:]
            path = _next_contact(data)
            paths[path if killed else "unkilled"] += 1
            command = gw.store.command(command_id)
            assert command is not None and command.status == "done", (kill_at, path)
            assert gw.store.device(device_id).status == "wiped", (kill_at, path)  # type: ignore[union-attr]
            left = sorted(p.name for p in data.iterdir())
            assert left == [], (kill_at, path, left)
            if not killed:
                break
        else:
            pytest.fail("the wipe never completed unkilled")
    print(f"\nkill points: {kill_at - 1}; next-start paths: {dict(paths)}")
    assert kill_at > 10  # the wipe's own writes, the receipt and the report were all hit
