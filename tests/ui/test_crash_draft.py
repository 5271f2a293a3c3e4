"""CR-4 under SIGKILL: a clinician typing a consultation in the real window loses at most the
last few seconds when the process is killed (the autosave keeps an encrypted draft in the vault).

A child process runs the real MainWindow offscreen, signs in, opens a patient, and types a note
word by word, printing (length typed, monotonic time) after each word. The parent kills it at a
random moment; the restarted app must restore a draft that is a prefix of what was typed and no
shorter than what had been typed ``AUTOSAVE_MS`` + slack before the kill.
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
from client.ui.consultation_form import AUTOSAVE_MS
from sync.gateway.seed.generator import generate
from sync.protocol.audit.chain import verify
from tests.support.device import DEVICE_ID, SITE, load_records, policy_envelope, trust_pem

USER = ("nurse.draft", "kill nine draft password")
ROOT = Path(__file__).resolve().parents[2]
SLACK_S = 3.0  # scheduling on a loaded 2-core machine: the autosave tick may run late

CHILD = """
import os, sys, time
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from keyring.backends import fail
from client.core.device import Device
from client.core.kdf import FLOOR
from client.ui.qt import QApplication, Qt
from client.ui.main_window import MainWindow
from client.ui.consultation_form import ConsultationForm

app = QApplication([])
device = Device.open(sys.argv[1], keyring_backend=fail.Keyring(), kdf_params=FLOOR)
win = MainWindow(device, launch_check=lambda _policy, _data: [])
win.app_state = lambda: Qt.ApplicationState.ApplicationActive
win.show()


def wait(condition, seconds=60.0):
    end = time.monotonic() + seconds
    while not condition():
        app.processEvents()
        time.sleep(0.01)
        if time.monotonic() > end:
            raise SystemExit("timed out")


win.login_screen.user.setText({user!r})
win.login_screen.password.setText({password!r})
win.login_screen.submit()
wait(lambda: win.session is not None)
ws = win.workspace
ws.open_patient(sys.argv[2])
wait(lambda: ws.patient_screen is not None)
ws.new_consultation()
wait(lambda: isinstance(ws.patient_screen, ConsultationForm))
form = ws.patient_screen
print("ready", flush=True)
for i in range(100000):
    form.note.insertPlainText(f"word{{i}} ")
    print(len(form.note.toPlainText()), time.monotonic(), flush=True)
    pause = time.monotonic() + 0.1
    while time.monotonic() < pause:
        app.processEvents()
        time.sleep(0.01)
"""


def _typed(length: int) -> str:
    text, i = "", 0
    while len(text) < length:
        text += f"word{i} "
        i += 1
    return text


@pytest.mark.timeout(300)
def test_cr4_kill_9_while_typing_loses_at_most_the_last_seconds(tmp_path: Path) -> None:
    data = tmp_path / "device"
    device = Device.provision(
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
    resources = [
        r for r in generate(sites=1, patients=3, seed=5) if r["resourceType"] != "Organization"
    ]
    load_records(device, resources, user=USER)
    patients = [str(r["id"]) for r in resources if r["resourceType"] == "Patient"]
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(user=USER[0], password=USER[1])))
    rng = random.Random(4)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": "offscreen"}
    for round_no, patient in enumerate(patients[:3]):  # a fresh patient (empty form) each round
        child = subprocess.Popen(
            [sys.executable, str(script), str(data), patient],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready", "the child never started typing"
        typed: list[tuple[int, float]] = []
        # Late enough that the promise (typed AUTOSAVE_MS + SLACK_S before the kill is kept)
        # covers some of the typing, so "something survived" is owed in every round.
        promised_s = AUTOSAVE_MS / 1000 + SLACK_S
        kill_at = time.monotonic() + rng.uniform(promised_s + 1.0, promised_s + 5.0)
        while time.monotonic() < kill_at:
            line = child.stdout.readline().split()
            typed.append((int(line[0]), float(line[1])))
        child.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        child.wait(10)
        child.stdout.close()

        reopened = Device.open(data, keyring_backend=fail.Keyring(), kdf_params=FLOOR)
        session = Session.login(reopened, *USER)
        try:
            draft = session.draft(patient)
            with session._act() as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                entries = session._audit.entries(conn)
        finally:
            session.lock()
        assert verify(entries, device_id=DEVICE_ID, initial_key=None).ok
        assert draft is not None, f"round {round_no}: nothing typed survived the kill"
        kept = draft.fields.note
        full = _typed(typed[-1][0])
        assert full.startswith(kept), "the draft is not what was typed"
        deadline = killed - AUTOSAVE_MS / 1000 - SLACK_S
        must_have = max((n for n, at in typed if at <= deadline), default=0)
        assert must_have > 0, "the kill came before any promise was owed"
        assert len(kept) >= must_have, (
            f"round {round_no}: kept {len(kept)} chars, but {must_have} were typed "
            f"{AUTOSAVE_MS / 1000 + SLACK_S:.0f} s before the kill"
        )
