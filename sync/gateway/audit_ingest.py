"""Audit ingestion on the gateway (AD-2): verify each device's uploaded chain, store, receipt.

Invariants:
- An upload is an export Bundle (``sync.protocol.audit.audit_event``). Every entry is rebuilt from
  its chained
  canonical form and its AuditEvent must match exactly (an edited readable part is ``edited``).
- The upload is verified as the continuation of the gateway's stored state for the device,
  MACs included (keys evolve from the enrolment k0), with the last receipt as checkpoint: a
  gap, reorder, duplicate, edited entry, bad MAC, replacement of acknowledged entries or an
  upload ending before the acknowledged head (truncation) is ``chain_broken`` with the first
  bad seq and reason. Entries that verified before the break are kept; an alert row is stored.
- Already stored entries may be sent again (a lost answer, or a first copy that arrives late,
  after the next batch was stored): an upload that ends at or below the stored head and matches
  what is stored, entry for entry (each entry links to the stored one before it, every MAC
  verifies with its evolved key, and the last hash equals the stored hash at that seq, so by the
  hash chain every entry between equals the stored one) is a duplicate: nothing is written, no
  alert, and the answer is the stored receipt (idempotent). Such an upload that differs from
  what is stored is ``replaced`` at the first differing seq; one that does not verify is broken
  as any other. A prefix of the stored chain alone is never called truncation: it cannot be
  told from a late duplicate; removal of entries shows when the device next uploads a
  different entry at a stored seq (``replaced``), and on the device against its receipts.
- The chain state moves by compare-and-set (``Store.audit_append``): concurrent uploads for one
  device are verified again from the new state, never applied twice.
- Receipts are ``sync.protocol.audit.receipt`` receipts signed with the gateway's receipt key.
- Once stored, a clinician's "keep theirs" in an upstream conflict closes the gateway's
  conflict row (``upstream.settled``); nothing else in an entry changes any record state.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.gateway.errors import ControlError
from sync.gateway.store.base import AuditAlert, AuditChainRecord, AuditRow, Store, StoreError
from sync.gateway.upstream.settled import settle_kept_theirs
from sync.protocol.audit.audit_event import entries_from_bundle, to_audit_event
from sync.protocol.audit.chain import ChainState, VerifyReport, genesis_hash, next_key, verify
from sync.protocol.audit.entry import AuditEntry, AuditFormatError
from sync.protocol.audit.receipt import receipt_from_json, receipt_to_json, sign_receipt

log = logging.getLogger(__name__)

MAX_UPLOAD_ENTRIES = 10_000
MAX_CAS_ATTEMPTS = 5


@dataclass(frozen=True)
class Broken:
    first_bad_seq: int | None
    reason: str
    sentence: str


@dataclass(frozen=True)
class IngestResult:
    receipt: dict[str, Any]  # the receipt for what the gateway holds now
    stored: int  # entries newly stored by this upload
    broken: Broken | None


def parse_upload(bundle: object) -> tuple[list[AuditEntry], Broken | None]:
    """The entries before the first bad one, and that problem (if any)."""
    if (
        not isinstance(bundle, dict)
        or set(bundle) != {"resourceType", "type", "entry"}
        or bundle["resourceType"] != "Bundle"
        or bundle["type"] != "collection"
        or not isinstance(bundle["entry"], list)
    ):
        raise ControlError(400, "audit_bundle_invalid")
    if len(bundle["entry"]) > MAX_UPLOAD_ENTRIES:
        raise ControlError(413, "body_too_large")
    entries: list[AuditEntry] = []
    for item in bundle["entry"]:
        one = {"resourceType": "Bundle", "type": "collection", "entry": [item]}
        try:
            entries.extend(entries_from_bundle(one))
        except AuditFormatError as err:
            guess = entries[-1].seq + 1 if entries else None
            return entries, Broken(err.seq if err.seq is not None else guess, err.reason, str(err))
    return entries, None


def _row(entry: AuditEntry, site: str) -> AuditRow:
    return AuditRow(
        device_id=entry.device_id,
        site=site,
        seq=entry.seq,
        ts=dt.datetime.fromisoformat(entry.ts),
        user_id=entry.user_id,
        role=entry.role,
        action=entry.action,
        fhir_action=str(to_audit_event(entry)["action"]),
        outcome=entry.outcome,
        patient_id=entry.patient_id,
        purpose=entry.purpose,
        entry_hash=entry.entry_hash(),
        canonical=entry.canonical_bytes().decode("utf-8"),
        mac=entry.mac,
    )


def _start_state(store: Store, chain: AuditChainRecord, first_seq: int | None) -> ChainState:
    """Where verification starts: just before the first uploaded entry when that is a stored
    one (a re-send), else the stored head."""
    if first_seq is None or not 1 <= first_seq <= chain.seq:
        return ChainState(chain.seq, chain.head_hash, chain.key)
    start = first_seq - 1
    head = (
        genesis_hash(chain.device_id)
        if start == 0
        else store.audit_entry_hash(chain.device_id, start)
    )
    if head is None:  # cannot happen while entries 1..seq are stored; fail closed
        return ChainState(chain.seq, chain.head_hash, chain.key)
    key = chain.k0
    for _ in range(start):
        key = next_key(key)
    return ChainState(start, head, key)


def _receipt(key: Ed25519PrivateKey, device_id: str, seq: int, head: str, now: dt.datetime) -> str:
    receipt = sign_receipt(key, device_id=device_id, last_seq=seq, head_hash=head, issued_at=now)
    return receipt_to_json(receipt).decode("ascii")


def _broken(report: VerifyReport, parse_problem: Broken | None) -> Broken | None:
    if report.ok or (parse_problem is not None and report.reason == "truncated"):
        return parse_problem
    return Broken(report.first_bad_seq, report.reason or "malformed", report.sentence)


def _stored_range_problem(
    store: Store, chain: AuditChainRecord, entries: Sequence[AuditEntry], start: ChainState
) -> Broken | None:
    """None when ``entries`` (all at or below the stored head) are exactly the stored ones."""
    report = verify(entries, device_id=chain.device_id, initial_key=None, start=start)
    if not report.ok:
        return Broken(report.first_bad_seq, report.reason or "malformed", report.sentence)
    if store.audit_entry_hash(chain.device_id, entries[-1].seq) == report.state.head_hash:
        return None
    first = next(
        e.seq for e in entries if store.audit_entry_hash(chain.device_id, e.seq) != e.entry_hash()
    )
    return Broken(
        first,
        "replaced",
        f"entry {first} differs from the entry {first} the gateway stored and acknowledged: "
        "the chain up to it was replaced.",
    )


def _alert(store: Store, chain: AuditChainRecord, broken: Broken, now: dt.datetime) -> None:
    store.add_audit_alert(
        AuditAlert(
            alert_id=str(uuid.uuid4()),
            device_id=chain.device_id,
            site=chain.site,
            raised_at=now,
            first_bad_seq=broken.first_bad_seq,
            reason=broken.reason,
            sentence=broken.sentence[:500],
        )
    )
    log.warning("audit chain broken: reason=%s", broken.reason)


def ingest(
    store: Store,
    receipt_key: Ed25519PrivateKey,
    *,
    device_id: str,
    bundle: object,
    now: dt.datetime,
) -> IngestResult:
    entries, parse_problem = parse_upload(bundle)
    for _attempt in range(MAX_CAS_ATTEMPTS):
        chain = store.audit_chain(device_id)
        if chain is None:
            raise ControlError(409, "audit_chain_unknown")
        start = _start_state(store, chain, entries[0].seq if entries else None)
        if entries and parse_problem is None and entries[-1].seq <= chain.seq:
            # a re-send or a late first copy of stored entries: the stored receipt, no alert
            problem = _stored_range_problem(store, chain, entries, start)
            if problem is not None:
                _alert(store, chain, problem, now)
            receipt_text = chain.receipt or _receipt(
                receipt_key, device_id, chain.seq, chain.head_hash, now
            )
            return IngestResult(orjson.loads(receipt_text), 0, problem)
        checkpoint = receipt_from_json(chain.receipt) if chain.receipt else None
        if checkpoint is not None and checkpoint.last_seq <= start.seq:
            checkpoint = None
        report = verify(
            entries, device_id=device_id, initial_key=None, checkpoint=checkpoint, start=start
        )
        broken = _broken(report, parse_problem)
        fresh: Sequence[AuditEntry] = [
            e for e in entries[: report.entries_checked] if e.seq > chain.seq
        ]
        state = report.state
        if fresh and state.seq > chain.seq and state.key is not None:
            receipt_text = _receipt(receipt_key, device_id, state.seq, state.head_hash, now)
            moved = store.audit_append(
                device_id,
                expect_seq=chain.seq,
                expect_head=chain.head_hash,
                new_seq=state.seq,
                new_head=state.head_hash,
                new_key=state.key,
                receipt=receipt_text,
                rows=[_row(e, chain.site) for e in fresh],
            )
            if not moved:
                continue  # another upload moved the chain: verify again from its state
            stored = len(fresh)
            try:
                settle_kept_theirs(store, fresh, chain.site, now)
            except StoreError as err:  # the entries are stored: the receipt must still go back
                log.warning("upstream conflicts not settled from an audit upload: %s", err.reason)
        else:
            receipt_text = chain.receipt or _receipt(
                receipt_key, device_id, chain.seq, chain.head_hash, now
            )
            stored = 0
        if broken is not None:
            _alert(store, chain, broken, now)
        return IngestResult(orjson.loads(receipt_text), stored, broken)
    raise ControlError(503, "audit_busy")
