"""Installed-policy store: anti-rollback across restarts and file restores (PO-2, PO-3, PO-4)."""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import policy.store as store_module
from policy.decisions import PolicyMode, policy_mode
from policy.jws import b64url_decode, b64url_encode
from policy.store import MemoryVersionAnchor, PolicyStore
from policy.verify import PolicyReason, PolicyRefused
from tests.support.policy import (
    DEVICE,
    KEY_A,
    KEY_B,
    NOW,
    SITE,
    STRANGER,
    payload_doc,
    signed,
    trust,
)

MAC_KEY = bytes(range(32))
TRUST = trust(KEY_A)


def envelope(version: int, **kwargs: Any) -> bytes:
    return signed(payload_doc(version=version, **kwargs))


def open_store(path: Path, anchor: MemoryVersionAnchor, key: bytes = MAC_KEY) -> PolicyStore:
    return PolicyStore(path, key, anchor)


def install(store: PolicyStore, env: bytes, **kwargs: Any) -> Any:
    return store.install(env, TRUST, now=NOW, site=SITE, device_id=DEVICE, **kwargs)


def current(store: PolicyStore, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"now": NOW, "site": SITE, "device_id": DEVICE, **kwargs}
    return store.current(TRUST, **args)


def refusal(call: Any, *args: Any, **kwargs: Any) -> PolicyReason:
    with pytest.raises(PolicyRefused) as info:
        call(*args, **kwargs)
    return info.value.reason


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "policy.store"


def test_empty_store_has_no_policy(path: Path) -> None:
    assert current(open_store(path, MemoryVersionAnchor())) is None


def test_install_then_current_and_file_is_private(path: Path) -> None:
    anchor = MemoryVersionAnchor()
    store = open_store(path, anchor)
    installed = install(store, envelope(1))
    assert installed.version == 1
    assert anchor.read() == 1
    assert current(store).envelope == installed.envelope
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_PO4_rollback_refused_across_a_restart(path: Path) -> None:
    anchor = MemoryVersionAnchor()
    install(open_store(path, anchor), envelope(2))
    restarted = open_store(path, anchor)  # new object, same file and keyring
    assert restarted.high_water() == 2
    assert refusal(install, restarted, envelope(1)) is PolicyReason.ROLLBACK
    assert refusal(install, restarted, envelope(2)) is PolicyReason.ROLLBACK
    assert install(restarted, envelope(3)).version == 3
    assert current(open_store(path, anchor)).version == 3


def test_PO4_restored_older_store_file_is_detected(path: Path) -> None:
    anchor = MemoryVersionAnchor()
    store = open_store(path, anchor)
    install(store, envelope(1, ui__printing=True))
    old_copy = path.read_bytes()
    install(store, envelope(2, ui__printing=False))
    path.write_bytes(old_copy)  # a backup restored over the new file
    restarted = open_store(path, anchor)
    assert refusal(current, restarted) is PolicyReason.STORE_ROLLBACK
    assert refusal(install, restarted, envelope(2)) is PolicyReason.ROLLBACK


def test_PO4_deleted_store_file_is_detected(path: Path) -> None:
    anchor = MemoryVersionAnchor()
    install(open_store(path, anchor), envelope(1))
    path.unlink()
    assert refusal(current, open_store(path, anchor)) is PolicyReason.STORE_ROLLBACK


def _edit(path: Path, edit: Any) -> None:
    doc = json.loads(path.read_bytes())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(high_water=d["high_water"] + 5),
        lambda d: d.update(envelope=b64url_encode(envelope(7))),
        lambda d: d.update(mac=b64url_encode(bytes(32))),
        lambda d: d.update(format="other"),
        lambda d: d.pop("mac"),
    ],
)
def test_PO4_edited_store_file_is_detected(path: Path, edit: Any) -> None:
    anchor = MemoryVersionAnchor()
    install(open_store(path, anchor), envelope(1))
    _edit(path, edit)
    assert refusal(current, open_store(path, anchor)) is PolicyReason.STORE_TAMPERED


def test_garbage_store_file_is_tampered(path: Path) -> None:
    path.write_bytes(b"\x00garbage")
    assert refusal(current, open_store(path, MemoryVersionAnchor())) is (
        PolicyReason.STORE_TAMPERED
    )


def test_store_from_another_device_key_is_tampered(path: Path) -> None:
    anchor = MemoryVersionAnchor()
    install(open_store(path, anchor), envelope(1))
    other = open_store(path, anchor, key=b"\x42" * 32)
    assert refusal(current, other) is PolicyReason.STORE_TAMPERED


def test_tampered_store_does_not_lower_the_high_water(path: Path) -> None:
    anchor = MemoryVersionAnchor()
    store = open_store(path, anchor)
    install(store, envelope(3))
    _edit(path, lambda d: d.update(mac=b64url_encode(bytes(32))))
    assert refusal(install, store, envelope(2)) is PolicyReason.ROLLBACK
    assert install(store, envelope(4)).version == 4  # a newer policy repairs the store
    assert current(store).version == 4


def test_PO3_refusal_persists_nothing_and_keeps_last_good(path: Path) -> None:
    anchor = MemoryVersionAnchor()
    store = open_store(path, anchor)
    install(store, envelope(1))
    before = path.read_bytes()
    bad = [
        envelope(2, session__idle_lock_seconds=1),  # schema
        signed(payload_doc(version=2), STRANGER),  # unknown key
        envelope(2, site="hmp-pentonville"),  # wrong site
        envelope(2, expires_at=NOW),  # expired
        b"garbage",
    ]
    for env in bad:
        with pytest.raises(PolicyRefused):
            install(store, env)
        assert path.read_bytes() == before
        assert anchor.read() == 1
        assert current(store).version == 1


def test_PO3_failing_disk_keeps_last_good(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    anchor = MemoryVersionAnchor()
    store = open_store(path, anchor)
    install(store, envelope(1))

    def disk_full(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "atomic_write", disk_full)
    with pytest.raises(OSError):
        install(store, envelope(2))
    monkeypatch.undo()
    assert anchor.read() == 1
    assert current(store).version == 1


class CrashingAnchor(MemoryVersionAnchor):
    """The app dies after writing the store file but before the keyring write lands."""

    crash = False

    def write(self, version: int) -> None:
        if self.crash:
            raise RuntimeError("killed")
        super().write(version)


def test_crash_between_file_and_anchor_heals_forward(path: Path) -> None:
    anchor = CrashingAnchor()
    store = open_store(path, anchor)
    install(store, envelope(1))
    anchor.crash = True
    with pytest.raises(RuntimeError):
        install(store, envelope(2))
    anchor.crash = False
    assert anchor.read() == 1
    restarted = open_store(path, anchor)
    assert current(restarted).version == 2
    assert anchor.read() == 2
    assert refusal(install, restarted, envelope(2)) is PolicyReason.ROLLBACK


def test_PO2_installed_policy_that_expires_goes_restricted(path: Path) -> None:
    anchor = MemoryVersionAnchor()
    store = open_store(path, anchor)
    install(store, envelope(1, expires_at=NOW + timedelta(days=1)))
    later = NOW + timedelta(days=2)
    policy = current(store, now=later)
    assert policy.version == 1
    assert policy_mode(policy, NOW) is PolicyMode.NORMAL
    assert policy_mode(policy, later) is PolicyMode.RESTRICTED
    fresh = envelope(2, not_before=later, expires_at=later + timedelta(days=30))
    assert store.install(fresh, TRUST, now=later, site=SITE, device_id=DEVICE).version == 2
    assert policy_mode(current(store, now=later), later) is PolicyMode.NORMAL


def test_current_rechecks_signatures_against_current_trust(path: Path) -> None:
    anchor = MemoryVersionAnchor()
    store = open_store(path, anchor)
    install(store, envelope(1))
    with pytest.raises(PolicyRefused) as info:
        store.current(trust(KEY_B), now=NOW, site=SITE, device_id=DEVICE)
    assert info.value.reason is PolicyReason.UNKNOWN_KEY
    with pytest.raises(PolicyRefused) as info:
        store.current(TRUST, now=NOW, site="hmp-pentonville", device_id=DEVICE)
    assert info.value.reason is PolicyReason.WRONG_SITE


def test_store_file_holds_the_exact_envelope(path: Path) -> None:
    env = envelope(1)
    install(open_store(path, MemoryVersionAnchor()), env)
    assert b64url_decode(json.loads(path.read_bytes())["envelope"]) == env


def test_short_mac_key_is_refused(path: Path) -> None:
    with pytest.raises(ValueError):
        PolicyStore(path, b"short", MemoryVersionAnchor())
