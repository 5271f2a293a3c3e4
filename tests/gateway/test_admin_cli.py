"""``gatehouse-gateway`` administration round trip on a real data folder and a real server:
init → site add → user add → enroll-token → policy trust/publish → enrol → device list →
audit report → device wipe/revoke → seed."""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import io
import json
import secrets
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policy.atomic import atomic_write
from sync.gateway import admin_cli, datadir, pki
from sync.gateway.admin_cli import parse_ttl
from sync.gateway.authority import load_authority
from sync.gateway.cli import main
from sync.gateway.server import BackgroundGateway, build_app, build_ssl_context
from sync.gateway.store import sqlite as sqlite_store
from sync.gateway.store.base import Store
from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.users import FLOOR_MEMORY_KIB
from sync.protocol.audit.report import out_of_hours
from sync.protocol.pins import spki_sha256_b64
from tests.support.control import chain, csr_pem, key_pem, policy_envelope, views

SITE = "hmp-alpha"
POLICY_KEY = Ed25519PrivateKey.generate()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    folder = tmp_path / "gw"
    assert main(["init", "--data", str(folder)]) == 0
    capsys.readouterr()
    return folder


@pytest.fixture
def served(data: Path) -> Iterator[BackgroundGateway]:
    store = SqliteStore(data / datadir.DATABASE)
    authority = load_authority(data)
    app = build_app(store, ca_cert=authority.ca_cert, authority=authority)
    context = build_ssl_context(
        data / datadir.SERVER_CERT, data / datadir.SERVER_KEY, data / datadir.CA_CERT
    )
    server = BackgroundGateway(app, context)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        store.close()


def test_admin_round_trip(
    data: Path,
    served: BackgroundGateway,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = str(data)
    assert run(capsys, "site", "add", "--data", d, "--site", SITE, "--name", "HMP Alpha")[0] == 0
    code, _, err = run(capsys, "site", "add", "--data", d, "--site", SITE)
    assert (code, "site_exists" in err) == (2, True)

    password = "a long enough passphrase"
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\nignored second line\n"))
    code, out, _ = run(
        capsys, "user", "add", "--data", d, "--user", "aud1", "--role", "auditor", "--site", SITE
    )
    assert code == 0 and password not in out
    store = SqliteStore(data / datadir.DATABASE)
    try:
        user = store.user("aud1")
        assert user is not None and user.role == "auditor"
        assert user.password_hash.startswith(f"$argon2id$v=19$m={FLOOR_MEMORY_KIB},t=3,p=4$")
        assert password not in user.password_hash
    finally:
        store.close()
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    code, _, err = run(
        capsys, "user", "add", "--data", d, "--user", "x", "--role", "clinician", "--site", SITE
    )
    assert (code, "password_too_short" in err) == (2, True)

    # Policy trust key and publication.
    trust_pem = tmp_path / "trust.pem"
    atomic_write(
        trust_pem,
        POLICY_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    assert run(capsys, "policy", "trust", "add", "--data", d, str(trust_pem))[0] == 0
    envelope = tmp_path / "policy.jws"
    atomic_write(envelope, policy_envelope(SITE, 1, POLICY_KEY))
    code, out, _ = run(capsys, "policy", "publish", "--data", d, str(envelope))
    assert code == 0 and "version 1" in out
    foreign = tmp_path / "foreign.jws"
    atomic_write(foreign, policy_envelope(SITE, 2, Ed25519PrivateKey.generate()))
    code, _, err = run(capsys, "policy", "publish", "--data", d, str(foreign))
    assert (code, "unknown_key" in err) == (2, True)

    # The provisioning bundle.
    bundle_path = tmp_path / "bundle.json"
    code, out, _ = run(
        capsys, "enroll-token", "--data", d, "--site", SITE, "--ttl", "1h",
        "--out", str(bundle_path), "--url", served.url,
    )  # fmt: skip
    assert code == 0
    assert stat.S_IMODE(bundle_path.stat().st_mode) == 0o600
    bundle = json.loads(bundle_path.read_bytes())
    assert bundle["token"] not in out
    server_cert = pki.load_cert((data / datadir.SERVER_CERT).read_bytes())
    assert bundle["spki_pins"][0] == spki_sha256_b64(server_cert)
    assert len(bundle["spki_pins"]) == 2 and bundle["spki_pins"][0] != bundle["spki_pins"][1]
    assert bundle["site"] == SITE and bundle["gateway_url"] == served.url
    assert bundle["policy_trust_keys"] == [trust_pem.read_text()]
    authority = load_authority(data)
    assert bundle["escrow_public_key"] == authority.escrow_public_b64
    assert bundle["receipt_public_key"] == authority.receipt_public_pem
    assert bundle["ca_certificate"] == authority.ca_pem

    # A laptop enrols with what the bundle carries, then uploads its audit trail.
    ca_file = tmp_path / "ca.pem"
    atomic_write(ca_file, bundle["ca_certificate"].encode())
    key = pki.generate_key()
    k0 = secrets.token_bytes(32)
    with requests.Session() as anonymous:
        anonymous.trust_env, anonymous.verify = False, str(ca_file)
        answer = anonymous.post(
            f"{bundle['gateway_url']}/device/enrol",
            json={
                "token": bundle["token"],
                "csr": csr_pem(key),
                "audit_k0": base64.b64encode(k0).decode(),
            },
            timeout=30,
        )
    assert answer.status_code == 200, answer.text
    enrolled = answer.json()
    assert enrolled["policy"].encode() == envelope.read_bytes()
    device_id = enrolled["device_id"]
    atomic_write(tmp_path / "dev.pem", enrolled["certificate"].encode())
    atomic_write(tmp_path / "dev.key", key_pem(key))
    laptop = requests.Session()
    laptop.trust_env, laptop.verify = False, str(ca_file)
    laptop.cert = (str(tmp_path / "dev.pem"), str(tmp_path / "dev.key"))
    actions = [
        *views(2, user="nurse1", patient="pt000001"),
        {"action": "break_glass", "outcome": "success", "user_id": "nurse2",
         "role": "clinician", "patient_id": "pt000002", "purpose": "BTG"},
    ]  # fmt: skip
    saturday_night = dt.datetime(2026, 11, 21, 23, 0, tzinfo=dt.UTC)
    entries, _ = chain(device_id, k0, actions, start=saturday_night)
    from sync.protocol.audit.audit_event import export_bundle

    with laptop:
        assert laptop.post(f"{served.url}/device/audit", json=export_bundle(entries), timeout=30).ok

        code, out, _ = run(capsys, "device", "list", "--data", d)
        assert code == 0
        (line,) = [x for x in out.splitlines() if x.startswith(device_id)]
        assert SITE in line and "active" in line and " 3 " in line

        code, out, _ = run(capsys, "audit", "report", "--data", d, "--patient", "pt000002")
        rows = list(csv.reader(io.StringIO(out)))
        assert code == 0 and [r[5] for r in rows[1:]] == ["break_glass"]
        code, out, _ = run(
            capsys, "audit", "report", "--data", d, "--user", "nurse1", "--format", "fhir"
        )
        report = json.loads(out)
        assert report["resourceType"] == "Bundle" and report["total"] == 2
        code, out, _ = run(
            capsys, "audit", "report", "--data", d, "--break-glass", "--out-of-hours"
        )
        assert len(list(csv.reader(io.StringIO(out)))) == 2
        code, out, _ = run(
            capsys,
            "audit",
            "report",
            "--data",
            d,
            "--device",
            device_id,
            "--until",
            "2026-11-21T00:00:00+00:00",
        )
        assert len(list(csv.reader(io.StringIO(out)))) == 1  # header only

        # Wipe queues a signed command; revoke refuses the device at once.
        code, out, _ = run(capsys, "device", "wipe", "--data", d, device_id)
        assert code == 0
        commands = laptop.get(f"{served.url}/device/commands", timeout=10).json()["commands"]
        assert [c["kind"] for c in commands] == ["wipe"]
        assert run(capsys, "device", "revoke", "--data", d, device_id)[0] == 0
        refused = laptop.get(f"{served.url}/device/policy", timeout=10)
        assert (refused.status_code, refused.json()["error"]) == (403, "device_revoked")
        # The pending wipe can still be fetched, so revoke-then-wipe never strands a laptop.
        assert laptop.get(f"{served.url}/device/commands", timeout=10).status_code == 200
        code, out, _ = run(capsys, "device", "list", "--data", d)
        assert "revoked" in next(x for x in out.splitlines() if x.startswith(device_id))
    code, _, err = run(capsys, "device", "wipe", "--data", d, "dev-nope")
    assert (code, "unknown_device" in err) == (2, True)


def test_user_revoke_queues_revoke_user_for_the_site_devices(
    data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = str(data)
    run(capsys, "site", "add", "--data", d, "--site", SITE)
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough passphrase\n"))
    run(capsys, "user", "add", "--data", d, "--user", "n1", "--role", "clinician", "--site", SITE)
    store = SqliteStore(data / datadir.DATABASE)
    try:
        store.set_device("dev-x", SITE, "active")
        store.set_device("dev-y", "hmp-other", "active")
        code, out, _ = run(capsys, "user", "revoke", "--data", d, "--user", "n1")
        assert code == 0 and "1 device" in out
        assert store.user("n1").status == "revoked"  # type: ignore[union-attr]
        (command,) = store.pending_commands("dev-x")
        assert (command.kind, command.user_id) == ("revoke_user", "n1")
        assert store.pending_commands("dev-y") == []
    finally:
        store.close()


def test_seed_registers_sites_and_loads_resources(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "seed", "--data", str(data), "--sites", "2", "--patients", "3", "--seed", "7"
    )
    assert code == 0 and "seeded" in out
    store = SqliteStore(data / datadir.DATABASE)
    try:
        sites = [s.site for s in store.sites()]
        assert len(sites) == 2
        assert store.read("Organization", sites[0]) is not None
        assert store.head_seq() > 3
    finally:
        store.close()


def test_commands_refuse_an_uninitialised_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "device", "list", "--data", str(tmp_path / "none"))
    assert (code, "not_initialised" in err) == (2, True)


def test_a_store_error_during_a_command_is_one_sentence_and_exit_2(
    data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store opens, then another writer holds the database past the busy timeout: the
    command's write fails as StoreError(database_busy), printed as one line, not a traceback."""
    assert run(capsys, "site", "add", "--data", str(data), "--site", SITE)[0] == 0
    monkeypatch.setattr(sqlite_store, "DIALECT", sqlite_store.sqlite_dialect(busy_timeout_ms=100))
    holder = sqlite3.connect(data / datadir.DATABASE, isolation_level=None)
    opened = admin_cli._store

    def store_then_another_writer(args: argparse.Namespace) -> Store:
        store = opened(args)
        holder.execute("BEGIN IMMEDIATE")
        return store

    monkeypatch.setattr(admin_cli, "_store", store_then_another_writer)
    try:
        code, out, err = run(capsys, "site", "add", "--data", str(data), "--site", "hmp-bravo")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (code, out) == (2, "")
    assert err == (
        "gatehouse-gateway: refused: The database is busy (another writer held it too long):"
        " try again. (database_busy)\n"
    )
    store = SqliteStore(data / datadir.DATABASE)
    try:
        assert [s.site for s in store.sites()] == [SITE]
    finally:
        store.close()


def test_an_unreadable_file_is_one_line_and_exit_2(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.jws")
    code, out, err = run(capsys, "policy", "publish", "--data", str(data), missing)
    assert (code, out) == (2, "")
    assert err == f"gatehouse-gateway: {missing}: No such file or directory\n"


def test_enroll_token_needs_a_known_site_and_a_sane_ttl(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "b.json")
    code, _, err = run(capsys, "enroll-token", "--data", str(data), "--site", "hmp-x", "--out", out)
    assert (code, "unknown_site" in err) == (2, True)
    assert not Path(out).exists()
    assert parse_ttl("90m") == dt.timedelta(minutes=90)
    for bad in ("1w", "0h", "-1h", "h"):
        with pytest.raises(Exception, match="bad_ttl"):
            parse_ttl(bad)


def test_out_of_hours_is_judged_in_uk_local_time() -> None:
    assert out_of_hours(dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC))  # Saturday
    assert not out_of_hours(dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC))  # Monday 09:00 GMT
    assert out_of_hours(dt.datetime(2026, 11, 23, 18, 30, tzinfo=dt.UTC))
    # 07:30 UTC in July is 08:30 BST: in hours.
    assert not out_of_hours(dt.datetime(2026, 7, 6, 7, 30, tzinfo=dt.UTC))
