"""AD-2 / AD-3: the audit chain format, its verifier, receipts, the FHIR export and the CLI.

Real crypto throughout (SHA-256, HMAC, Ed25519); no mocks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.protocol.audit import audit_event as audit_fhir
from sync.protocol.audit.audit_event import (
    bundle_bytes,
    entries_from_bundle,
    export_bundle,
    to_audit_event,
    to_csv_rows,
)
from sync.protocol.audit.chain import (
    ChainState,
    append,
    entry_mac,
    genesis_hash,
    next_key,
    verify,
)
from sync.protocol.audit.cli import main
from sync.protocol.audit.entry import (
    AuditEntry,
    AuditFormatError,
    canonical_bytes,
    entry_from_canonical,
    reference_canonical_bytes,
)
from sync.protocol.audit.receipt import (
    Receipt,
    ReceiptError,
    receipt_from_json,
    receipt_to_json,
    sign_receipt,
    verify_receipt,
)

DEVICE = "laptop-0042"
T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
K0 = bytes(range(32))

ACTIONS: list[dict[str, Any]] = [
    {"action": "login_ok", "outcome": "success", "user_id": "gp.jones", "role": "clinician"},
    {
        "action": "search",
        "outcome": "success",
        "user_id": "gp.jones",
        "role": "clinician",
        "detail": {"kind": "name_prefix", "results": 3},
    },
    {
        "action": "record_view",
        "outcome": "success",
        "user_id": "gp.jones",
        "role": "clinician",
        "patient_id": "pat-17",
        "purpose": "TREAT",
    },
    {
        "action": "break_glass",
        "outcome": "success",
        "user_id": "gp.jones",
        "role": "clinician",
        "patient_id": "pat-99",
        "purpose": "BTG",
        "reason_text": "Transferred tonight, seizure",
    },
    {
        "action": "copy_blocked",
        "outcome": "denied",
        "user_id": "gp.jones",
        "role": "clinician",
        "patient_id": "pat-17",
    },
    {
        "action": "note_written",
        "outcome": "success",
        "user_id": "gp.jones",
        "role": "clinician",
        "patient_id": "pat-17",
        "purpose": "TREAT",
        "detail": {"client_id": "c0ffee"},
    },
    {"action": "lock", "outcome": "success", "user_id": "gp.jones", "role": "clinician"},
    {"action": "login_failed", "outcome": "failure", "user_id": "nurse.ali", "role": None},
    {"action": "clock_tamper", "outcome": "failure", "detail": {"behind_seconds": 7200}},
]


def make_chain(
    n: int, device: str = DEVICE, key: bytes = K0
) -> tuple[list[AuditEntry], ChainState]:
    state = ChainState.genesis(device, key)
    entries = []
    for i in range(n):
        fields = {"device_id": device, **ACTIONS[i % len(ACTIONS)]}
        entry, state = append(state, fields, T0 + timedelta(seconds=i))
        entries.append(entry)
    return entries, state


def edit(entry: AuditEntry, **changes: Any) -> AuditEntry:
    return dataclasses.replace(entry, **changes)


# What ``append`` takes: every field of an entry but the ones the chain itself sets.
_CONTENT_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(AuditEntry)
    if f.name not in {"seq", "ts", "prev_hash", "mac"}
)


def forge_chain(
    template: list[AuditEntry], device: str, key: bytes, change: Callable[[int, AuditEntry], dict]
) -> list[AuditEntry]:
    """Rebuild a self-consistent chain (fresh hashes, MACs from ``key``) with edits applied."""
    state = ChainState.genesis(device, key)
    out = []
    for index, entry in enumerate(template):
        fields = {f: getattr(entry, f) for f in _CONTENT_FIELDS}
        fields.update(change(index, entry))
        new, state = append(state, fields, datetime.fromisoformat(entry.ts))
        out.append(new)
    return out


# --- format -------------------------------------------------------------------------------


def test_canonical_form_is_sorted_compact_utf8_and_pinned() -> None:
    entries, _ = make_chain(4)
    raw = entries[3].canonical_bytes()
    obj = json.loads(raw)
    assert list(obj) == sorted(obj)
    assert b" " not in raw.replace(b"Transferred tonight, seizure", b"")
    assert obj["prev_hash"] == entries[2].entry_hash()
    assert entries[0].prev_hash == genesis_hash(DEVICE)
    assert (
        genesis_hash(DEVICE)
        == hashlib.sha256(b"gatehouse-audit-genesis" + DEVICE.encode()).hexdigest()
    )
    assert next_key(K0) == hashlib.sha256(b"gatehouse-audit-key-v1" + K0).digest()
    assert (
        entries[0].mac == hmac.new(K0, bytes.fromhex(entries[0].entry_hash()), "sha256").hexdigest()
    )
    assert entries[1].mac == entry_mac(next_key(K0), entries[1].entry_hash())
    # Pinned vector: a change to the encoding must be a deliberate format-version change.
    assert raw.startswith(b'{"action":"break_glass","detail":{},"device_id":"laptop-0042",')
    assert raw.endswith(
        b',"role":"clinician","seq":4,"ts":"2026-11-22T09:00:03.000000+00:00",'
        b'"user_id":"gp.jones","v":1}'
    )


text_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40
).filter(lambda s: not any(0x7F <= ord(c) <= 0x9F for c in s))


@settings(max_examples=150, deadline=None)
@given(
    reason=st.none() | text_values,
    detail=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
        st.integers(-(2**53) + 1, 2**53 - 1) | text_values,
        max_size=5,
    ),
)
def test_canonical_bytes_equal_the_stdlib_reference_and_reparse(
    reason: str | None, detail: dict[str, Any]
) -> None:
    state = ChainState.genesis(DEVICE, K0)
    entry, _ = append(
        state,
        {
            "device_id": DEVICE,
            "action": "break_glass",
            "outcome": "success",
            "reason_text": reason,
            "detail": detail,
        },
        T0,
    )
    assert canonical_bytes(entry) == reference_canonical_bytes(entry)
    assert entry_from_canonical(canonical_bytes(entry).decode(), entry.mac) == entry


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "Record View", "outcome": "success"},
        {"action": "record_view", "outcome": "ok"},
        {"action": "record_view", "outcome": "success", "patient_id": "Patient/1"},
        {"action": "record_view", "outcome": "success", "reason_text": "line\nbreak"},
        {"action": "record_view", "outcome": "success", "detail": {"note": {"nested": 1}}},
        {"action": "record_view", "outcome": "success", "detail": {"ok": 1.5}},
        {"action": "record_view", "outcome": "success", "detail": {"ok": True}},
        {"action": "record_view", "outcome": "success", "detail": {"big": 2**60}},
        {"action": "record_view", "outcome": "success", "colour": "red"},
        {"outcome": "success"},
    ],
)
def test_append_refuses_malformed_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(AuditFormatError) as caught:
        append(ChainState.genesis(DEVICE, K0), {"device_id": DEVICE, **fields}, T0)
    assert caught.value.reason == "malformed"


def test_append_needs_an_aware_timestamp_and_a_key() -> None:
    with pytest.raises(AuditFormatError):
        append(
            ChainState.genesis(DEVICE, K0),
            {"device_id": DEVICE, **ACTIONS[0]},
            datetime(2026, 1, 1),
        )  # naive on purpose
    with pytest.raises(ValueError):
        append(ChainState.genesis(DEVICE, None), {"device_id": DEVICE, **ACTIONS[0]}, T0)
    assert "key" not in repr(ChainState.genesis(DEVICE, K0)).replace("key=<hidden>", "")


def test_entry_from_canonical_refuses_non_canonical_text() -> None:
    entries, _ = make_chain(2)
    text = entries[1].canonical_bytes().decode()
    pretty = json.dumps(json.loads(text), sort_keys=True, indent=1)
    for bad in (pretty, text.replace('"v":1', '"v":2'), text[:-1], "[]", '{"seq":1,"seq":1}'):
        with pytest.raises(AuditFormatError):
            entry_from_canonical(bad, entries[1].mac)


# --- verify: the round trip and every tamper kind (AD-2) ------------------------------------


def test_AD2_round_trip_verifies_with_and_without_the_key() -> None:
    entries, state = make_chain(30)
    report = verify(entries, device_id=DEVICE, initial_key=K0)
    assert report.ok and report.entries_checked == 30 and report.macs_checked
    assert report.head_hash == state.head_hash == entries[-1].entry_hash()
    assert report.state.key == state.key
    hash_only = verify(entries, device_id=DEVICE, initial_key=None)
    assert hash_only.ok and not hash_only.macs_checked
    assert "MACs not checked" in hash_only.sentence
    assert verify([], device_id=DEVICE, initial_key=K0).ok


def test_AD2_gap_is_detected() -> None:
    entries, _ = make_chain(10)
    report = verify(entries[:4] + entries[6:], device_id=DEVICE, initial_key=K0)
    assert (report.ok, report.reason, report.first_bad_seq) == (False, "gap", 5)
    assert "entries 5–6 are missing" in report.sentence
    assert report.entries_checked == 4
    head = verify(entries[2:], device_id=DEVICE, initial_key=None)
    assert (head.reason, head.first_bad_seq) == ("gap", 1)


def test_AD2_reorder_is_detected() -> None:
    entries, _ = make_chain(10)
    swapped = [*entries[:3], entries[4], entries[3], *entries[5:]]
    report = verify(swapped, device_id=DEVICE, initial_key=K0)
    assert (report.reason, report.first_bad_seq) == ("reorder", 4)


def test_AD2_duplicate_is_detected() -> None:
    entries, _ = make_chain(6)
    report = verify([*entries[:4], entries[3], *entries[4:]], device_id=DEVICE, initial_key=None)
    assert (report.reason, report.first_bad_seq) == ("duplicate", 4)


@pytest.mark.parametrize("key", [K0, None], ids=["with_key", "hash_only"])
@pytest.mark.parametrize(
    "change",
    [
        {"patient_id": "pat-18"},
        {"user_id": "someone.else"},
        {"ts": "2026-11-22T08:00:00.000000+00:00"},
        {"outcome": "denied"},
        {"detail": {"kind": "name_prefix", "results": 4}},
        {"purpose": None},
    ],
)
def test_AD2_edited_field_is_detected(key: bytes | None, change: dict[str, Any]) -> None:
    entries, _ = make_chain(9)
    victim = 2 if "detail" not in change else 1
    tampered = list(entries)
    tampered[victim] = edit(entries[victim], **change)
    report = verify(tampered, device_id=DEVICE, initial_key=key)
    assert not report.ok and report.reason == "edited"
    # With the key the edited entry itself is named; without it, the broken link after it.
    assert report.first_bad_seq == (victim + 1 if key else victim + 2)


def test_AD2_edited_last_entry_is_caught_by_its_mac() -> None:
    entries, _ = make_chain(5)
    tampered = [*entries[:-1], edit(entries[-1], outcome="success")]
    report = verify(tampered, device_id=DEVICE, initial_key=K0)
    assert (report.reason, report.first_bad_seq) == ("mac", 5)


def test_AD2_wrong_mac_is_detected() -> None:
    entries, _ = make_chain(5)
    tampered = list(entries)
    tampered[2] = edit(entries[2], mac=entry_mac(K0, entries[2].entry_hash()))
    report = verify(tampered, device_id=DEVICE, initial_key=K0)
    assert (report.reason, report.first_bad_seq) == ("mac", 3)
    # The report's state is the last good position, so a gateway can resume or quarantine there.
    assert (report.state.seq, report.head_hash) == (2, entries[1].entry_hash())
    assert report.state.key == next_key(next_key(K0)) and report.entries_checked == 2


def test_AD2_edit_then_rechain_without_the_key_fails_the_mac() -> None:
    entries, _ = make_chain(8)
    forged = forge_chain(
        entries, DEVICE, os.urandom(32), lambda i, e: {"patient_id": "pat-1"} if i == 2 else {}
    )
    # The rewritten chain is self-consistent: only the MACs (or a receipt) can expose it.
    assert verify(forged, device_id=DEVICE, initial_key=None).ok
    report = verify(forged, device_id=DEVICE, initial_key=K0)
    assert (report.reason, report.first_bad_seq) == ("mac", 1)


def _gateway() -> tuple[Ed25519PrivateKey, bytes]:
    private = Ed25519PrivateKey.generate()
    pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return private, pem


def _receipt(private: Ed25519PrivateKey, entries: list[AuditEntry], seq: int) -> Receipt:
    return sign_receipt(
        private,
        device_id=DEVICE,
        last_seq=seq,
        head_hash=entries[seq - 1].entry_hash(),
        issued_at=T0 + timedelta(hours=1),
    )


def test_AD2_truncation_below_a_receipt_is_detected() -> None:
    entries, _ = make_chain(12)
    private, _ = _gateway()
    receipt = _receipt(private, entries, 10)
    assert verify(entries, device_id=DEVICE, initial_key=K0, checkpoint=receipt).ok
    for cut in (9, 5, 0):
        report = verify(entries[:cut], device_id=DEVICE, initial_key=K0, checkpoint=receipt)
        assert (report.reason, report.first_bad_seq) == ("truncated", cut + 1)
        assert "covers entries up to 10" in report.sentence
    # Without the receipt the same cut is undetectable: the receipt is what proves it.
    assert verify(entries[:5], device_id=DEVICE, initial_key=K0).ok


def test_AD2_wholesale_replacement_is_detected_by_mac_and_by_receipt() -> None:
    entries, _ = make_chain(12)
    private, _ = _gateway()
    receipt = _receipt(private, entries, 10)
    thief_key = os.urandom(32)
    forged = forge_chain(
        entries,
        DEVICE,
        thief_key,
        lambda i, e: {"patient_id": None, "purpose": None} if e.patient_id else {},
    )
    assert verify(forged, device_id=DEVICE, initial_key=thief_key).ok  # self-consistent
    by_mac = verify(forged, device_id=DEVICE, initial_key=K0)
    assert (by_mac.reason, by_mac.first_bad_seq) == ("mac", 1)
    by_receipt = verify(forged, device_id=DEVICE, initial_key=None, checkpoint=receipt)
    assert (by_receipt.reason, by_receipt.first_bad_seq) == ("replaced", 10)


def test_AD2_forward_security_the_current_key_cannot_forge_the_past() -> None:
    """A thief holds k_n (the device's key after entry n) and rewrites entry n."""
    entries, state = make_chain(6)
    stolen = state.key
    assert stolen is not None
    victim = entries[-1]
    forged = edit(victim, outcome="denied")
    forged = edit(forged, mac=entry_mac(stolen, forged.entry_hash()))
    report = verify([*entries[:-1], forged], device_id=DEVICE, initial_key=K0)
    assert (report.reason, report.first_bad_seq) == ("mac", 6)
    # Every key the thief can derive lies in the future of the chain, never at its past.
    derived, k = set(), stolen
    for _ in range(50):
        derived.add(k)
        k = next_key(k)
    past, k = set(), K0
    for _ in range(6):
        past.add(k)
        k = next_key(k)
    assert not derived & past
    # What the stolen key *can* do is append new entries that verify (the boundary of the claim).
    extra, _ = append(state, {"device_id": DEVICE, **ACTIONS[0]}, T0 + timedelta(days=1))
    assert verify([*entries, extra], device_id=DEVICE, initial_key=K0).ok


def test_AD2_foreign_device_and_malformed_entries() -> None:
    entries, _ = make_chain(3)
    other, _ = make_chain(3, device="laptop-0043")
    assert verify(other, device_id=DEVICE, initial_key=None).reason == "edited"
    bad = [*entries[:2], edit(entries[2], action="Bad Action")]
    report = verify(bad, device_id=DEVICE, initial_key=K0)
    assert (report.reason, report.first_bad_seq) == ("malformed", 3)
    no_seq = [entries[0], edit(entries[1], seq=True)]
    assert verify(no_seq, device_id=DEVICE, initial_key=K0).reason == "malformed"


def test_AD2_gateway_verifies_uploads_incrementally_from_its_saved_state() -> None:
    entries, final = make_chain(20)
    first = verify(entries[:8], device_id=DEVICE, initial_key=K0)
    second = verify(entries[8:], device_id=DEVICE, initial_key=None, start=first.state)
    assert second.ok and second.state.key == final.key and second.head_hash == final.head_hash
    replay = verify(entries[7:], device_id=DEVICE, initial_key=None, start=first.state)
    assert (replay.reason, replay.first_bad_seq) == ("duplicate", 8)
    edited = [edit(entries[8], detail={"x": 1}), *entries[9:]]
    assert verify(edited, device_id=DEVICE, initial_key=None, start=first.state).reason == "edited"


# --- receipts -------------------------------------------------------------------------------


def test_receipt_signs_verifies_and_round_trips_as_json() -> None:
    entries, _ = make_chain(4)
    private, _ = _gateway()
    receipt = _receipt(private, entries, 4)
    verify_receipt(receipt, private.public_key(), now=T0 + timedelta(hours=2))
    again = receipt_from_json(receipt_to_json(receipt))
    assert again == receipt
    verify_receipt(again, private.public_key())


@pytest.mark.parametrize(
    "change",
    [
        {"last_seq": 3},
        {"head_hash": "0" * 64},
        {"device_id": "laptop-0043"},
        {"issued_at": T0 + timedelta(hours=5)},
    ],
)
def test_receipt_with_any_changed_field_is_refused(change: dict[str, Any]) -> None:
    entries, _ = make_chain(4)
    private, _ = _gateway()
    forged = dataclasses.replace(_receipt(private, entries, 4), **change)
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(forged, private.public_key())
    assert caught.value.reason == "signature"


def test_receipt_from_another_key_future_or_malformed_is_refused() -> None:
    entries, _ = make_chain(4)
    private, _ = _gateway()
    receipt = _receipt(private, entries, 4)
    with pytest.raises(ReceiptError, match="signature"):
        verify_receipt(receipt, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ReceiptError, match="future"):
        verify_receipt(receipt, private.public_key(), now=T0)
    for raw in (
        b"{}",
        b"[",
        b'{"a":1}' * 1000,
        receipt_to_json(receipt).replace(b'"last_seq":4', b'"last_seq":-4'),
    ):
        with pytest.raises(ReceiptError, match="malformed"):
            receipt_from_json(raw)


# --- FHIR AuditEvent export (AD-3) ------------------------------------------------------------


def test_AD3_record_view_maps_to_balp_patient_read() -> None:
    entries, _ = make_chain(3)
    event = to_audit_event(entries[2])
    assert event["resourceType"] == "AuditEvent"
    assert event["meta"]["profile"] == [
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
    ]
    assert event["type"]["code"] == "rest" and event["subtype"][0]["code"] == "read"
    assert event["action"] == "R" and event["outcome"] == "0"
    assert event["recorded"] == entries[2].ts
    assert event["entity"][0]["what"] == {"reference": "Patient/pat-17"}
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    user, device = event["agent"]
    assert user["who"]["identifier"]["value"] == "gp.jones" and user["requestor"] is True
    assert user["role"][0]["coding"][0]["code"] == "clinician"
    assert user["type"]["coding"][0]["code"] == "IRCP"
    note = to_audit_event(make_chain(6)[0][5])
    assert note["agent"][0]["type"]["coding"][0]["code"] == "AUT"
    assert device["who"]["identifier"]["value"] == DEVICE
    assert event["source"]["observer"]["identifier"]["value"] == DEVICE


def test_AD3_search_break_glass_and_blocked_copy_mappings() -> None:
    entries, _ = make_chain(9)
    search, btg, blocked = (to_audit_event(entries[i]) for i in (1, 3, 4))
    assert search["meta"]["profile"][0].endswith("IHE.BasicAudit.Query")
    assert search["subtype"][0]["code"] == "search-type" and search["action"] == "E"
    assert "entity" not in search
    assert btg["purposeOfEvent"] == [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG"}
            ],
            "text": "Transferred tonight, seizure",
        }
    ]
    assert btg["subtype"][0]["code"] == "110127"
    assert blocked["type"]["code"] == "110106" and blocked["outcome"] == "4"
    assert "meta" not in blocked  # a blocked copy disclosed nothing
    tamper = to_audit_event(entries[8])
    assert tamper["type"]["code"] == "110113" and len(tamper["agent"]) == 1
    export = to_audit_event(edit(entries[4], action="export", outcome="success"))
    assert export["meta"]["profile"][0].endswith("PrivacyDisclosure.Source")


def test_AD3_export_round_trips_and_reverifies() -> None:
    entries, _ = make_chain(9)
    bundle = export_bundle(entries)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    loaded = entries_from_bundle(json.loads(bundle_bytes(bundle)))
    assert loaded == entries
    assert verify(loaded, device_id=DEVICE, initial_key=K0).ok


def test_AD3_edit_in_the_readable_part_of_an_export_is_detected() -> None:
    entries, _ = make_chain(5)
    bundle = export_bundle(entries)
    bundle["entry"][2]["resource"]["entity"][0]["what"]["reference"] = "Patient/pat-99"
    with pytest.raises(AuditFormatError) as caught:
        entries_from_bundle(bundle)
    assert (caught.value.reason, caught.value.seq) == ("edited", 3)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b.update(type="searchset"),
        lambda b: b.update(extra=1),
        lambda b: b["entry"][0].pop("fullUrl"),
        lambda b: b["entry"][0]["resource"].pop("extension"),
        lambda b: b["entry"][0]["resource"]["extension"][0]["extension"].pop(),
        lambda b: b["entry"].append("not a dict"),
    ],
)
def test_AD3_malformed_exports_are_refused(damage: Callable[[dict], object]) -> None:
    bundle = export_bundle(make_chain(3)[0])
    damage(bundle)
    with pytest.raises(AuditFormatError) as caught:
        entries_from_bundle(bundle)
    assert caught.value.reason == "malformed"


def test_AD3_bundle_size_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = export_bundle(make_chain(3)[0])
    monkeypatch.setattr(audit_fhir, "MAX_BUNDLE_ENTRIES", 2)
    with pytest.raises(AuditFormatError, match="more than 2 entries"):
        entries_from_bundle(bundle)


def test_AD3_csv_rows_have_a_header_and_neutralise_formulas() -> None:
    entries, _ = make_chain(4)
    entries[3] = edit(entries[3], reason_text='=HYPERLINK("http://x")')
    rows = list(to_csv_rows(entries))
    assert rows[0][:3] == ["seq", "ts", "device_id"] and len(rows) == 5
    assert rows[4][9] == '\'=HYPERLINK("http://x")'
    assert rows[2][10] == '{"kind":"name_prefix","results":3}'


# --- any single-byte change to an export is caught (AD-2 on exports) ------------------------

_EXPORT_ENTRIES, _ = make_chain(5)
_EXPORT = bundle_bytes(export_bundle(_EXPORT_ENTRIES))


def _verdict(data: bytes) -> str:
    from sync.protocol.audit.entry import strict_json_loads

    try:
        loaded = entries_from_bundle(strict_json_loads(data))
    except AuditFormatError as exc:
        return exc.reason
    report = verify(loaded, device_id=DEVICE, initial_key=K0)
    return "ok" if report.ok else str(report.reason)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(0, len(_EXPORT) - 1), value=st.integers(0, 255))
def test_AD2_any_single_byte_mutation_of_an_export_is_detected(position: int, value: int) -> None:
    if _EXPORT[position] == value:
        value ^= 0x01
    mutated = _EXPORT[:position] + bytes([value]) + _EXPORT[position + 1 :]
    try:
        same_meaning = json.loads(mutated) == json.loads(_EXPORT)
    except ValueError:
        same_meaning = False
    if same_meaning:  # e.g. the trailing newline became a space: nothing to detect
        assert _verdict(mutated) == "ok"
        return
    assert _verdict(mutated) != "ok"


def test_AD2_the_mutation_oracle_accepts_the_untouched_export() -> None:
    assert _verdict(_EXPORT) == "ok"


# --- gatehouse-audit CLI --------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    entries, _ = make_chain(12)
    private, pem = _gateway()
    paths = {
        "export": tmp_path / "export.json",
        "key": tmp_path / "k0.hex",
        "receipt": tmp_path / "receipt.json",
        "pub": tmp_path / "gateway.pem",
        "short": tmp_path / "short.json",
        "forged": tmp_path / "forged.json",
    }
    paths["export"].write_bytes(bundle_bytes(export_bundle(entries)))
    paths["short"].write_bytes(bundle_bytes(export_bundle(entries[:9])))
    forged = forge_chain(entries, DEVICE, os.urandom(32), lambda i, e: {"reason_text": None})
    paths["forged"].write_bytes(bundle_bytes(export_bundle(forged)))
    paths["key"].write_text(K0.hex() + "\n")
    paths["receipt"].write_bytes(receipt_to_json(_receipt(private, entries, 11)))
    paths["pub"].write_bytes(pem)
    return paths


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _receipt_args(files: dict[str, Path]) -> list[object]:
    return ["--receipt", files["receipt"], "--gateway-key", files["pub"]]


def _verify_with_key_and_receipt(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> tuple[int, str, str]:
    return run(capsys, "verify", files["export"], "--key-file", files["key"], *_receipt_args(files))


def test_cli_ok_with_key_and_receipt(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = _verify_with_key_and_receipt(capsys, files)
    head = make_chain(12)[1].head_hash
    assert status == 0 and err == ""
    assert out.splitlines()[0] == f"OK: 12 entries, head {head}"
    status, out, _ = run(capsys, "verify", files["export"])
    assert status == 0 and "MACs not checked" in out and "no receipt" in out


def test_cli_reports_truncation_and_replacement(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "verify", files["short"], *_receipt_args(files))
    assert status == 1 and out.startswith("BROKEN at seq 10: truncated — ")
    status, out, _ = run(capsys, "verify", files["forged"], "--key-file", files["key"])
    assert status == 1 and out.startswith("BROKEN at seq 1: mac — ")
    status, out, _ = run(capsys, "verify", files["forged"], *_receipt_args(files))
    assert status == 1 and out.startswith("BROKEN at seq 11: replaced — ")


def test_cli_reports_an_edited_export(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = json.loads(files["export"].read_bytes())
    bundle["entry"][4]["resource"]["outcome"] = "8"
    files["export"].write_text(json.dumps(bundle, indent=2))
    status, out, err = run(capsys, "verify", files["export"])
    assert status == 1 and out.startswith("BROKEN at seq 5: edited — ") and err == ""


@pytest.mark.parametrize(
    "setup",
    [
        lambda f: f["export"].write_text("{not json"),
        lambda f: f["export"].write_text('{"resourceType": "Patient"}'),
        lambda f: f["export"].write_text("[" * 100_000),
        lambda f: f["export"].write_bytes(b"\xff\xfe"),
        lambda f: f["export"].unlink(),
        lambda f: f["key"].write_text("not hex"),
        lambda f: f["key"].write_text("ab" * 16),
        lambda f: f["receipt"].write_text("{}"),
        lambda f: f["pub"].write_bytes(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        ),
        lambda f: f["pub"].write_bytes(
            Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        ),
    ],
)
def test_cli_unusable_input_is_one_line_exit_2(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], setup: Callable[[dict], object]
) -> None:
    setup(files)
    status, out, err = _verify_with_key_and_receipt(capsys, files)
    assert status == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_usage_errors_exit_2(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "frobnicate")[0] == 2
    status, _, err = run(capsys, "verify", files["export"], "--receipt", files["receipt"])
    assert status == 2 and "--gateway-key" in err


def test_cli_runs_as_a_program_without_traceback(files: dict[str, Path]) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    for target, expected in ((files["export"], 0), (files["key"], 2)):
        done = subprocess.run(
            [sys.executable, "-m", "sync.protocol.audit.cli", "verify", str(target)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == expected
        assert "Traceback" not in done.stderr + done.stdout


def test_cli_writes_csv(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_path = tmp_path / "audit.csv"
    assert run(capsys, "csv", files["export"], "--out", out_path)[0] == 0
    lines = out_path.read_text().splitlines()
    assert lines[0].startswith("seq,ts,device_id") and len(lines) == 13
