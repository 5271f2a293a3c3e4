"""The policy document (the signed payload) and its typed, immutable model.

Payload, as JSON::

    {"type": "gatehouse-policy", "version": 7,
     "issued_at": "2026-01-01T00:00:00Z", "not_before": "...", "expires_at": "...",
     "site": "hmp-brixton", "devices": null | ["device-id", ...],
     "settings": {"session.idle_lock_seconds": 300, ...}}

Invariants:

* :func:`parse_payload` returns a :class:`Policy` or raises ``PolicyRefused(SCHEMA)``;
  exactly these top-level members, strict JSON, timestamps are ISO 8601 in UTC (``Z`` or
  ``+00:00``), ``not_before < expires_at``, ``issued_at <= expires_at``, ``version >= 1``,
  every setting valid per :mod:`policy.schema`, and a non-empty ``data.site_scope`` includes
  ``site``.
* A :class:`Policy` is frozen; its settings mapping is read-only and list values are tuples.
  It keeps the exact envelope bytes it was verified from, so it can be re-verified later.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

from policy.errors import PolicyReason, PolicyRefused
from policy.schema import SETTINGS_BY_NAME, SettingValue, is_site_code, validate_settings
from policy.strictjson import StrictJSONError, loads_strict

PAYLOAD_TYPE = "gatehouse-policy"
PAYLOAD_MEMBERS = frozenset(
    {"type", "version", "issued_at", "not_before", "expires_at", "site", "devices", "settings"}
)
MAX_VERSION = 2**53 - 1  # exact in every JSON implementation
MAX_DEVICES = 10_000
DEVICE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
_TIMESTAMP_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|\+00:00)"
)


def _refuse(detail: str) -> PolicyRefused:
    return PolicyRefused(PolicyReason.SCHEMA, detail)


def parse_timestamp(value: object, name: str = "timestamp") -> datetime:
    """Parse a strict ISO 8601 UTC timestamp into an aware ``datetime``."""
    if not isinstance(value, str) or _TIMESTAMP_RE.fullmatch(value) is None:
        raise _refuse(f"{name} must be ISO 8601 UTC, e.g. 2026-01-31T12:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _refuse(f"{name} is not a real date and time") from None
    return parsed.astimezone(UTC)


def format_timestamp(value: datetime) -> str:
    """The canonical wire form: UTC, seconds precision, ``Z`` suffix."""
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Policy:
    """A verified, schema-checked device policy."""

    version: int
    issued_at: datetime
    not_before: datetime
    expires_at: datetime
    site: str
    devices: tuple[str, ...] | None
    settings: Mapping[str, SettingValue]
    envelope: bytes = field(repr=False)
    signer_kids: tuple[str, ...] = ()

    def get(self, name: str) -> SettingValue:
        """The value of setting ``name``; ``KeyError`` for a name not in the schema."""
        if name not in SETTINGS_BY_NAME:
            raise KeyError(name)
        return self.settings[name]

    def get_int(self, name: str) -> int:
        value = self.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} is not an integer setting")
        return value

    def get_bool(self, name: str) -> bool:
        value = self.get(name)
        if not isinstance(value, bool):
            raise TypeError(f"{name} is not a boolean setting")
        return value

    def get_str(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str):
            raise TypeError(f"{name} is not a string setting")
        return value

    def get_list(self, name: str) -> tuple[str, ...]:
        value = self.get(name)
        if not isinstance(value, tuple):
            raise TypeError(f"{name} is not a list setting")
        return value

    @property
    def site_scope(self) -> tuple[str, ...]:
        """Sites whose patients the device caches (the policy's own site when unset)."""
        return self.get_list("data.site_scope") or (self.site,)

    @property
    def gateway_url(self) -> str:
        return self.get_str("network.gateway_url")

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        return self.get_list("network.allowed_hosts")

    @property
    def idle_lock_seconds(self) -> int:
        return self.get_int("session.idle_lock_seconds")

    def applies_to_device(self, device_id: str | None) -> bool:
        """True when the policy is for every device of its site or lists ``device_id``."""
        return self.devices is None or (device_id is not None and device_id in self.devices)


def _version(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse("version must be an integer")
    if not 1 <= value <= MAX_VERSION:
        raise _refuse("version must be between 1 and 2^53-1")
    return value


def _devices(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_DEVICES:
        raise _refuse(f"devices must be null or a list of 1..{MAX_DEVICES} device ids")
    for item in value:
        if not isinstance(item, str) or _DEVICE_ID_RE.fullmatch(item) is None:
            raise _refuse("devices has an item that is not a device id")
    if len(set(value)) != len(value):
        raise _refuse("devices has duplicate items")
    return tuple(value)


def parse_payload(
    payload: bytes, *, envelope: bytes = b"", signer_kids: tuple[str, ...] = ()
) -> Policy:
    """Build a :class:`Policy` from (already verified) payload bytes, or refuse ``schema``."""
    try:
        doc = loads_strict(payload)
    except StrictJSONError as exc:
        raise _refuse(f"payload: {exc}") from None
    if not isinstance(doc, dict):
        raise _refuse("payload is not a JSON object")
    keys = set(doc)
    if keys - PAYLOAD_MEMBERS:
        raise _refuse(f"unknown payload member(s): {', '.join(sorted(keys - PAYLOAD_MEMBERS))!a}")
    if PAYLOAD_MEMBERS - keys:
        raise _refuse(f"missing payload member(s): {', '.join(sorted(PAYLOAD_MEMBERS - keys))}")
    if doc["type"] != PAYLOAD_TYPE:
        raise _refuse(f"type must be {PAYLOAD_TYPE!r}")
    version = _version(doc["version"])
    issued_at = parse_timestamp(doc["issued_at"], "issued_at")
    not_before = parse_timestamp(doc["not_before"], "not_before")
    expires_at = parse_timestamp(doc["expires_at"], "expires_at")
    if not not_before < expires_at:
        raise _refuse("not_before must be earlier than expires_at")
    if issued_at > expires_at:
        raise _refuse("issued_at must not be later than expires_at")
    site = doc["site"]
    if not isinstance(site, str) or not is_site_code(site):
        raise _refuse("site must be a site code (lowercase slug)")
    devices = _devices(doc["devices"])
    settings = validate_settings(doc["settings"])
    scope = settings["data.site_scope"]
    if isinstance(scope, tuple) and scope and site not in scope:
        raise _refuse("data.site_scope must include the policy's site")
    return Policy(
        version=version,
        issued_at=issued_at,
        not_before=not_before,
        expires_at=expires_at,
        site=site,
        devices=devices,
        settings=MappingProxyType(settings),
        envelope=envelope,
        signer_kids=signer_kids,
    )


def build_payload(
    *,
    version: int,
    site: str,
    issued_at: datetime,
    not_before: datetime,
    expires_at: datetime,
    settings: Mapping[str, SettingValue],
    devices: tuple[str, ...] | None = None,
) -> dict[str, object]:
    """A payload document (JSON-ready dict) — used by the CLI template and by tests."""
    return {
        "type": PAYLOAD_TYPE,
        "version": version,
        "issued_at": format_timestamp(issued_at),
        "not_before": format_timestamp(not_before),
        "expires_at": format_timestamp(expires_at),
        "site": site,
        "devices": list(devices) if devices is not None else None,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
    }
