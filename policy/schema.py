"""The one typed schema of every device-policy setting.

Invariants:

* ``SETTINGS`` is the single source of truth: every setting has a flat dotted name, a kind,
  a default, an allowed range or set of choices and a one-line meaning; ``docs/policy.md`` is
  generated from it (``python -m policy.docs``) and a test fails if the two drift.
* :func:`validate_settings` either returns a complete, immutable-valued mapping of *every*
  setting (omitted optional settings take their default) or raises
  ``PolicyRefused(SCHEMA)``: an unknown name, a wrong JSON type (``true`` is never an integer),
  an out-of-range value, a bad list item, a duplicate list item, a missing required setting
  or a broken cross-field rule is refused, never clamped or ignored.
* Lists come back as tuples, so a validated policy cannot be mutated by its readers.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from policy.errors import PolicyReason, PolicyRefused

SettingValue = int | bool | str | tuple[str, ...]

SITE_CODE_PATTERN = r"[a-z0-9]+(?:-[a-z0-9]+)*"
_SITE_CODE_RE = re.compile(SITE_CODE_PATTERN)
_SITE_CODE_MAX = 64
_HOST_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_OS_VERSION_RE = re.compile(r"(?:[0-9]{1,5}(?:\.[0-9]{1,5}){0,3})?")
# A pin is the standard base64 (with padding) of a SHA-256 digest: 44 characters.
_PIN_RE = re.compile(r"[A-Za-z0-9+/]{43}=")

RESOURCE_TYPES: tuple[str, ...] = (
    "Patient",
    "Flag",
    "AllergyIntolerance",
    "Condition",
    "MedicationStatement",
    "Observation",
    "Encounter",
    "DocumentReference",
)

# Placeholders for the settings that have no sensible default. They fail closed: the .invalid
# TLD never resolves (RFC 6761) and no real key hashes to these pins.
PLACEHOLDER_GATEWAY_HOST = "gateway.gatehouse.invalid"
PLACEHOLDER_PINS: tuple[str, ...] = (
    base64.b64encode(b"\x00" * 32).decode("ascii"),
    base64.b64encode(b"\x01" * 32).decode("ascii"),
)


class SettingKind(StrEnum):
    """The JSON type of a setting's value."""

    INT = "integer"
    BOOL = "boolean"
    STR = "string"
    STR_LIST = "list of strings"


ItemCheck = Callable[[str], str | None]
"""Checks one string (or list item); returns an error message or None when valid."""


@dataclass(frozen=True)
class Setting:
    """One policy setting: everything the validator and the documentation need."""

    name: str
    kind: SettingKind
    default: SettingValue
    meaning: str
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[int | bool | str, ...] | None = None
    check: ItemCheck | None = None
    check_doc: str = ""
    min_items: int = 0
    max_items: int = 64
    max_length: int = 256
    required: bool = False
    unit: str = ""

    def allowed_text(self) -> str:
        """A short human description of the allowed values (used by the docs generator)."""
        if self.kind is SettingKind.BOOL:
            return "must be true" if self.choices == (True,) else "true or false"
        parts: list[str] = []
        if self.kind is SettingKind.INT:
            parts.append(
                f"{self.minimum} – {self.maximum}" + (f" {self.unit}" if self.unit else "")
            )
        if self.choices is not None:
            shown = ", ".join(_json_literal(c) for c in self.choices)
            prefix = "items from" if self.kind is SettingKind.STR_LIST else "one of"
            parts.append(f"{prefix} {shown}")
        if self.check_doc:
            parts.append(self.check_doc)
        if self.kind is SettingKind.STR_LIST:
            parts.append(f"{self.min_items}–{self.max_items} unique items")
        return "; ".join(p for p in parts if p) or "any"


def _json_literal(value: int | bool | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return f"`{value}`"


def _show(value: object) -> str:
    """A bounded, ASCII-only rendering of untrusted input for error details."""
    text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_site_code(value: str) -> bool:
    """True for a lowercase slug site code such as ``hmp-brixton``."""
    return len(value) <= _SITE_CODE_MAX and _SITE_CODE_RE.fullmatch(value) is not None


def _check_site_code(value: str) -> str | None:
    return None if is_site_code(value) else "not a site code (lowercase slug)"


def is_hostname(value: str) -> bool:
    """True for a lowercase DNS name, IPv4 address or compressed IPv6 address (no wildcards)."""
    if ":" in value:
        try:
            return str(ipaddress.IPv6Address(value)) == value
        except ValueError:
            return False
    if not value or len(value) > 253:
        return False
    labels = value.split(".")
    if all(label.isdigit() for label in labels):  # all-numeric: must be a canonical IPv4
        try:
            return str(ipaddress.IPv4Address(value)) == value
        except ValueError:
            return False
    return all(_HOST_LABEL_RE.fullmatch(label) for label in labels)


def _check_host(value: str) -> str | None:
    return None if is_hostname(value) else "not a lowercase host name or IP address"


def _check_pin(value: str) -> str | None:
    if _PIN_RE.fullmatch(value) is None:
        return "not a base64 SHA-256 digest (44 characters)"
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return "not valid base64"
    if len(digest) != 32 or base64.b64encode(digest).decode("ascii") != value:
        return "not a canonical base64 SHA-256 digest"
    return None


def _check_gateway_url(value: str) -> str | None:
    if not value.isascii() or not value.isprintable() or " " in value:
        return "must be printable ASCII without spaces"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return "not a URL"
    if parts.scheme != "https":
        return "must be an https:// URL"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not carry user information"
    if parts.query or parts.fragment or "?" in value or "#" in value:
        return "must not carry a query or fragment"
    host = parts.hostname or ""
    if not is_hostname(host) or parts.netloc.lower() != parts.netloc:
        return "host must be a lowercase host name or IP address"
    if port is not None and port == 0:
        return "port must be 1-65535"
    return None


def _check_optional_url(value: str) -> str | None:
    return None if value == "" else _check_gateway_url(value)


def _check_os_version(value: str) -> str | None:
    return None if _OS_VERSION_RE.fullmatch(value) else "not a dotted numeric version"


def url_host(url: str) -> str:
    """The host of a validated gateway URL (lowercase, IPv6 without brackets)."""
    return urlsplit(url).hostname or ""


def _int(name: str, default: int, lo: int, hi: int, meaning: str, unit: str = "") -> Setting:
    return Setting(name, SettingKind.INT, default, meaning, minimum=lo, maximum=hi, unit=unit)


def _bool(name: str, default: bool, meaning: str, *, forced: bool = False) -> Setting:
    return Setting(
        name, SettingKind.BOOL, default, meaning, choices=(True,) if forced else (True, False)
    )


SETTINGS: tuple[Setting, ...] = (
    _int("session.idle_lock_seconds", 300, 30, 3600,
         "Lock the session after this much wall-clock inactivity (also across suspend).",
         "seconds"),
    _bool("session.lock_on_focus_loss", True,
          "Lock when the window loses focus to another application."),
    _bool("session.lock_on_minimise", True, "Lock when the window is minimised."),
    _bool("session.break_glass_reauth", True,
          "Break-glass, export and print need the password again (always on: SECURITY AU-4).",
          forced=True),
    _int("session.break_glass_minutes", 15, 1, 240,
         "How long a break-glass grant to one out-of-scope patient lasts.", "minutes"),
    _int("auth.min_password_length", 12, 12, 128,
         "Minimum password length in Unicode code points after NFC normalisation.",
         "characters"),
    _int("auth.lockout_after_failures", 5, 3, 20,
         "Consecutive failed unlocks that lock the device for auth.lockout_seconds.",
         "attempts"),
    _int("auth.lockout_seconds", 900, 60, 86400,
         "Length of a lockout; also the cap on the per-attempt throttle delay.", "seconds"),
    _int("auth.wipe_after_failures", 10, 4, 100,
         "Consecutive failed unlocks that wipe the device (must exceed the lockout count).",
         "attempts"),
    _int("auth.throttle_base_seconds", 1, 1, 60,
         "Delay after the first failed unlock; doubles with each further failure.", "seconds"),
    _int("offline.warn_after_hours", 48, 1, 720,
         "Trusted time offline after which the clinician is warned to sync.", "hours"),
    _int("offline.block_after_hours", 72, 1, 2160,
         "Trusted time offline after which records are blocked until the next sync.", "hours"),
    _int("offline.wipe_after_days", 30, 1, 365,
         "Trusted time offline after which the device wipes itself.", "days"),
    _int("offline.max_boots", 2, 0, 100,
         "Restarts allowed since the last sync; one more blocks records until the next sync "
         "(time powered off cannot be measured when the clock is set back: SECURITY TM-3).",
         "restarts"),
    Setting("data.site_scope", SettingKind.STR_LIST, (),
            "Sites whose patients this device caches; empty means only the policy's own site.",
            check=_check_site_code, check_doc="site codes; must include the policy's site",
            max_items=64),
    Setting("data.resource_types", SettingKind.STR_LIST, RESOURCE_TYPES,
            "FHIR resource types cached on the device (Patient is always needed).",
            choices=RESOURCE_TYPES, min_items=1, max_items=len(RESOURCE_TYPES)),
    _int("data.retention_days", 7, 0, 365,
         "Days a record that left the site scope stays on the device once its unsent work "
         "is uploaded.", "days"),
    _int("data.reconcile_hours", 24, 0, 168,
         "Hours between id reconciliations of each clinical record type with a records server "
         "that has no change history (_history): deletions there are found then; 0 means at "
         "every sync. Patients are checked at every sync whatever this says.", "hours"),
    _bool("device.require_disk_encryption", True,
          "Refuse to launch unless full-disk encryption is on."),
    Setting("device.min_os_version", SettingKind.STR, "",
            "Refuse to launch on an OS older than this dotted version; empty means no minimum.",
            check=_check_os_version, check_doc="empty or dotted numbers, e.g. `10.0.19045`",
            max_length=23),
    Setting("network.gateway_url", SettingKind.STR, f"https://{PLACEHOLDER_GATEWAY_HOST}",
            "The gateway's base URL; its host must be in network.allowed_hosts.",
            check=_check_gateway_url, check_doc="https URL, no user info, query or fragment",
            max_length=2048, required=True),
    Setting("network.fhir_base_url", SettingKind.STR, "",
            "The FHIR R4 base of the data plane, with any path (e.g. `https://fhir.example/fhir/R4`);"
            " empty means the gateway's own, `<network.gateway_url>/fhir`. Its host must be in"
            " network.allowed_hosts and its key pinned in network.spki_pins.",
            check=_check_optional_url, check_doc="empty, or an https URL without user info,"
            " query or fragment", max_length=2048),
    Setting("network.allowed_hosts", SettingKind.STR_LIST, (PLACEHOLDER_GATEWAY_HOST,),
            "The only hosts the device may connect to (exact match, no wildcards).",
            check=_check_host, check_doc="lowercase host names or IP addresses",
            min_items=1, max_items=16, required=True),
    Setting("network.spki_pins", SettingKind.STR_LIST, PLACEHOLDER_PINS,
            "Base64 SHA-256 of the gateway's SubjectPublicKeyInfo: a primary and a backup pin.",
            check=_check_pin, check_doc="base64 SHA-256 digests", min_items=2, max_items=8,
            required=True),
    _bool("network.tls13_only", True, "Use TLS 1.3 only (always on: SECURITY NW-1).",
          forced=True),
    _int("network.connect_timeout_seconds", 10, 1, 120,
         "Connect timeout for every request to the gateway.", "seconds"),
    _int("network.read_timeout_seconds", 30, 1, 600,
         "Read timeout for every request to the gateway.", "seconds"),
    _bool("ui.clipboard_copy_out", False,
          "Allow copying record text to the system clipboard (attempts are audited)."),
    _bool("ui.printing", False, "Allow printing (re-authenticated, audited)."),
    _bool("ui.screen_capture_exclusion", True,
          "Exclude windows from screen capture where the platform allows."),
    _bool("ui.kiosk_fullscreen", True, "Run full-screen with no window controls (kiosk)."),
    _bool("ui.watermark", True, "Show an on-screen watermark with the user and the time."),
    _bool("ui.blur_on_lock", True, "Blur the screen behind the lock screen."),
    _bool("keyring.allow_file_fallback", False,
          "Allow a file-protected device secret where no OS keyring backend exists."),
    _int("audit.upload_interval_minutes", 15, 1, 1440,
         "How often audit entries are uploaded when the gateway is reachable.", "minutes"),
    _int("audit.max_unsent_events", 5000, 100, 1_000_000,
         "Unsent audit entries after which record access is blocked until a sync.", "events"),
    _int("time.max_clock_skew_seconds", 300, 0, 3600,
         "Largest difference tolerated between the device clock and trusted server time; a "
         "clock earlier than the last trusted time is always tampering.", "seconds"),
)  # fmt: skip

SETTINGS_BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}


def defaults() -> dict[str, SettingValue]:
    """Every setting's default (placeholders for the required network settings)."""
    return {s.name: s.default for s in SETTINGS}


def _refuse(detail: str) -> PolicyRefused:
    return PolicyRefused(PolicyReason.SCHEMA, detail)


def _validate_str(setting: Setting, value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _refuse(f"{what} must be a string")
    if len(value) > setting.max_length:
        raise _refuse(f"{what} is longer than {setting.max_length} characters")
    if setting.choices is not None and value not in setting.choices:
        raise _refuse(f"{what} {_show(value)} is not one of the allowed values")
    if setting.check is not None:
        problem = setting.check(value)
        if problem is not None:
            raise _refuse(f"{what} {_show(value)}: {problem}")
    return value


def _validate_value(setting: Setting, value: object) -> SettingValue:
    name = setting.name
    if setting.kind is SettingKind.BOOL:
        if not isinstance(value, bool):
            raise _refuse(f"{name} must be true or false")
        if setting.choices is not None and value not in setting.choices:
            raise _refuse(f"{name} must be {_json_literal(setting.choices[0])}")
        return value
    if setting.kind is SettingKind.INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _refuse(f"{name} must be an integer")
        assert setting.minimum is not None and setting.maximum is not None
        if not setting.minimum <= value <= setting.maximum:
            raise _refuse(f"{name} = {value} is outside {setting.minimum}..{setting.maximum}")
        return value
    if setting.kind is SettingKind.STR:
        return _validate_str(setting, value, name)
    if not isinstance(value, list | tuple):
        raise _refuse(f"{name} must be a list")
    if not setting.min_items <= len(value) <= setting.max_items:
        raise _refuse(f"{name} needs {setting.min_items}..{setting.max_items} items")
    items = tuple(_validate_str(setting, item, f"{name} item") for item in value)
    if len(set(items)) != len(items):
        raise _refuse(f"{name} has duplicate items")
    return items


def _check_cross_field(settings: Mapping[str, SettingValue]) -> None:
    def num(name: str) -> int:
        value = settings[name]
        assert isinstance(value, int)
        return value

    if num("auth.wipe_after_failures") <= num("auth.lockout_after_failures"):
        raise _refuse("auth.wipe_after_failures must exceed auth.lockout_after_failures")
    if num("offline.block_after_hours") <= num("offline.warn_after_hours"):
        raise _refuse("offline.block_after_hours must exceed offline.warn_after_hours")
    if num("offline.wipe_after_days") * 24 <= num("offline.block_after_hours"):
        raise _refuse("offline.wipe_after_days must come after offline.block_after_hours")

    def items(name: str) -> tuple[str, ...]:
        value = settings[name]
        assert isinstance(value, tuple)
        return value

    if "Patient" not in items("data.resource_types"):
        raise _refuse("data.resource_types must include Patient")
    url = settings["network.gateway_url"]
    assert isinstance(url, str)
    if url_host(url) not in items("network.allowed_hosts"):
        raise _refuse("the host of network.gateway_url is not in network.allowed_hosts")
    fhir = settings["network.fhir_base_url"]
    assert isinstance(fhir, str)
    if fhir and url_host(fhir) not in items("network.allowed_hosts"):
        raise _refuse("the host of network.fhir_base_url is not in network.allowed_hosts")


def validate_settings(mapping: object) -> dict[str, SettingValue]:
    """Check a ``settings`` object from a policy; return every setting, defaults filled in.

    Raises ``PolicyRefused(SCHEMA)`` on anything but a fully valid mapping.
    """
    if not isinstance(mapping, Mapping):
        raise _refuse("settings must be a JSON object")
    for key in mapping:
        if not isinstance(key, str) or key not in SETTINGS_BY_NAME:
            raise _refuse(f"unknown setting {_show(key)}")
    result: dict[str, SettingValue] = {}
    for setting in SETTINGS:
        if setting.name in mapping:
            result[setting.name] = _validate_value(setting, mapping[setting.name])
        elif setting.required:
            raise _refuse(f"required setting {setting.name} is missing")
        else:
            result[setting.name] = setting.default
    _check_cross_field(result)
    return result
