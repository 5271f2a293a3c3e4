"""CR-1 for a consultation save: SIGKILL at random instants while a child process saves
consultations; after every restart each consultation exists whole (records, outbox entries and
its audit entry) or not at all, the database is intact and the audit chain verifies.

The keyring is the policy-allowed file fallback here, because an in-memory keyring cannot be
shared with a child process; the real Secret Service path is covered by test_cli.py.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from keyring.backends import fail

from client.core.device import Device, FirstUser
from client.core.kdf import FLOOR
from client.core.session import Session
from sync.gateway.seed.generator import generate
from sync.protocol.audit.chain import verify
from tests.support.device import DEVICE_ID, SITE, load_records, policy_envelope, trust_pem

USER = ("nurse.kill", "kill nine safe password")
ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys
import pytest
from keyring.backends import fail
from client.core.consultation import Vital
from client.core.device import Device
from client.core.kdf import FLOOR
from client.core.session import Session

device = Device.open(sys.argv[1], keyring_backend=fail.Keyring(), kdf_params=FLOOR)
session = Session.login(device, {user!r}, {password!r})
patient = sys.argv[2]
print("ready", flush=True)
i = 0
while True:
    i += 1
    session.write_consultation(
        patient,
        vitals=[Vital("heart_rate", 60 + i % 40), Vital("temperature", 36.5)],
        note_text=f"kill-test note {{sys.argv[3]}}-{{i}}",
        plan_text="plan",
    )
"""


def _provision(data: Path) -> Device:
    return Device.provision(
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


@pytest.mark.timeout(max(300, 2 * int(os.environ.get("GATEHOUSE_KILL_ROUNDS", "12"))))
def test_CR1_kill_9_during_consultation_saves_loses_or_duplicates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "device"
    device = _provision(data)
    assert device.keyring.is_weak  # the fallback, as the policy allowed
    resources = [
        r for r in generate(sites=1, patients=3, seed=3) if r["resourceType"] != "Organization"
    ]
    load_records(device, resources, user=USER)
    patient = next(str(r["id"]) for r in resources if r["resourceType"] == "Patient")
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(user=USER[0], password=USER[1])))
    rng = random.Random(1234)
    kills = int(os.environ.get("GATEHOUSE_KILL_ROUNDS", "12"))
    for round_no in range(kills):
        child = subprocess.Popen(
            [sys.executable, str(script), str(data), patient, str(round_no)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.01, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()

    device = Device.open(data, keyring_backend=fail.Keyring(), kdf_params=FLOOR)
    session = Session.login(device, *USER)
    with session._act() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA cipher_integrity_check").fetchall() == []
        notes = conn.execute(
            "SELECT count(*) FROM resources"
            " WHERE type = 'DocumentReference' AND client_id IS NOT NULL"
        ).fetchone()[0]
        encounters = conn.execute(
            "SELECT count(*) FROM resources WHERE type = 'Encounter' AND client_id IS NOT NULL"
        ).fetchone()[0]
        observations = conn.execute(
            "SELECT count(*) FROM resources WHERE type = 'Observation' AND client_id IS NOT NULL"
        ).fetchone()[0]
        outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        entries = session._audit.entries(conn)
    written = [e for e in entries if e.action == "note_written"]
    assert notes > 0, "the child never saved anything; the kill timing is wrong"
    assert notes == encounters == len(written)
    assert observations == 2 * notes
    assert outbox == notes + encounters + observations
    report = verify(entries, device_id=DEVICE_ID, initial_key=None)
    assert report.ok, report.sentence
    logins = [e for e in entries if e.action == "login_ok"]
    assert len(logins) == kills + 1  # every child's login, and ours now
    session.lock()
