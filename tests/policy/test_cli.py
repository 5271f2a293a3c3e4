"""`gatehouse-policy`: keygen → template → sign → verify round trip, refusals and exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from policy.cli import main
from policy.jws import MAX_ENVELOPE_BYTES, sign
from policy.model import format_timestamp
from tests.support.policy import NOW, encode, network_settings, payload_doc

NOW_ISO = format_timestamp(NOW)
SCRIPT = Path(sys.executable).parent / "gatehouse-policy"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    for name in ("it-a", "it-b", "other"):
        code, out, _ = run(capsys, "keygen", "--out", str(tmp_path / "keys"), "--name", name)
        assert code == 0 and out.startswith("kid: ")
    return tmp_path / "keys"


@pytest.fixture
def policy_json(tmp_path: Path) -> Path:
    path = tmp_path / "policy.json"
    doc = payload_doc(version=3, devices=["dev-0001"])
    path.write_text(json.dumps(doc, indent=2))
    return path


def sign_with(capsys: Any, policy: Path, out: Path, *key_files: Path) -> int:
    args = ["sign", str(policy), "--out", str(out)]
    for key in key_files:
        args += ["--key", str(key)]
    code, _stdout, _ = run(capsys, *args)
    return code


def verify(capsys: Any, envelope: Path, keys: Path, *extra: str) -> tuple[int, str, str]:
    return run(
        capsys,
        "verify",
        str(envelope),
        "--trust",
        str(keys / "it-a.pub.pem"),
        "--trust",
        str(keys / "it-b.pub.pem"),
        "--now",
        NOW_ISO,
        *extra,
    )


def test_keygen_writes_private_key_0600_and_refuses_overwrite(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stat.S_IMODE(os.stat(keys / "it-a.key.pem").st_mode) == 0o600
    assert (keys / "it-a.pub.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = (keys / "it-a.key.pem").read_bytes()
    code, _, err = run(capsys, "keygen", "--out", str(keys), "--name", "it-a")
    assert code == 1 and "already exists" in one_line(err)
    assert (keys / "it-a.key.pem").read_bytes() == before


def test_template_is_a_complete_valid_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "template", "--site", "hmp-brixton", "--now", NOW_ISO)
    assert code == 0
    doc = json.loads(out)
    assert doc["site"] == "hmp-brixton" and doc["version"] == 1
    from policy.schema import SETTINGS

    assert set(doc["settings"]) == {s.name for s in SETTINGS}
    code, _, err = run(capsys, "template", "--site", "Not A Slug")
    assert code == 2 and "site" in one_line(err)


def test_round_trip_two_person_rule(
    keys: Path, policy_json: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = tmp_path / "policy.jws"
    assert (
        sign_with(capsys, policy_json, envelope, keys / "it-a.key.pem", keys / "it-b.key.pem") == 0
    )
    code, out, err = verify(
        capsys, envelope, keys, "--threshold", "2", "--site", "hmp-brixton", "--device", "dev-0001"
    )
    assert code == 0, err
    assert one_line(out).startswith("ok: version 3 for site hmp-brixton")


def test_template_sign_verify_round_trip(
    keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "template.json"
    code, _, _ = run(capsys, "template", "--site", "hmp-leeds", "--out", str(template))
    assert code == 0
    doc = json.loads(template.read_text())
    doc["settings"].update(network_settings())
    template.write_text(json.dumps(doc))
    envelope = tmp_path / "t.jws"
    assert sign_with(capsys, template, envelope, keys / "it-a.key.pem") == 0
    code, out, _ = run(
        capsys,
        "verify",
        str(envelope),
        "--trust",
        str(keys / "it-a.pub.pem"),
        "--site",
        "hmp-leeds",
    )
    assert code == 0 and out.startswith("ok: version 1 for site hmp-leeds")


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--threshold", "2"], "below_threshold"),
        (["--installed-version", "3"], "rollback"),
        (["--site", "hmp-pentonville"], "wrong_site"),
        (["--device", "dev-9999"], "wrong_device"),
        (["--now", format_timestamp(NOW + timedelta(days=400))], "expired"),
        (["--now", format_timestamp(NOW - timedelta(days=1))], "not_yet_valid"),
    ],
)
def test_verify_refusals_exit_1_with_one_line(
    keys: Path,
    policy_json: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    reason: str,
) -> None:
    envelope = tmp_path / "policy.jws"
    assert sign_with(capsys, policy_json, envelope, keys / "it-a.key.pem") == 0
    code, out, err = verify(capsys, envelope, keys, "--device", "dev-0001", *extra)
    assert code == 1
    assert out == ""
    assert one_line(err).startswith(f"refused: {reason}: ")


def test_verify_refusals_for_bad_envelopes(
    keys: Path, policy_json: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = tmp_path / "policy.jws"
    assert sign_with(capsys, policy_json, envelope, keys / "other.key.pem") == 0
    code, _, err = verify(capsys, envelope, keys)
    assert (code, one_line(err).split(":")[1].strip()) == (1, "unknown_key")

    assert sign_with(capsys, policy_json, envelope, keys / "it-a.key.pem") == 0
    doc = json.loads(envelope.read_text())
    other = json.loads(sign(encode(payload_doc(version=99)), [_key(keys / "other.key.pem")]))
    doc["payload"] = other["payload"]
    envelope.write_text(json.dumps(doc))
    code, _, err = verify(capsys, envelope, keys)
    assert (code, one_line(err).split(":")[1].strip()) == (1, "bad_signature")

    envelope.write_bytes(
        sign(encode(payload_doc(session__idle_lock_seconds=1)), [_key(keys / "it-a.key.pem")])
    )
    code, _, err = verify(capsys, envelope, keys)
    assert (code, one_line(err).split(":")[1].strip()) == (1, "schema")

    envelope.write_bytes(b"\x00not an envelope")
    code, _, err = verify(capsys, envelope, keys)
    assert (code, one_line(err).split(":")[1].strip()) == (1, "malformed")

    envelope.write_bytes(b" " * (MAX_ENVELOPE_BYTES + 10))
    code, _, err = verify(capsys, envelope, keys)
    assert (code, one_line(err).split(":")[1].strip()) == (1, "too_large")


def _key(path: Path) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(path.read_bytes(), password=None)


def test_sign_refuses_an_invalid_policy(
    keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(payload_doc(ui__fireworks=True)))
    out = tmp_path / "bad.jws"
    code, _, err = run(
        capsys, "sign", str(bad), "--key", str(keys / "it-a.key.pem"), "--out", str(out)
    )
    assert code == 1 and one_line(err).startswith("refused: schema: unknown setting")
    assert not out.exists()


def test_sign_warns_about_template_placeholders(
    keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "t.json"
    assert run(capsys, "template", "--site", "hmp-leeds", "--out", str(template))[0] == 0
    code, _, err = run(
        capsys,
        "sign",
        str(template),
        "--key",
        str(keys / "it-a.key.pem"),
        "--out",
        str(tmp_path / "t.jws"),
    )
    assert code == 0 and "placeholders" in one_line(err)


def test_encrypted_private_key_round_trip(
    tmp_path: Path,
    policy_json: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GH_POLICY_PASS", "correct horse battery staple")
    keydir = tmp_path / "enc"
    assert run(capsys, "keygen", "--out", str(keydir), "--passphrase-env", "GH_POLICY_PASS")[0] == 0
    assert b"ENCRYPTED" in (keydir / "policy-signing.key.pem").read_bytes()
    envelope = tmp_path / "p.jws"
    base = [
        "sign",
        str(policy_json),
        "--key",
        str(keydir / "policy-signing.key.pem"),
        "--out",
        str(envelope),
    ]
    code, _, err = run(capsys, *base)
    assert code == 2 and "not a usable" in one_line(err)
    assert run(capsys, *base, "--passphrase-env", "GH_POLICY_PASS")[0] == 0


def test_show_marks_unverified_unless_trusted(
    keys: Path, policy_json: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = tmp_path / "policy.jws"
    assert sign_with(capsys, policy_json, envelope, keys / "it-a.key.pem") == 0
    code, out, _ = run(capsys, "show", str(envelope))
    assert code == 0 and out.startswith("UNVERIFIED")
    assert '"version": 3' in out
    code, out, _ = run(
        capsys, "show", str(envelope), "--trust", str(keys / "it-a.pub.pem"), "--now", NOW_ISO
    )
    assert code == 0 and out.startswith("VERIFIED")
    code, out, _ = run(
        capsys, "show", str(envelope), "--trust", str(keys / "other.pub.pem"), "--now", NOW_ISO
    )
    assert code == 1 and out.startswith("UNVERIFIED (refused: unknown_key")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["sign", "x.json"],
        ["verify", "x.jws"],
        ["verify", "/nonexistent/x.jws", "--trust", "/nonexistent/k.pem"],
        ["keygen"],
        ["keygen", "--out", "{tmp}", "--name", "../escape"],
        ["template"],
        ["verify", "{envelope}", "--trust", "{policy}"],
        ["verify", "{envelope}", "--trust", "{pub}", "--now", "yesterday"],
        ["verify", "{envelope}", "--trust", "{pub}", "--now", "2026-01-01T00:00:00"],
        ["verify", "{envelope}", "--trust", "{pub}", "--threshold", "2"],
        ["verify", "{envelope}", "--trust", "{pub}", "--installed-version", "three"],
        ["sign", "{policy}", "--key", "{pub}", "--out", "{envelope}"],
    ],
)
def test_usage_errors_exit_2_with_one_line(
    keys: Path,
    policy_json: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    envelope = tmp_path / "policy.jws"
    assert sign_with(capsys, policy_json, envelope, keys / "it-a.key.pem") == 0
    names = {
        "envelope": str(envelope),
        "policy": str(policy_json),
        "pub": str(keys / "it-a.pub.pem"),
        "tmp": str(tmp_path),
    }
    code, _out, err = run(capsys, *[a.format(**names) for a in argv])
    assert code == 2
    assert one_line(err).startswith("gatehouse-policy: error: ")


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "keygen" in capsys.readouterr().out


def test_console_script_round_trip_as_a_subprocess(tmp_path: Path, policy_json: Path) -> None:
    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *argv], capture_output=True, text=True, timeout=60, check=False
        )

    keygen = cli("keygen", "--out", str(tmp_path / "k"))
    assert keygen.returncode == 0, keygen.stderr
    envelope = tmp_path / "p.jws"
    key = tmp_path / "k" / "policy-signing.key.pem"
    assert cli("sign", str(policy_json), "--key", str(key), "--out", str(envelope)).returncode == 0
    pub = str(tmp_path / "k" / "policy-signing.pub.pem")
    ok = cli("verify", str(envelope), "--trust", pub, "--now", NOW_ISO, "--device", "dev-0001")
    assert ok.returncode == 0 and ok.stdout.startswith("ok: version 3")
    refused = cli(
        "verify", str(envelope), "--trust", pub, "--now", NOW_ISO, "--installed-version", "3"
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("refused: rollback: ")
    usage = cli("verify")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
