"""One audit entry: its fields, their validation and its canonical encoding.

Invariants:
- ``canonical_bytes(entry)`` is deterministic: the same fields give the same bytes on every
  machine and Python version. The encoding is JSON with keys sorted by code point, no
  whitespace, UTF-8, strings escaped only where JSON requires it. Because every string is
  free of control characters and surrogates and every integer lies within ±(2**53 - 1), the
  bytes equal the RFC 8785 (JCS) canonical form of the same object, so a verifier written in
  another language can reproduce them.
- The canonical object is ``{"v": 1, "seq", "ts", "device_id", "user_id", "role", "action",
  "outcome", "patient_id", "purpose", "reason_text", "detail", "prev_hash"}``: every field
  except the MAC. ``entry_hash = SHA-256(canonical bytes)``; the MAC authenticates that hash.
- An entry that fails validation never gets encoded: ``AuditFormatError`` (reason
  ``malformed``) is raised instead. ``entry_from_canonical`` accepts only bytes that are
  already in canonical form, so an entry has exactly one valid serialisation.
- ``detail`` is a flat map of short non-clinical strings and integers; record content never
  belongs there (callers pass codes, counts and identifiers, not text from records).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from sync.protocol.errors import ProtocolError

FORMAT_VERSION = 1
OUTCOMES = frozenset({"success", "failure", "denied"})
MAX_SEQ = 2**31 - 1  # FHIR valueInteger is 32-bit; a device never writes two billion events
MAX_JSON_INT = 2**53 - 1
MAX_TEXT = 1000
MAX_DETAIL_KEYS = 32
MAX_DETAIL_VALUE = 256
MAX_CANONICAL_BYTES = 16_384

_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_ROLE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_ACTION = re.compile(r"[a-z][a-z0-9_]{0,39}")
_PATIENT_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # a FHIR id, so Patient/<id> is a reference
_PURPOSE = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_DETAIL_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_HASH_HEX = re.compile(r"[0-9a-f]{64}")
_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

# The canonical object's members, in the order exports and CSV list them.
CANONICAL_FIELDS: Final = (
    "v",
    "seq",
    "ts",
    "device_id",
    "user_id",
    "role",
    "action",
    "outcome",
    "patient_id",
    "purpose",
    "reason_text",
    "detail",
    "prev_hash",
)
_KEYS = frozenset(CANONICAL_FIELDS)


class AuditFormatError(ProtocolError):
    """An entry, export or receipt that is not well formed. ``reason`` is a stable code.

    ``reason`` is ``malformed`` for structure errors and ``edited`` when an exported
    AuditEvent disagrees with the chained entry it carries; ``seq`` names the entry when known.
    """

    def __init__(self, reason: str, message: str, seq: int | None = None) -> None:
        super().__init__(reason, message)
        self.seq = seq


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A chained audit entry as written by the device. ``mac`` is hex, 64 characters."""

    seq: int
    ts: str
    device_id: str
    action: str
    outcome: str
    prev_hash: str
    mac: str
    user_id: str | None = None
    role: str | None = None
    patient_id: str | None = None
    purpose: str | None = None
    reason_text: str | None = None
    detail: Mapping[str, str | int] = field(default_factory=dict)

    def canonical_bytes(self) -> bytes:
        """The bytes that are hashed (every field but the MAC)."""
        return canonical_bytes(self)

    def entry_hash(self) -> str:
        """SHA-256 of the canonical bytes, lowercase hex."""
        return hashlib.sha256(canonical_bytes(self)).hexdigest()


def format_ts(ts: datetime) -> str:
    """The one timestamp form used in entries: UTC, microseconds, ``+00:00``."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise AuditFormatError("malformed", "timestamp must be timezone-aware")
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def _bad(what: str, seq: object = None) -> AuditFormatError:
    return AuditFormatError("malformed", what, seq if isinstance(seq, int) else None)


def _text(value: object, pattern: re.Pattern[str] | None, name: str, seq: int) -> None:
    if type(value) is not str:
        raise _bad(f"{name} must be a string", seq)
    if pattern is not None:
        if not pattern.fullmatch(value):
            raise _bad(f"{name} is not a valid code", seq)
    elif not value or len(value) > MAX_TEXT or _CONTROL.search(value):
        raise _bad(f"{name} is empty, too long or has control characters", seq)


def _optional(value: object, pattern: re.Pattern[str] | None, name: str, seq: int) -> None:
    if value is not None:
        _text(value, pattern, name, seq)


def validate_entry(entry: AuditEntry) -> None:
    """Raise ``AuditFormatError`` unless every field is well formed (MAC included)."""
    seq = entry.seq
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        raise _bad("seq must be an integer from 1")
    _text(entry.ts, _TS, "ts", seq)
    _text(entry.device_id, _DEVICE_ID, "device_id", seq)
    _text(entry.action, _ACTION, "action", seq)
    if entry.outcome not in OUTCOMES or type(entry.outcome) is not str:
        raise _bad("outcome must be success, failure or denied", seq)
    _text(entry.prev_hash, _HASH_HEX, "prev_hash", seq)
    _text(entry.mac, _HASH_HEX, "mac", seq)
    _optional(entry.user_id, _USER_ID, "user_id", seq)
    _optional(entry.role, _ROLE, "role", seq)
    _optional(entry.patient_id, _PATIENT_ID, "patient_id", seq)
    _optional(entry.purpose, _PURPOSE, "purpose", seq)
    _optional(entry.reason_text, None, "reason_text", seq)
    validate_detail(entry.detail, seq)
    try:
        datetime.fromisoformat(entry.ts)
    except ValueError:
        raise _bad("ts is not a valid date and time", seq) from None


def validate_detail(detail: object, seq: int = 0) -> None:
    """``detail`` is a flat map of at most 32 code-like keys to short strings or integers."""
    if not isinstance(detail, Mapping) or len(detail) > MAX_DETAIL_KEYS:
        raise _bad("detail must be a map of at most 32 items", seq or None)
    for key, value in detail.items():
        if type(key) is not str or not _DETAIL_KEY.fullmatch(key):
            raise _bad("detail keys must be lowercase codes", seq or None)
        if type(value) is int:
            if not -MAX_JSON_INT <= value <= MAX_JSON_INT:
                raise _bad("detail integer out of range", seq or None)
        elif type(value) is str:
            if len(value) > MAX_DETAIL_VALUE or _CONTROL.search(value):
                raise _bad("detail text too long or has control characters", seq or None)
        else:
            raise _bad("detail values must be strings or integers", seq or None)


def canonical_object(entry: AuditEntry) -> dict[str, Any]:
    """The JSON object whose canonical encoding is hashed."""
    return {
        "v": FORMAT_VERSION,
        "seq": entry.seq,
        "ts": entry.ts,
        "device_id": entry.device_id,
        "user_id": entry.user_id,
        "role": entry.role,
        "action": entry.action,
        "outcome": entry.outcome,
        "patient_id": entry.patient_id,
        "purpose": entry.purpose,
        "reason_text": entry.reason_text,
        "detail": dict(entry.detail),
        "prev_hash": entry.prev_hash,
    }


def canonical_bytes(entry: AuditEntry) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (equal to JCS for validated entries).

    orjson is used for speed; ``reference_canonical_bytes`` is the standard-library definition
    and the tests prove the two agree.
    """
    return orjson.dumps(canonical_object(entry), option=orjson.OPT_SORT_KEYS)


def reference_canonical_bytes(entry: AuditEntry) -> bytes:
    """The specification of the encoding, in the standard library."""
    text = json.dumps(
        canonical_object(entry), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return text.encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _bad("duplicate key")
        out[key] = value
    return out


def strict_json_loads(data: str | bytes) -> Any:
    """``json.loads`` that refuses duplicate keys, NaN/Infinity and excessive nesting."""

    def no_constants(name: str) -> Any:
        raise _bad(f"{name} is not valid JSON")

    try:
        return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=no_constants)
    except AuditFormatError:
        raise
    except RecursionError:
        raise _bad("JSON nested too deeply") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are here
        raise _bad(f"not valid JSON ({type(exc).__name__})") from None


def entry_from_canonical(canonical: str, mac: str) -> AuditEntry:
    """Rebuild an entry from its canonical text; refuse anything not already canonical."""
    if type(canonical) is not str or len(canonical) > MAX_CANONICAL_BYTES:
        raise _bad("canonical entry missing or too long")
    obj = strict_json_loads(canonical)
    if not isinstance(obj, dict) or set(obj) != _KEYS:
        raise _bad("canonical entry has the wrong fields")
    if obj["v"] != FORMAT_VERSION or type(obj["v"]) is not int:
        raise _bad("unknown entry format version")
    detail = obj["detail"]
    validate_detail(detail)
    entry = AuditEntry(
        seq=obj["seq"],
        ts=obj["ts"],
        device_id=obj["device_id"],
        action=obj["action"],
        outcome=obj["outcome"],
        prev_hash=obj["prev_hash"],
        mac=mac,
        user_id=obj["user_id"],
        role=obj["role"],
        patient_id=obj["patient_id"],
        purpose=obj["purpose"],
        reason_text=obj["reason_text"],
        detail=detail,
    )
    validate_entry(entry)
    try:
        given = canonical.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad("canonical entry is not valid Unicode", entry.seq) from None
    if canonical_bytes(entry) != given:
        raise _bad("entry is not in canonical form", entry.seq)
    return entry
