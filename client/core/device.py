"""The device: its data folder, identity, keyring, vault header, installed policy and wipe.

The data folder holds exactly these files (all written atomically and 0600):

    device.json     the profile: device id, site, policy trust keys, gateway escrow key (public)
    device-tls.*    the device's certificate and (encrypted) key; gateway CA and receipt key
    vault.header    key slots and MACed counters (client.core.vault_header)
    vault.db        the SQLCipher database (+ -wal/-shm while open)
    policy.store    the installed signed policy with its MACed high-water version
    wipe-reporter.json, wipe-reporter-ca.pem
                    from enrolment: the key that signs this laptop's wipe report, and where to
                    send it (client.core.wipe_report); a wipe keeps them
    wipe-report.json
                    after a wipe, until the gateway acknowledges it
    disk.reserve    space held back so sign-in and reading work on a full disk (disk_space)

Guarantees:
- A device is *provisioned* exactly when ``device.json`` exists; it is written last by
  ``provision``, so an interrupted provisioning leaves a folder that ``provision`` can redo.
- Opening a device first completes any interrupted wipe (WP-2).
- The policy in force is always the last one that verified; a refusal changes nothing (PO-3).
- Nothing here holds the DEK; only ``Session`` (after a successful login) does.
- A full disk while installing a policy leaves as ``DiskFull`` and the old policy in force; a
  wipe first releases the disk reserve, so its own writes have room (CR-3).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from keyring.backend import KeyringBackend

from client.core import disk_space
from client.core.audit_log import AuditLog
from client.core.device_keyring import DeviceKeyring
from client.core.errors import UserFacingError
from client.core.kdf import KdfParams, calibrate
from client.core.schema import MIGRATIONS
from client.core.trusted_time import ClockReading, TimeState, read_clocks
from client.core.vault import DATABASE_NAME, Vault, database_path
from client.core.vault_header import VaultHeader
from client.core.wipe import WipeReport, resume_wipe_if_pending, wipe, wipe_pending
from client.core.wipe_report import (
    GatewayAddress,
    address,
    forget_reporter,
    has_pending_report,
    send_pending_report,
    signed_report,
)
from policy import decisions
from policy.atomic import atomic_write
from policy.errors import PolicyRefused
from policy.model import Policy
from policy.store import PolicyStore
from policy.verify import TrustConfig, verify_policy
from sync.protocol.fhir.vocabulary import SITE_CODE_RE

PROFILE_NAME: Final = "device.json"
POLICY_STORE_NAME: Final = "policy.store"
PROFILE_FORMAT: Final = 1
# Written at enrolment (client.core.provisioning); the TLS key is encrypted with a key derived
# from the keyring's device secret.
TLS_CERT: Final = "device-tls.crt"
TLS_KEY: Final = "device-tls.key"
GATEWAY_CA: Final = "gateway-ca.pem"
RECEIPT_KEY: Final = "gateway-receipt.pub.pem"

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ProvisioningError(UserFacingError):
    """Provisioning cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class DeviceProfile:
    """Public facts about this device; nothing secret (the file is readable by its owner)."""

    device_id: str
    site: str
    trust_keys: tuple[str, ...]  # PEM Ed25519 public keys that sign policies
    trust_threshold: int
    escrow_public_key: str | None  # base64 X25519 raw public key of the gateway
    created_at: str
    keyring_fallback: bool = False  # secrets in the weak file fallback (policy allowed it)
    enrolment: dict[str, Any] = field(default_factory=dict)  # filled by sync enrolment

    def trust(self) -> TrustConfig:
        keys = []
        for pem in self.trust_keys:
            key = serialization.load_pem_public_key(pem.encode("ascii"))
            if not isinstance(key, Ed25519PublicKey):
                raise ProvisioningError("bad_trust_key", "A policy trust key is not Ed25519.")
            keys.append(key)
        return TrustConfig.from_keys(keys, self.trust_threshold)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "device_id": self.device_id,
            "site": self.site,
            "trust_keys": list(self.trust_keys),
            "trust_threshold": self.trust_threshold,
            "escrow_public_key": self.escrow_public_key,
            "created_at": self.created_at,
            "keyring_fallback": self.keyring_fallback,
            "enrolment": self.enrolment,
        }

    @classmethod
    def from_json(cls, data: Any) -> DeviceProfile:
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ProvisioningError("bad_profile", "The device profile is damaged. Contact IT.")
        return cls(
            device_id=str(data["device_id"]),
            site=str(data["site"]),
            trust_keys=tuple(str(k) for k in data["trust_keys"]),
            trust_threshold=int(data["trust_threshold"]),
            escrow_public_key=data.get("escrow_public_key"),
            created_at=str(data["created_at"]),
            keyring_fallback=bool(data.get("keyring_fallback", False)),
            enrolment=dict(data.get("enrolment") or {}),
        )


@dataclass(frozen=True)
class FirstUser:
    user_id: str
    role: str
    password: str


def is_provisioned(data_dir: Path) -> bool:
    return (Path(data_dir) / PROFILE_NAME).exists()


class Device:
    """An opened (not unlocked) device. Create with ``Device.open`` or ``Device.provision``."""

    def __init__(
        self,
        data_dir: Path,
        profile: DeviceProfile,
        keyring: DeviceKeyring,
        *,
        clock: Clock = utc_now,
        clocks: Callable[[], ClockReading] = read_clocks,
        kdf_params: KdfParams | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.profile = profile
        self.keyring = keyring
        self.clock = clock
        self.clocks = clocks
        self.kdf_params = kdf_params
        self.wiped = False  # set by wipe(): every session on this device must stop at once
        # How much this laptop may still write in the data folder (a test may replace it).
        self.free_space: disk_space.FreeSpace = disk_space.free_bytes
        self.header = VaultHeader.load(self.data_dir, keyring)
        self.policy_store = PolicyStore(
            self.data_dir / POLICY_STORE_NAME, keyring.policy_mac_key(), keyring.policy_anchor()
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        keyring_backend: KeyringBackend | None = None,
        clock: Clock = utc_now,
        clocks: Callable[[], ClockReading] = read_clocks,
        kdf_params: KdfParams | None = None,
    ) -> Device:
        """Open a provisioned device (finishing any interrupted wipe first)."""
        data_dir = Path(data_dir)
        resume_wipe_if_pending(
            data_dir,
            lambda device_id: _keyring(device_id, keyring_backend, data_dir, allow_fallback=True),
            now=clock(),
        )
        try:
            profile = DeviceProfile.from_json(
                json.loads((data_dir / PROFILE_NAME).read_text(encoding="utf-8"))
            )
        except FileNotFoundError:
            raise ProvisioningError(
                "not_provisioned", "This laptop is not set up for Gatehouse yet. Contact IT."
            ) from None
        keyring = _keyring(
            profile.device_id, keyring_backend, data_dir, allow_fallback=profile.keyring_fallback
        )
        return cls(data_dir, profile, keyring, clock=clock, clocks=clocks, kdf_params=kdf_params)

    @classmethod
    def provision(
        cls,
        data_dir: Path,
        *,
        device_id: str,
        site: str,
        trust_keys: Sequence[str],
        trust_threshold: int,
        policy_envelope: bytes,
        first_user: FirstUser | None,
        escrow_public_key: bytes | None = None,
        keyring_backend: KeyringBackend | None = None,
        clock: Clock = utc_now,
        clocks: Callable[[], ClockReading] = read_clocks,
        kdf_params: KdfParams | None = None,
        audit_initial_key: bytes | None = None,
    ) -> Device:
        """Set up a new device: keyring secrets, DEK, first key slot, policy, audit chain.

        ``kdf_params`` None means calibrate on this machine (about 0.5 s, capped at 1 s).
        ``audit_initial_key`` is k0 of the audit chain; it is shared with the gateway at
        enrolment, so enrolment passes the value it registered.
        """
        data_dir = Path(data_dir)
        if is_provisioned(data_dir):
            raise ProvisioningError(
                "already_provisioned", "This laptop is already set up. Wipe it first."
            )
        if not SITE_CODE_RE.fullmatch(site):
            raise ProvisioningError("bad_site", "The site code is not valid.")
        now = clock()
        profile = DeviceProfile(
            device_id=device_id,
            site=site,
            trust_keys=tuple(trust_keys),
            trust_threshold=trust_threshold,
            escrow_public_key=(
                base64.b64encode(escrow_public_key).decode() if escrow_public_key else None
            ),
            created_at=now.isoformat(),
        )
        try:
            policy = verify_policy(
                policy_envelope,
                profile.trust(),
                now=now,
                installed_version=None,
                site=site,
                device_id=device_id,
            )
        except PolicyRefused as refused:
            raise ProvisioningError(
                f"policy_{refused.reason}",
                f"The device policy was refused ({refused.reason}): {refused.detail}",
            ) from refused
        if first_user is None and not escrow_public_key:
            raise ProvisioningError(
                "no_way_in", "A device needs a first user or the gateway's escrow key."
            )
        if first_user and len(first_user.password) < decisions.min_password_length(policy):
            raise ProvisioningError(
                "password_too_short",
                f"The password must be at least {decisions.min_password_length(policy)} "
                "characters.",
            )
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _clear_partial_provisioning(data_dir)
        keyring = _keyring(
            device_id,
            keyring_backend,
            data_dir,
            allow_fallback=policy.get_bool("keyring.allow_file_fallback"),
        )
        keyring.provision()
        if keyring.is_weak:
            profile = dataclasses.replace(profile, keyring_fallback=True)
        dek = secrets.token_bytes(32)
        header = VaultHeader.create(data_dir, keyring, dek)
        params = kdf_params or calibrate()
        if first_user is not None:
            header.add_slot(first_user.user_id, first_user.role, first_user.password, dek, params)
        if escrow_public_key:
            header.set_escrow(dek, escrow_public_key)
        reading = clocks()
        header.update_counters(
            lambda c: setattr(c, "time_state", _initial_time_state(reading).to_json())
        )
        store = PolicyStore(
            data_dir / POLICY_STORE_NAME, keyring.policy_mac_key(), keyring.policy_anchor()
        )
        store.install(policy_envelope, profile.trust(), now=now, site=site, device_id=device_id)
        k0 = audit_initial_key or secrets.token_bytes(32)
        vault = Vault.open(database_path(data_dir), dek, MIGRATIONS)
        try:
            audit = AuditLog()
            with vault.transaction() as conn:
                audit.initialise(conn, device_id, k0)
                audit.append(
                    conn,
                    ts=now,
                    action="provision",
                    outcome="success",
                    user_id=first_user.user_id if first_user else None,
                    role=first_user.role if first_user else None,
                    detail={"site": site, "keyring": keyring.backend_name},
                )
                audit.append(
                    conn,
                    ts=now,
                    action="policy_installed",
                    outcome="success",
                    detail={"version": policy.version},
                )
            audit.scrub_wal(vault.connection)
        finally:
            vault.close()
        atomic_write(data_dir / PROFILE_NAME, json.dumps(profile.to_json(), indent=2).encode())
        disk_space.make_reserve(data_dir)  # best effort; remade later when there is room
        return cls(data_dir, profile, keyring, clock=clock, clocks=clocks, kdf_params=params)

    # -- policy ------------------------------------------------------------------------------

    def policy(self) -> Policy:
        """The policy in force (re-verified from the store)."""
        policy = self.policy_store.current(
            self.profile.trust(),
            now=self.clock(),
            site=self.profile.site,
            device_id=self.profile.device_id,
        )
        if policy is None:
            raise ProvisioningError("no_policy", "No device policy is installed. Contact IT.")
        return policy

    def install_policy(self, envelope: bytes) -> Policy:
        """Verify and install a newer policy; raises ``PolicyRefused`` and keeps the old one."""
        with disk_space.mapped(self.data_dir, disk_space.SYNC_BYTES):
            return self.policy_store.install(
                envelope,
                self.profile.trust(),
                now=self.clock(),
                site=self.profile.site,
                device_id=self.profile.device_id,
            )

    # -- time --------------------------------------------------------------------------------

    def time_state(self) -> TimeState:
        return TimeState.from_json(dict(self.header.counters.time_state))

    def save_time_state(self, state: TimeState) -> None:
        self.header.update_counters(lambda c: setattr(c, "time_state", state.to_json()))

    # -- wipe --------------------------------------------------------------------------------

    def _gateway_address(self) -> GatewayAddress | None:
        """Where the wipe report goes: the policy in force (its pins may have rotated since
        enrolment); None to keep enrolment's, e.g. when the policy cannot be read."""
        if not self.profile.enrolment:
            return None
        try:
            policy = self.policy()
        except (UserFacingError, PolicyRefused):
            return None
        return address(policy.gateway_url, policy.allowed_hosts, decisions.spki_pins(policy))

    def wipe(self, reason: str, *, command_id: str | None = None) -> WipeReport:
        """Cryptographic erase of this device (slots and keyring secrets first).

        Open sessions see ``wiped`` on their next call, close their connection and refuse it
        (an open SQLCipher handle could otherwise still read the unlinked file). The signed
        wipe report (WP-3; for a remote wipe, ``command_id`` makes it the command's receipt)
        is made first and carried through the wipe, so it is sent at the next start whatever
        instant the process dies at (``report_wipe_if_any``)."""
        self.wiped = True
        disk_space.release_reserve(self.data_dir)  # room for the wipe's marker and header
        now = self.clock()
        return wipe(
            self.data_dir,
            self.keyring,
            now=now,
            reason=reason,
            report=signed_report(
                self.data_dir,
                device_id=self.profile.device_id,
                cause=reason,
                now=now,
                command_id=command_id,
                gateway=self._gateway_address(),
            ),
            extra_names=(
                POLICY_STORE_NAME,
                PROFILE_NAME,
                TLS_KEY,
                TLS_CERT,
                GATEWAY_CA,
                RECEIPT_KEY,
                disk_space.RESERVE_NAME,
            ),
        )


def finish_interrupted_wipe(
    data_dir: Path, *, keyring_backend: KeyringBackend | None = None, clock: Clock = utc_now
) -> None:
    """Complete a wipe a kill interrupted (WP-2); no network. ``Device.open`` does it too."""
    data_dir = Path(data_dir)
    resume_wipe_if_pending(
        data_dir,
        lambda device_id: _keyring(device_id, keyring_backend, data_dir, allow_fallback=True),
        now=clock(),
    )


def report_wipe_if_any(
    data_dir: Path, *, keyring_backend: KeyringBackend | None = None, clock: Clock = utc_now
) -> str:
    """At start: finish an interrupted wipe, then send its report to the gateway (WP-2, WP-3).
    Best effort: ``none``, ``sent`` or ``failed:<reason>`` (the report waits for next time)."""
    data_dir = Path(data_dir)
    finish_interrupted_wipe(data_dir, keyring_backend=keyring_backend, clock=clock)
    sent = send_pending_report(data_dir)
    if sent == "none" and not is_provisioned(data_dir) and not wipe_pending(data_dir):
        forget_reporter(data_dir)  # left by a kill after its report was acknowledged
    return sent


def report_wipe_in_background(data_dir: Path) -> threading.Thread | None:
    """For the desktop app's start: finish an interrupted wipe here (local files only), then
    send a pending wipe report on a daemon thread so no window waits for the network."""
    finish_interrupted_wipe(data_dir)
    if not has_pending_report(data_dir):
        return None
    thread = threading.Thread(
        target=send_pending_report, args=(Path(data_dir),), name="wipe-report", daemon=True
    )
    thread.start()
    return thread


def _initial_time_state(reading: ClockReading) -> TimeState:
    return TimeState(
        wall_high_water=reading.wall,
        last_boot_id=reading.boot_id,
        last_boot_seconds=reading.boot_seconds,
        last_wall=reading.wall,
    )


def _keyring(
    device_id: str, backend: KeyringBackend | None, data_dir: Path, *, allow_fallback: bool
) -> DeviceKeyring:
    return DeviceKeyring(
        device_id, backend, allow_file_fallback=allow_fallback, fallback_dir=data_dir
    )


def _clear_partial_provisioning(data_dir: Path) -> None:
    """Remove what an interrupted provisioning left (no profile means it never completed)."""
    for name in (VaultHeader.path_in(data_dir).name, POLICY_STORE_NAME, DATABASE_NAME):
        for suffix in ("", "-wal", "-shm"):
            (data_dir / f"{name}{suffix}").unlink(missing_ok=True)
