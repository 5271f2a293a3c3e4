"""The tamper-evident audit chain: append (device side) and verify (gateway, CLI, device).

Pure functions, no I/O. The format (Schneier–Kelsey style, see DESIGN.md §Audit, AD-2):

- Entry ``n`` (n = 1, 2, 3, …) carries ``prev_hash`` = entry_hash of entry ``n-1``; entry 1
  carries the genesis hash ``SHA-256(b"gatehouse-audit-genesis" || device_id)``.
- ``entry_hash = SHA-256(canonical bytes)`` (``sync.protocol.audit.entry``: every field but the
  MAC).
- ``mac = HMAC-SHA256(k_{n-1}, entry_hash)``: entry 1 is MACed with ``k_0``, the key made at
  enrolment and shared with the gateway. After each entry the key evolves one way,
  ``k_n = SHA-256(b"gatehouse-audit-key-v1" || k_{n-1})``, and the writer keeps only the new key.

Invariants:
- ``append`` never mutates its input state and returns the only key the writer may keep: a
  thief who takes the device after entry ``n`` holds ``k_n`` and cannot compute any earlier key,
  so cannot rewrite entries ``1..n`` without the MAC check failing (forward security).
- ``verify`` reports the *first* problem in presentation order with a stable ``reason``:
  ``gap``, ``reorder``, ``duplicate``, ``edited``, ``mac``, ``truncated``, ``replaced``,
  ``malformed``. It never raises for bad entries.
- Without ``initial_key`` only the hash chain is checked and the report says MACs were not
  checked: a forger can then rebuild a self-consistent chain, which only a receipt exposes.
- Tail truncation is provable only against a checkpoint (a verified ``Receipt``): fewer entries
  than the receipt is ``truncated``; another hash at the receipt's seq is ``replaced``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sync.protocol.audit.entry import (
    AuditEntry,
    AuditFormatError,
    canonical_bytes,
    format_ts,
    validate_detail,
    validate_entry,
)
from sync.protocol.audit.receipt import Receipt

GENESIS_TAG = b"gatehouse-audit-genesis"
KEY_TAG = b"gatehouse-audit-key-v1"
KEY_BYTES = 32
_FIELD_NAMES = frozenset(
    {
        "device_id",
        "action",
        "outcome",
        "user_id",
        "role",
        "patient_id",
        "purpose",
        "reason_text",
        "detail",
    }
)
REASONS = frozenset(
    {"gap", "reorder", "edited", "mac", "truncated", "replaced", "malformed", "duplicate"}
)


def genesis_hash(device_id: str) -> str:
    """The ``prev_hash`` of entry 1 of ``device_id``'s chain."""
    return hashlib.sha256(GENESIS_TAG + device_id.encode("utf-8")).hexdigest()


def next_key(key: bytes) -> bytes:
    """One step of the one-way key evolution."""
    return hashlib.sha256(KEY_TAG + key).digest()


def entry_mac(key: bytes, entry_hash_hex: str) -> str:
    """HMAC-SHA256 over the raw 32-byte entry hash, hex."""
    return hmac.digest(key, bytes.fromhex(entry_hash_hex), "sha256").hex()


@dataclass(frozen=True, slots=True)
class ChainState:
    """Where a chain stands after entry ``seq``: its head hash and the key for entry seq+1.

    ``key`` is None for a hash-only verifier (no MAC key known).
    """

    seq: int
    head_hash: str
    key: bytes | None

    @classmethod
    def genesis(cls, device_id: str, initial_key: bytes | None) -> ChainState:
        if initial_key is not None and len(initial_key) != KEY_BYTES:
            raise ValueError("the initial audit key must be 32 bytes")
        return cls(0, genesis_hash(device_id), initial_key)

    def __repr__(self) -> str:  # never print key material
        return f"ChainState(seq={self.seq}, head_hash={self.head_hash[:12]}…, key=<hidden>)"


def append(
    state: ChainState, fields: Mapping[str, Any], ts: datetime
) -> tuple[AuditEntry, ChainState]:
    """Make entry ``state.seq + 1`` from ``fields`` and return it with the evolved state.

    ``fields`` holds ``device_id``, ``action``, ``outcome`` and optionally ``user_id``, ``role``,
    ``patient_id``, ``purpose``, ``reason_text``, ``detail``. Raises ``AuditFormatError`` for a
    field that is missing, unknown or invalid; nothing is produced then.
    """
    if state.key is None:
        raise ValueError("cannot append without the current audit key")
    unknown = set(fields) - _FIELD_NAMES
    if unknown:
        raise AuditFormatError("malformed", f"unknown audit fields: {sorted(unknown)}")
    missing = {"device_id", "action", "outcome"} - set(fields)
    if missing:
        raise AuditFormatError("malformed", f"missing audit fields: {sorted(missing)}")
    detail = fields.get("detail") or {}
    validate_detail(detail)
    draft = AuditEntry(
        seq=state.seq + 1,
        ts=format_ts(ts),
        device_id=fields["device_id"],
        action=fields["action"],
        outcome=fields["outcome"],
        prev_hash=state.head_hash,
        mac="0" * 64,
        user_id=fields.get("user_id"),
        role=fields.get("role"),
        patient_id=fields.get("patient_id"),
        purpose=fields.get("purpose"),
        reason_text=fields.get("reason_text"),
        detail=dict(detail),
    )
    validate_entry(draft)
    head = hashlib.sha256(canonical_bytes(draft)).hexdigest()
    entry = replace(draft, mac=entry_mac(state.key, head))
    return entry, ChainState(entry.seq, head, next_key(state.key))


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The verdict. ``state`` is where the chain stands after the last good entry."""

    ok: bool
    entries_checked: int
    first_bad_seq: int | None
    reason: str | None
    sentence: str
    macs_checked: bool
    state: ChainState

    @property
    def head_hash(self) -> str:
        return self.state.head_hash


class _Broken(Exception):
    def __init__(self, seq: int, reason: str, sentence: str) -> None:
        super().__init__(reason)
        self.seq, self.reason, self.sentence = seq, reason, sentence


def _seq_problem(entries: Sequence[AuditEntry], index: int, expected: int, floor: int) -> _Broken:
    got = entries[index].seq
    if got < expected:
        if got <= floor:
            return _Broken(got, "duplicate", f"entry {got} was already verified before this run.")
        return _Broken(got, "duplicate", f"entry {got} appears twice.")
    if any(e.seq == expected for e in entries[index + 1 :]):
        return _Broken(expected, "reorder", f"entry {expected} appears after entry {got}.")
    last = got - 1
    span = f"entry {expected} is" if last == expected else f"entries {expected}–{last} are"
    return _Broken(expected, "gap", f"{span} missing.")


def verify(
    entries: Sequence[AuditEntry],
    *,
    device_id: str,
    initial_key: bytes | None,
    checkpoint: Receipt | None = None,
    start: ChainState | None = None,
) -> VerifyReport:
    """Check ``entries`` (in the order given) as the continuation of ``start`` (or genesis).

    ``start`` lets the gateway verify an upload from where the last one ended; its ``key``, when
    set, is the key for entry ``start.seq + 1`` and takes the place of ``initial_key``.
    ``checkpoint`` must already be verified (``verify_receipt``) and belong to ``device_id``.
    """
    if checkpoint is not None and checkpoint.device_id != device_id:
        raise ValueError("the checkpoint belongs to another device")
    state = start if start is not None else ChainState.genesis(device_id, initial_key)
    macs_checked = state.key is not None
    floor, expected, head, key = state.seq, state.seq + 1, state.head_hash, state.key
    check_seq = checkpoint.last_seq if checkpoint is not None else -1
    checked = 0
    try:
        if checkpoint is not None and check_seq == floor and head != checkpoint.head_hash:
            raise _Broken(floor, "replaced", _replaced_sentence(checkpoint))
        for index, entry in enumerate(entries):
            if type(entry.seq) is not int:
                raise _Broken(expected, "malformed", f"the entry after {expected - 1} has no seq.")
            if entry.seq != expected:
                raise _seq_problem(entries, index, expected, floor)
            try:
                validate_entry(entry)
            except AuditFormatError as exc:
                raise _Broken(expected, "malformed", f"entry {expected}: {exc.message}.") from None
            if entry.device_id != device_id:
                raise _Broken(expected, "edited", f"entry {expected} names another device.")
            if entry.prev_hash != head:
                raise _Broken(
                    expected,
                    "edited",
                    f"entry {expected} does not link to entry {expected - 1}: one of the two "
                    "was changed after it was written.",
                )
            digest = hashlib.sha256(canonical_bytes(entry)).digest()
            digest_hex = digest.hex()
            if key is not None:
                mac = hmac.digest(key, digest, "sha256").hex()
                if not hmac.compare_digest(mac, entry.mac):
                    raise _mac_problem(entries, index, digest_hex)
            replaced = checkpoint is not None and expected == check_seq
            if replaced and checkpoint is not None and digest_hex != checkpoint.head_hash:
                raise _Broken(expected, "replaced", _replaced_sentence(checkpoint))
            if key is not None:
                key = next_key(key)
            head = digest_hex
            checked += 1
            expected += 1
        if checkpoint is not None and check_seq >= expected:
            raise _Broken(
                expected,
                "truncated",
                f"the chain ends at entry {expected - 1} but the gateway's receipt of "
                f"{checkpoint.issued_at.isoformat()} covers entries up to {check_seq}: "
                "later entries were removed.",
            )
    except _Broken as broken:
        final = ChainState(expected - 1, head, key)
        return VerifyReport(
            False, checked, broken.seq, broken.reason, broken.sentence, macs_checked, final
        )
    final = ChainState(expected - 1, head, key)
    notes = [f"{checked} entries verified, head {head}."]
    if not macs_checked:
        notes.append(
            "MACs not checked (no initial key): a forged but self-consistent chain would pass."
        )
    if checkpoint is None:
        notes.append("No receipt given: removal of the newest entries cannot be ruled out.")
    elif check_seq < floor:
        notes.append("The receipt predates the verified range and was not used.")
    return VerifyReport(True, checked, None, None, " ".join(notes), macs_checked, final)


def _replaced_sentence(checkpoint: Receipt) -> str:
    return (
        f"entry {checkpoint.last_seq} differs from the one the gateway acknowledged on "
        f"{checkpoint.issued_at.isoformat()}: the chain up to it was replaced."
    )


def _mac_problem(entries: Sequence[AuditEntry], index: int, head_hex: str) -> _Broken:
    entry = entries[index]
    following = entries[index + 1] if index + 1 < len(entries) else None
    if following is not None and following.prev_hash != head_hex:
        return _Broken(
            entry.seq,
            "edited",
            f"entry {entry.seq} was changed after it was written (its MAC and the "
            "next entry's link no longer match it).",
        )
    return _Broken(
        entry.seq,
        "mac",
        f"entry {entry.seq}'s MAC does not verify: it was written or rewritten "
        "without the device's key for that position.",
    )
