"""The demo journey's plumbing (client/ui/journey.py): users from stdin, the gateway hook the
frozen client calls, the hidden CLI entry. The journey itself runs in tests/test_demo.py."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from client import cli
from client.ui.journey_inputs import Credentials, HookGatewayOps, JourneyError, JourneyUsers

USERS = JourneyUsers(Credentials("nurse.x", "pw nurse secret"), Credentials("ig.x", "pw ig"))


def test_users_round_trip_as_json_and_never_print_their_passwords() -> None:
    assert JourneyUsers.from_json(USERS.to_json()) == USERS
    assert "secret" not in repr(USERS)
    assert "nurse.x" in repr(USERS)


@pytest.mark.parametrize("text", ["", "not json", "{}", '{"clinician": {"user": "a"}}', "[1]"])
def test_unreadable_users_are_one_input_error(text: str) -> None:
    with pytest.raises(JourneyError) as caught:
        JourneyUsers.from_json(text)
    assert caught.value.reason == "input"


def test_the_hook_gets_the_transfer_and_the_patient_id(tmp_path: Path) -> None:
    record = tmp_path / "args.json"
    script = f"import json,sys; open({str(record)!r},'w').write(json.dumps(sys.argv[1:]))"
    ops = HookGatewayOps(f"{sys.executable} -c {json.dumps(script)} --gateway somewhere")
    ops.transfer_patient("pat-123")
    assert json.loads(record.read_text()) == [
        "--gateway",
        "somewhere",
        "transfer-patient",
        "pat-123",
    ]


def test_a_failing_or_missing_hook_stops_the_journey(tmp_path: Path) -> None:
    with pytest.raises(JourneyError) as failed:
        HookGatewayOps(f"{sys.executable} -c 'raise SystemExit(3)'").transfer_patient("p")
    assert failed.value.reason == "gateway_hook"
    with pytest.raises(JourneyError) as missing:
        HookGatewayOps(str(tmp_path / "no-such-hook")).transfer_patient("p")
    assert missing.value.reason == "gateway_hook"
    with pytest.raises(JourneyError):
        HookGatewayOps("  ")


def test_a_frozen_client_gives_the_hook_the_original_library_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/bundle/_internal")
    monkeypatch.setenv("LD_LIBRARY_PATH_ORIG", "/usr/local/lib")
    env = HookGatewayOps("true")._env()
    assert env["LD_LIBRARY_PATH"] == "/usr/local/lib"
    assert "LD_LIBRARY_PATH_ORIG" not in env
    monkeypatch.delenv("LD_LIBRARY_PATH_ORIG")
    assert "LD_LIBRARY_PATH" not in HookGatewayOps("true")._env()


def test_cli_demo_journey_needs_its_folders(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--demo-journey", "--data", "d", "--bundle", "b"]) == cli.EXIT_USAGE
    assert "--out" in capsys.readouterr().err


def test_cli_demo_journey_refuses_unreadable_users_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("no users here"))
    argv = ["--demo-journey", "--data", str(tmp_path / "d"), "--bundle", str(tmp_path / "b")]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: journey stopped (input)") and "Traceback" not in err
    assert not (tmp_path / "out" / "journey.json").exists()
