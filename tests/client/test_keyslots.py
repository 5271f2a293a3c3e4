"""Key slots, the escrow slot and the MACed header counters (ST-3, ST-4, ST-6, AU-2, PO-4).

Real Argon2id at the floor, real AES-GCM/HKDF/X25519, real files in tmp_path; the keyring is the
in-memory test backend (the real Secret Service is exercised in test_device_keyring.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.core import keyslots
from client.core.device_keyring import DeviceKeyring, InMemoryKeyring, KeyringSecretMissing
from client.core.header_counters import MAX_PENDING_EVENTS, HeaderCounters
from client.core.kdf import FLOOR, KdfParams, KdfParamsRejected, calibrate
from client.core.keyslots import (
    KeyslotError,
    UnlockFailed,
    canonical_json,
    normalise_password,
    unwrap_slot,
)
from client.core.vault import Vault, database_path
from client.core.vault_header import HeaderTampered, LockedOut, VaultHeader, WipePending
from sync.protocol.escrow import EscrowError, escrow_aad, unseal
from tests.support.keyslots import DEVICE, NOW, PASSWORD, Device, make_device

MIGRATIONS = ("CREATE TABLE note (body TEXT)",)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return make_device(tmp_path)


def header_json(device: Device) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VaultHeader.path_in(device.data_dir).read_bytes())
    return data


def write_header(device: Device, document: dict[str, Any], *, remac: bool) -> None:
    """Write an edited header; with ``remac`` as an attacker who also holds the MAC key."""
    if remac:
        key = device.keyring.header_mac_key()
        document["mac"] = hmac.new(
            key, canonical_json(document["body"]), hashlib.sha256
        ).hexdigest()
    VaultHeader.path_in(device.data_dir).write_bytes(json.dumps(document).encode())


def edit_slot(device: Device, change: Callable[[dict[str, Any]], None], *, remac: bool) -> None:
    document = header_json(device)
    change(document["body"]["slots"][0])
    write_header(device, document, remac=remac)


# -- unlock -------------------------------------------------------------------------------------


def test_unlock_returns_the_dek_that_opens_the_vault(device: Device) -> None:
    Vault.open(database_path(device.data_dir), device.dek, MIGRATIONS).close()
    dek = device.reload().unlock("alice", PASSWORD, now=NOW)
    assert dek == device.dek
    with Vault.open(database_path(device.data_dir), dek, MIGRATIONS) as vault:
        assert vault.user_version == 1
    assert device.reload().role_of("alice") == "clinician"
    assert stat.S_IMODE(VaultHeader.path_in(device.data_dir).stat().st_mode) == 0o600


def test_ST3_header_holds_the_dek_only_wrapped(device: Device) -> None:
    raw = VaultHeader.path_in(device.data_dir).read_bytes()
    for encoding in (device.dek, device.dek.hex().encode(), base64.b64encode(device.dek)):
        assert encoding not in raw
    assert PASSWORD.encode() not in raw


def test_ST3_keyring_secret_and_files_without_the_password_cannot_open(device: Device) -> None:
    header = device.reload()
    for guess in ("correct horse battery stapl", "Correct horse battery staple", "x" * 64):
        with pytest.raises(UnlockFailed):
            header.unlock("alice", guess, now=NOW)


def test_ST3_password_and_files_without_the_keyring_secret_cannot_open(
    device: Device, tmp_path: Path
) -> None:
    copy_dir = tmp_path / "stolen"
    copy_dir.mkdir()
    shutil.copy2(VaultHeader.path_in(device.data_dir), copy_dir)
    other_machine = DeviceKeyring(DEVICE, backend=InMemoryKeyring())
    with pytest.raises(KeyringSecretMissing):
        VaultHeader.load(copy_dir, other_machine)
    # Even an attacker who skips the MAC check and guesses right lacks the device secret:
    slot = device.header.slots[0]
    with pytest.raises(UnlockFailed):
        unwrap_slot(slot, normalise_password(PASSWORD), secrets.token_bytes(32), DEVICE)
    assert (
        unwrap_slot(slot, normalise_password(PASSWORD), device.keyring.device_secret(), DEVICE)
        == device.dek
    )


def test_unknown_user_fails_like_a_wrong_password(device: Device) -> None:
    header = device.reload()
    with pytest.raises(UnlockFailed) as unknown:
        header.unlock("mallory", PASSWORD, now=NOW)
    with pytest.raises(UnlockFailed) as wrong:
        header.unlock("alice", "nope nope nope", now=NOW)
    assert (unknown.value.reason, unknown.value.message) == (
        wrong.value.reason,
        wrong.value.message,
    )
    counters = device.reload().counters
    assert counters.device_failed_attempts == 2
    assert counters.failed_attempts == {"alice": 1}  # unknown ids never grow the header


def test_AU1_passwords_are_nfkc_normalised_and_never_truncated(tmp_path: Path) -> None:
    device = make_device(tmp_path, ())
    long_password = "ﬁ" + "é" * 300 + "Ω"  # ligature, composed accent, > any truncation limit
    device.header.add_slot("bob", "clinician", long_password, device.dek, FLOOR)
    header = device.reload()
    decomposed = "fi" + "e\u0301" * 300 + "Ω"  # NFKC-equal
    assert header.unlock("bob", decomposed, now=NOW) == device.dek
    with pytest.raises(UnlockFailed):
        header.unlock("bob", "fi" + "é" * 300 + "O", now=NOW)  # differs only at the very end
    assert normalise_password("Ｐａｓｓ") == b"Pass"
    with pytest.raises(ValueError):
        normalise_password("")


# -- ST-4: Argon2id params and salt authenticated, floor enforced ----------------------------


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: s["kdf"].update(t=4), id="iterations"),
        pytest.param(lambda s: s["kdf"].update(m=131072), id="memory"),
        pytest.param(lambda s: s["kdf"].update(p=5), id="parallelism"),
        pytest.param(lambda s: s.update(salt=base64.b64encode(os.urandom(16)).decode()), id="salt"),
        pytest.param(lambda s: s.update(role="admin"), id="role"),
        pytest.param(lambda s: s.update(user_id="bob"), id="user_id"),
    ],
)
def test_ST4_editing_slot_params_salt_or_role_makes_unlock_fail(
    device: Device, change: Callable[[dict[str, Any]], None]
) -> None:
    edit_slot(device, change, remac=False)
    with pytest.raises(HeaderTampered) as caught:
        device.reload()
    assert caught.value.reason == "header_tampered"
    # An attacker holding the MAC key too still gets nowhere: the slot's AAD binds them.
    edit_slot(device, change, remac=True)
    header = device.reload()
    user = header.slots[0].user_id
    with pytest.raises(UnlockFailed):
        header.unlock(user, PASSWORD, now=NOW)


def test_ST4_params_below_the_floor_are_refused_everywhere(device: Device) -> None:
    weak = KdfParams(32768, 3, 4)
    with pytest.raises(KdfParamsRejected) as caught:
        device.header.add_slot("bob", "clinician", PASSWORD, device.dek, weak)
    assert caught.value.reason == "kdf_below_floor"
    for params in (
        {"m": 65535, "t": 3, "p": 4},
        {"m": 65536, "t": 2, "p": 4},
        {"m": 65536, "t": 3, "p": 1},
    ):
        with pytest.raises(KdfParamsRejected):
            KdfParams.from_json(params)
    edit_slot(device, lambda s: s["kdf"].update(m=8, t=1, p=1), remac=True)
    header = device.reload()
    with pytest.raises(KdfParamsRejected):
        header.unlock("alice", PASSWORD, now=NOW)


def test_ST4_calibrate_reaches_the_target_within_the_cap_never_below_the_floor() -> None:
    def machine(per_iteration: float) -> Callable[[KdfParams], float]:
        return lambda p: per_iteration * p.iterations * p.memory_kib / FLOOR.memory_kib

    fast = calibrate(0.5, 1.0, timer=machine(0.02))
    assert fast.memory_kib >= FLOOR.memory_kib and fast.parallelism >= FLOOR.parallelism
    assert 0.5 <= machine(0.02)(fast) <= 1.0
    assert calibrate(0.5, 1.0, timer=machine(0.5)) == FLOOR  # slow machine: the floor, no less
    noisy_calls: list[int] = []

    def noisy(p: KdfParams) -> float:  # the first big candidate overshoots the cap
        noisy_calls.append(p.iterations)
        return 0.03 * p.iterations * (3.0 if len(noisy_calls) == 2 else 1.0)

    chosen = calibrate(0.5, 1.0, timer=noisy)
    assert chosen.iterations * 0.03 <= 1.0 and chosen.iterations >= FLOOR.iterations


def test_ST4_calibrate_on_this_machine_measures_real_argon2id() -> None:
    params = calibrate(0.12, 0.4)
    assert params.validate() == params
    assert params.iterations >= FLOOR.iterations


# -- ST-6: change password re-wraps only, atomic ---------------------------------------------


def test_ST6_change_password_rewraps_only_and_old_password_stops_working(device: Device) -> None:
    db = database_path(device.data_dir)
    with Vault.open(db, device.dek, MIGRATIONS) as vault, vault.transaction() as conn:
        conn.execute("INSERT INTO note VALUES ('kept')")
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    header = device.reload()
    header.change_password("alice", PASSWORD, "a brand new passphrase", now=NOW)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # no data re-encrypted
    header = device.reload()
    with pytest.raises(UnlockFailed):
        header.unlock("alice", PASSWORD, now=NOW)
    dek = header.unlock("alice", "a brand new passphrase", now=NOW)
    with Vault.open(db, dek, MIGRATIONS) as vault:
        assert vault.connection.execute("SELECT body FROM note").fetchall() == [("kept",)]


def test_ST6_killed_before_the_header_replace_leaves_the_old_password(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = device.reload()

    def power_cut(src: object, dst: object) -> None:
        raise OSError("simulated power cut before rename")

    monkeypatch.setattr("policy.atomic.os.replace", power_cut)
    with pytest.raises(OSError):
        header.change_password("alice", PASSWORD, "a brand new passphrase", now=NOW)
    monkeypatch.undo()
    assert [p.name for p in device.data_dir.iterdir() if p.name.endswith(".tmp")] == []
    header = device.reload()
    with pytest.raises(UnlockFailed):
        header.unlock("alice", "a brand new passphrase", now=NOW)
    assert header.unlock("alice", PASSWORD, now=NOW) == device.dek


def test_ST6_killed_after_the_replace_before_the_keyring_anchor_leaves_the_new_password(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = device.reload()
    calls = {"n": 0}
    real = DeviceKeyring.set_header_generation

    def die_on_last(self: DeviceKeyring, generation: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # count attempt, uncount, then the re-wrap: die on the re-wrap
            raise SystemExit("simulated kill")
        real(self, generation)

    monkeypatch.setattr(DeviceKeyring, "set_header_generation", die_on_last)
    with pytest.raises(SystemExit):
        header.change_password("alice", PASSWORD, "a brand new passphrase", now=NOW)
    monkeypatch.undo()
    anchored = device.keyring.header_generation()
    header = device.reload()  # one generation ahead of the anchor: accepted and repaired
    assert header.generation == device.keyring.header_generation() == (anchored or 0) + 1
    assert header.unlock("alice", "a brand new passphrase", now=NOW) == device.dek


# -- AU-2 / PO-4 header half: counters survive restarts, restores and edits ------------------


def test_AU2_failed_attempts_survive_a_restart(device: Device) -> None:
    for _ in range(3):
        with pytest.raises(UnlockFailed):
            device.reload().unlock("alice", "wrong password!!", now=NOW)
    counters = device.reload().counters
    assert counters.failed_attempts["alice"] == 3
    assert counters.device_failed_attempts == 3
    events = counters.pending_audit_events
    assert [e["event"] for e in events] == ["login_failed"] * 3
    assert all(e["user_id"] == "alice" and e["at"] == NOW.isoformat() for e in events)
    assert device.reload().unlock("alice", PASSWORD, now=NOW) == device.dek
    after = device.reload().counters
    assert after.failed_attempts == {} and after.device_failed_attempts == 0
    assert len(after.pending_audit_events) == 3  # the failures stay queued for the audit chain


def test_AU2_an_attempt_is_counted_before_the_work_so_a_kill_cannot_erase_it(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*args: object, **kwargs: object) -> bytes:
        raise SystemExit("simulated kill during Argon2id")

    monkeypatch.setattr(keyslots, "derive", killed)
    with pytest.raises(SystemExit):
        device.reload().unlock("alice", PASSWORD, now=NOW)
    monkeypatch.undo()
    counters = device.reload().counters
    assert counters.failed_attempts == {"alice": 1}
    assert counters.pending_audit_events[-1]["event"] == "login_failed"


def test_AU2_restoring_an_old_header_is_detected(device: Device) -> None:
    path = VaultHeader.path_in(device.data_dir)
    old = path.read_bytes()
    for _ in range(2):
        with pytest.raises(UnlockFailed):
            device.reload().unlock("alice", "wrong password!!", now=NOW)
    path.write_bytes(old)  # the thief puts back the header from before the failures
    with pytest.raises(HeaderTampered) as caught:
        device.reload()
    assert caught.value.reason == "header_restored"


def test_AU2_PO4_edited_counters_are_detected(device: Device) -> None:
    until = NOW + timedelta(hours=1)

    def state(c: HeaderCounters) -> None:
        c.policy_high_water = 7
        c.failed_attempts["alice"] = 4
        c.device_failed_attempts = 4
        c.device_locked_until = until
        c.time_state = {"offline_elapsed_seconds": 3600.0, "wall_high_water": NOW.isoformat()}
        c.add_pending_audit_event({"event": "lockout", "user_id": "alice"})

    device.header.update_counters(state)
    path = VaultHeader.path_in(device.data_dir)
    saved = path.read_bytes()
    edits: list[tuple[str, object]] = [
        ("failed_attempts", {}),
        ("device_failed_attempts", 0),
        ("policy_high_water", 1),
        ("device_locked_until", None),
        ("time_state", {"offline_elapsed_seconds": 0.0}),
        ("pending_audit_events", []),
    ]
    for field_name, value in edits:
        document = json.loads(saved)
        assert document["body"]["counters"][field_name] != value
        document["body"]["counters"][field_name] = value
        write_header(device, document, remac=False)
        with pytest.raises(HeaderTampered) as caught:
            device.reload()
        assert caught.value.reason == "header_tampered", field_name
    path.write_bytes(saved)
    counters = device.reload().counters
    assert (counters.policy_high_water, counters.device_locked_until) == (7, until)
    assert counters.time_state["offline_elapsed_seconds"] == 3600.0


def test_AU2_a_header_from_the_future_or_another_device_is_refused(
    device: Device, tmp_path: Path
) -> None:
    document = header_json(device)
    document["body"]["generation"] += 5
    write_header(device, document, remac=True)
    with pytest.raises(HeaderTampered):
        device.reload()
    (tmp_path / "other").mkdir()
    other = make_device(tmp_path / "other")
    shutil.copy2(VaultHeader.path_in(other.data_dir), VaultHeader.path_in(device.data_dir))
    with pytest.raises(HeaderTampered):
        device.reload()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_AU2_any_flipped_byte_is_detected_with_one_error(
    device: Device, position: int, flip: int
) -> None:
    path = VaultHeader.path_in(device.data_dir)
    original = path.read_bytes()
    edited = bytearray(original)
    edited[position % len(edited)] ^= flip
    path.write_bytes(bytes(edited))
    try:
        with pytest.raises(HeaderTampered):
            device.reload()
    finally:
        path.write_bytes(original)


def test_lockout_set_by_the_accounts_layer_is_enforced_against_now(device: Device) -> None:
    until = NOW + timedelta(minutes=15)
    device.header.update_counters(lambda c: c.locked_until.__setitem__("alice", until))
    header = device.reload()
    with pytest.raises(LockedOut) as caught:
        header.unlock("alice", PASSWORD, now=NOW)
    assert caught.value.until == until and caught.value.reason == "locked_out"
    assert header.counters.failed_attempts == {}  # refused before any attempt is made
    assert header.unlock("alice", PASSWORD, now=until + timedelta(seconds=1)) == device.dek
    device.header = device.reload()
    device.header.update_counters(lambda c: setattr(c, "device_locked_until", until))
    with pytest.raises(LockedOut):
        device.reload().unlock("alice", PASSWORD, now=NOW)


def test_pending_audit_events_are_bounded_and_acknowledged(device: Device) -> None:
    def flood(c: HeaderCounters) -> None:
        for i in range(MAX_PENDING_EVENTS + 5):
            c.add_pending_audit_event({"event": "lockout", "n": i})

    device.header.update_counters(flood)
    counters = device.reload().counters
    assert len(counters.pending_audit_events) == MAX_PENDING_EVENTS
    assert counters.pending_audit_dropped == 5
    header = device.reload()
    header.acknowledge_pending_audit_events(MAX_PENDING_EVENTS - 1)
    counters = device.reload().counters
    assert counters.pending_audit_events == [{"event": "lockout", "n": MAX_PENDING_EVENTS - 1}]
    assert counters.pending_audit_dropped == 0
    with pytest.raises(KeyslotError):
        header.update_counters(lambda c: c.add_pending_audit_event({"event": ["nested"]}))  # type: ignore[dict-item]


def test_wipe_pending_flag_refuses_unlock(device: Device) -> None:
    device.header.update_counters(lambda c: setattr(c, "wipe_pending", True))
    with pytest.raises(WipePending):
        device.reload().unlock("alice", PASSWORD, now=NOW)


# -- slots and the escrow slot -----------------------------------------------------------------


def _gateway_key() -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_escrow_slot_lets_the_gateway_add_a_user_and_reset_a_password(device: Device) -> None:
    gateway_private, gateway_public = _gateway_key()
    device.header.set_escrow(device.dek, gateway_public)
    blob = device.reload().escrow_blob()
    assert blob is not None
    # Online: the gateway unwraps the escrow and hands the DEK back over mutual TLS.
    dek = unseal(blob, gateway_private, escrow_aad(DEVICE))
    header = device.reload()
    header.add_slot("carol", "auditor", "carol's long passphrase", dek, FLOOR)
    header.add_slot("alice", "clinician", "alice forgot hers", dek, FLOOR, replace=True)
    header = device.reload()
    assert header.users() == [("alice", "clinician"), ("carol", "auditor")]
    assert header.unlock("carol", "carol's long passphrase", now=NOW) == device.dek
    assert header.unlock("alice", "alice forgot hers", now=NOW) == device.dek
    with pytest.raises(EscrowError):
        unseal(blob, gateway_private, escrow_aad("dev-0002"))  # bound to this device
    with pytest.raises(EscrowError):
        unseal(blob, X25519PrivateKey.generate(), escrow_aad(DEVICE))


def test_adding_a_slot_needs_this_vaults_dek(device: Device) -> None:
    with pytest.raises(KeyslotError) as caught:
        device.header.add_slot("bob", "clinician", PASSWORD, secrets.token_bytes(32), FLOOR)
    assert caught.value.reason == "wrong_dek"
    with pytest.raises(KeyslotError) as caught:
        device.header.add_slot("alice", "clinician", PASSWORD, device.dek, FLOOR)
    assert caught.value.reason == "slot_exists"
    with pytest.raises(KeyslotError) as caught:
        device.header.add_slot("bob", "superuser", PASSWORD, device.dek, FLOOR)
    assert caught.value.reason == "invalid_user"


def test_removing_slots_keeps_the_last_way_in(device: Device) -> None:
    device.header.add_slot("bob", "admin", PASSWORD, device.dek, FLOOR)
    device.header.remove_slot("bob")
    header = device.reload()
    assert header.users() == [("alice", "clinician")]
    with pytest.raises(UnlockFailed):
        header.unlock("bob", PASSWORD, now=NOW)
    with pytest.raises(KeyslotError) as caught:
        header.remove_slot("alice")
    assert caught.value.reason == "last_slot"
    _, gateway_public = _gateway_key()
    header.set_escrow(device.dek, gateway_public)
    header.remove_slot("alice")  # the escrow slot still lets IT add a user online
    assert device.reload().users() == []


def test_a_slot_cannot_be_moved_to_another_user(device: Device) -> None:
    device.header.add_slot("bob", "clinician", "bob's own passphrase", device.dek, FLOOR)
    document = header_json(device)
    slots = document["body"]["slots"]
    swapped = dict(slots[1], user_id="alice", role="clinician")
    document["body"]["slots"] = [swapped, dict(slots[0], user_id="bob")]
    write_header(device, document, remac=True)
    with pytest.raises(UnlockFailed):
        device.reload().unlock("alice", "bob's own passphrase", now=NOW)


def test_AU2_a_kill_between_the_first_write_and_its_anchor_is_recovered(tmp_path: Path) -> None:
    backend = InMemoryKeyring()
    keyring = DeviceKeyring(DEVICE, backend=backend)
    keyring.provision()
    VaultHeader.create(tmp_path, keyring, secrets.token_bytes(32))
    del backend.entries[("gatehouse", f"{DEVICE}/header_generation")]  # the anchor never landed
    assert VaultHeader.load(tmp_path, keyring).generation == 1
    assert keyring.header_generation() == 1
