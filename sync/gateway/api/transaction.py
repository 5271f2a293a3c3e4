"""``transaction`` and ``batch`` Bundles POSTed to /fhir.

Invariants:
- A transaction is all or nothing: it runs in ONE store write transaction; the first failing
  entry rolls everything back and the answer is that entry's OperationOutcome.
  A transaction the database rolled back to break a deadlock with another (two sites locked
  in opposite orders, on PostgreSQL) is run again from the Bundle as received
  (``store.conflicts``): the laptop gets its answer, never the deadlock.
- A batch runs each entry in its own write transaction and reports each entry's outcome. A
  batch whose entries are all GETs is a batch of reads (``sync.gateway.api.read_batch``).
- Exactly-once creates: ``ifNoneExist: identifier=system|value`` finds a live resource of the
  same type in the device's site with that identifier → 200 with the existing resource, no
  new one (a retry after a lost reply is harmless). Two matches → 412.
- Updates require ``ifMatch: W/"n"`` (versioned update): a mismatch → 412 carrying the current
  version; an update never silently overwrites. The one exception: versions after ``n`` that
  are only the gateway's filing stamps (``sync.gateway.upstream.stamps``: same content, a
  filing tag added) are no one's edit, so ``n`` is still the content the laptop edited.
- The filing tags (``sync.protocol.fhir.filing``) are the gateway's: stripped from whatever a
  laptop writes.
- Site scope: a Patient written must be managed by the device's site; a clinical resource must
  reference a live patient of the device's site (else 404, indistinguishable from "no such
  patient"); an update or delete touches only resources of the device's site (else 404).
  One exception (``sync.gateway.late_notes``): a clinical resource for a live patient now
  managed elsewhere is created — filed in the patient's record at their current site — when
  its clinical time falls in the patient's stay at the device's site or in this device's
  break-glass grant to the patient; a patient who was at the device's site but left before it
  is refused with 403 ``patient_left_site`` (``diagnostics``: ``left_at=<instant>``). An
  exactly-once retry of such a create finds the filed resource in its new site.
- Every version a transaction or batch entry writes is queued for the upstream
  (``upstream_outbox``) in the same store transaction; an exactly-once retry queues nothing.
- The Bundle is read whole before anything runs (``api.bundle_entries``: bounded, every
  resource checked and validated); anything it refuses is a 4xx before anything is stored.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from sync.gateway import late_notes
from sync.gateway.api.bundle_entries import (
    MAX_BUNDLE_DEPTH,
    ORDER,
    Entry,
    bad_request,
    parse_bundle_value,
    parse_json,
    read_body,
)
from sync.gateway.api.outcome import (
    FhirError,
    etag,
    fhir_response,
    operation_outcome,
    status_text,
)
from sync.gateway.api.read_batch import answer_reads, read_urls
from sync.gateway.store import resources as res
from sync.gateway.store.base import (
    DatabaseFailure,
    Store,
    StoredResource,
    StoreError,
    WriteTx,
    fhir_instant,
)
from sync.gateway.store.conflicts import retry_conflicts
from sync.gateway.store.loader import prefetch_keys
from sync.gateway.store.outbox_tables import OutboxTables
from sync.protocol.fhir import vocabulary as vocab
from sync.protocol.fhir.filing import without_filing_tags

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scope:
    """Who writes: the device (from its certificate) and its site."""

    site: str
    device_id: str


@dataclass
class Outcome:
    status: int
    stored: StoredResource | None
    written: StoredResource | None = None  # the new version this entry wrote (upstream outbox)


def _rewrite_references(value: Any, urn_map: dict[str, str]) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("reference")
            if isinstance(ref, str) and ref in urn_map:
                item["reference"] = urn_map[ref]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _late_admission(tx: WriteTx, resource: dict[str, Any], scope: Scope) -> late_notes.Admission:
    """``late_notes.admit`` for a clinical resource whose patient is now managed elsewhere."""
    patient_id = res.patient_id_of(resource)
    return late_notes.admit(
        resource,
        site=scope.site,
        stays=tx.site_stays(patient_id),
        grants=tx.break_glass_uses(scope.device_id, patient_id),
    )


def _check_scope(tx: WriteTx, entry: Entry, scope: Scope) -> None:
    assert entry.resource is not None
    try:
        if entry.rtype == vocab.PATIENT:
            if res.site_of_patient(entry.resource) != scope.site:
                raise FhirError(403, "forbidden", "other_site")
            return
        current = tx.patient_site(res.patient_id_of(entry.resource))
        if current == scope.site:
            return
        if current is None or entry.method != "POST":
            raise FhirError(404, "not-found", "unknown_patient")
        admission = _late_admission(tx, entry.resource, scope)
    except res.ResourceError as err:
        raise bad_request(err.reason) from None
    if admission.admitted:
        log.info("late note filed for a transferred patient: %s", entry.rtype)
        return
    if admission.reason == late_notes.LEFT_SITE:
        left = admission.left_at
        raise FhirError(
            403,
            "forbidden",
            late_notes.LEFT_SITE,
            diagnostics=None if left is None else f"left_at={fhir_instant(left)}",
        )
    raise FhirError(404, "not-found", "unknown_patient")


def _filed_elsewhere(
    tx: WriteTx, entry: Entry, scope: Scope, everywhere: list[StoredResource]
) -> list[StoredResource]:
    """An earlier create of this late note, filed at the patient's new site (exactly once);
    ``everywhere``: the live resources with its identifier in any site."""
    if entry.resource is None or entry.rtype not in vocab.CLINICAL_TYPES:
        return []
    try:
        patient_id = res.patient_id_of(entry.resource)
    except res.ResourceError:
        return []  # a urn: reference: the patient is created in this Bundle
    found = [
        match for match in everywhere if match.site != scope.site and match.patient_id == patient_id
    ]
    if found and _late_admission(tx, entry.resource, scope).admitted:
        return found
    return []


def _existing_in_site(
    tx: WriteTx, entry: Entry, site: str, store: Store | None = None
) -> StoredResource:
    assert entry.rid is not None
    current = tx.current(entry.rtype, entry.rid)
    if current is None or current.site != site:
        raise FhirError(404, "not-found", "not_found")
    if (
        entry.if_match is not None
        and entry.if_match != current.version_id
        and not _only_stamped_since(store, entry, entry.if_match, current.version_id)
    ):
        raise FhirError(412, "conflict", "version_mismatch", current=current)
    return current


def _only_stamped_since(store: Store | None, entry: Entry, base: int, current: int) -> bool:
    """Whether the versions after ``base`` only tag the note's filing state (the gateway's
    filing stamps, ``sync.gateway.upstream.stamps``): then no one else edited it."""
    if not isinstance(store, OutboxTables) or entry.rid is None:
        return False
    return store.only_stamps_after(entry.rtype, entry.rid, base, current)


def resolve_creates(
    tx: WriteTx, entries: list[Entry], scope: Scope
) -> tuple[dict[int, StoredResource], dict[str, str]]:
    """For each POST: the existing match of ``ifNoneExist`` or its own id (→ ``rid``; a fresh
    one when it has none yet)."""
    existing: dict[int, StoredResource] = {}
    urn_map: dict[str, str] = {}
    wanted = [
        (e.rtype, *e.if_none_exist)
        for e in entries
        if e.method == "POST" and e.if_none_exist is not None
    ]
    found = tx.find_by_identifiers(scope.site, wanted) if wanted else {}
    for entry in entries:
        if entry.method != "POST":
            continue
        if entry.if_none_exist is not None:
            everywhere = found[(entry.rtype, *entry.if_none_exist)]
            matches = [match for match in everywhere if match.site == scope.site]
            if not matches:
                matches = _filed_elsewhere(tx, entry, scope, everywhere)
            if len(matches) > 1:
                raise FhirError(412, "multiple-matches", "if_none_exist_ambiguous")
            if matches:
                existing[entry.index] = matches[0]
                entry.rid = matches[0].rid
        if entry.rid is None:
            entry.rid = str(uuid.uuid4())
        if entry.full_url is not None and vocab.URN_UUID_RE.fullmatch(entry.full_url):
            urn_map[entry.full_url] = f"{entry.rtype}/{entry.rid}"
    return existing, urn_map


def execute(
    tx: WriteTx,
    entry: Entry,
    scope: Scope,
    existing: StoredResource | None,
    store: Store | None = None,
) -> Outcome:
    """Run one entry inside ``tx``; raise ``FhirError`` to refuse it. ``store``: the store of
    ``tx``, for the filing stamps a laptop's ``ifMatch`` may name (None: none are known)."""
    assert entry.rid is not None
    site = scope.site
    if entry.method == "POST" and existing is not None:
        return Outcome(200, existing)  # ifNoneExist matched: exactly-once create
    if entry.method == "DELETE":
        if entry.rtype == vocab.PATIENT:  # registration is the health board's, never a laptop's
            raise FhirError(403, "forbidden", "patient_delete_refused")
        current = _existing_in_site(tx, entry, site, store)
        if current.deleted:
            return Outcome(204, None)
        return Outcome(204, None, tx.delete(entry.rtype, entry.rid))
    assert entry.resource is not None
    entry.resource = without_filing_tags(entry.resource)  # only the gateway sets them
    if entry.method == "PUT":
        current = _existing_in_site(tx, entry, site, store)
        if current.deleted:
            raise FhirError(410, "deleted", "deleted")
        if entry.if_match is None:
            raise FhirError(428, "required", "if_match_required", current=current)
    _check_scope(tx, entry, scope)
    try:
        stored = tx.put(entry.rtype, entry.rid, entry.resource)
    except DatabaseFailure:
        raise  # the gateway's trouble, not the entry's: 503 with Retry-After (api/fhir.py)
    except (StoreError, res.ResourceError) as err:
        raise bad_request(err.reason) from None
    return Outcome(201 if entry.method == "POST" else 200, stored, stored)


def _response_entry(base: str, entry: Entry, outcome: Outcome) -> dict[str, Any]:
    response: dict[str, Any] = {"status": status_text(outcome.status)}
    result: dict[str, Any] = {}
    stored = outcome.stored
    if stored is not None:
        result["fullUrl"] = f"{base}/{stored.rtype}/{stored.rid}"
        response["location"] = f"{stored.rtype}/{stored.rid}/_history/{stored.version_id}"
        response["etag"] = etag(stored.version_id)
        response["lastModified"] = fhir_instant(stored.last_updated)
        result["resource"] = orjson.Fragment(stored.body)
    result["response"] = response
    return result


def _error_entry(error: FhirError) -> dict[str, Any]:
    response: dict[str, Any] = {
        "status": status_text(error.status),
        "outcome": operation_outcome(error),
    }
    if error.current is not None:
        response["etag"] = etag(error.current.version_id)
    return {"response": response}


def _queue_upstream(store: Store, tx: WriteTx, outcomes: Iterable[Outcome]) -> None:
    """Queue every version written for the upstream, in the writing transaction (the store's
    ``upstream_outbox``; see ``store.upstream_tables``). The writes are flushed first, so each
    version has its change seq (PostgreSQL assigns seqs at the flush), which keys the row."""
    if not isinstance(store, OutboxTables):
        return
    versions = [o.written for o in outcomes if o.written is not None]
    if not versions:
        return
    tx.flush()
    for written in versions:
        op = "delete" if written.deleted else "put"
        store.queue_upstream_in_tx(
            written.rtype, written.rid, written.version_id, op, written.last_updated
        )


def run_transaction(store: Store, entries: list[Entry], scope: Scope) -> list[Outcome]:
    """The whole Bundle in one write transaction; run again from the entries as parsed when
    the database broke a deadlock with it (``store.conflicts``): nothing of a rolled-back
    attempt stays (the first attempt changes ``entries``: every later one runs on a fresh
    copy of them as they were)."""
    as_parsed = _snapshot(entries)
    first = [entries]
    return retry_conflicts(
        lambda: _run_transaction_once(store, first.pop() if first else as_parsed(), scope)
    )


def _snapshot(entries: list[Entry]) -> Callable[[], list[Entry]]:
    """A way back to ``entries`` as they are now (their resources are JSON, parsed from it)."""
    kept = [(e, e.rid, None if e.resource is None else orjson.dumps(e.resource)) for e in entries]
    return lambda: [
        replace(e, rid=rid, resource=None if raw is None else orjson.loads(raw))
        for e, rid, raw in kept
    ]


def _run_transaction_once(store: Store, entries: list[Entry], scope: Scope) -> list[Outcome]:
    for entry in entries:
        if entry.method == "POST" and entry.rid is None:
            entry.rid = str(uuid.uuid4())  # a create's own id, unless ifNoneExist finds one
    with store.write() as tx:
        # Every site known now (the device's, its patients') locked first, in one order; the
        # creates' new ids are read in the same go (none exists: nothing to read later).
        tx.prefetch(
            prefetch_keys((e.rtype, e.rid, e.resource or {}) for e in entries),
            sites=(scope.site,),
        )
        existing, urn_map = resolve_creates(tx, entries, scope)
        for entry in entries:
            if entry.resource is not None:
                _rewrite_references(entry.resource, urn_map)
        tx.prefetch(
            prefetch_keys((e.rtype, e.rid, e.resource or {}) for e in entries if e.rid is not None)
        )
        outcomes: dict[int, Outcome] = {}
        ordered = sorted(
            entries,
            key=lambda e: (ORDER[e.method], e.method == "POST" and e.rtype != vocab.PATIENT),
        )
        for entry in ordered:
            outcomes[entry.index] = execute(tx, entry, scope, existing.get(entry.index), store)
        _queue_upstream(store, tx, outcomes.values())
    return [outcomes[e.index] for e in entries]


def run_batch_entry(store: Store, entry: Entry, scope: Scope) -> Outcome | FhirError:
    as_parsed = _snapshot([entry])
    first = [[entry]]

    def once() -> Outcome:
        [attempt] = first.pop() if first else as_parsed()
        with store.write() as tx:
            existing, _ = resolve_creates(tx, [attempt], scope)
            outcome = execute(tx, attempt, scope, existing.get(attempt.index), store)
            _queue_upstream(store, tx, [outcome])
            return outcome

    try:
        return retry_conflicts(once)
    except FhirError as err:
        return err


async def handle_bundle(request: Request, store: Store, scope: Scope) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type not in ("application/fhir+json", "application/json"):
        raise FhirError(415, "not-supported", "unsupported_media_type")
    parsed = parse_json(await read_body(request), MAX_BUNDLE_DEPTH)
    if isinstance(parsed, dict) and parsed.get("type") == "batch":
        urls = read_urls(parsed)  # a batch of reads (sync.gateway.api.read_batch)
        if urls is not None:
            return await answer_reads(request, urls)
    kind, entries = parse_bundle_value(parsed)
    base = str(request.base_url).rstrip("/") + "/fhir"
    if kind == "transaction":
        outcomes = await run_in_threadpool(run_transaction, store, entries, scope)
        result = [_response_entry(base, e, o) for e, o in zip(entries, outcomes, strict=True)]
        return fhir_response(
            {"resourceType": "Bundle", "type": "transaction-response", "entry": result}
        )
    answers: list[dict[str, Any]] = []
    for entry in entries:
        outcome = await run_in_threadpool(run_batch_entry, store, entry, scope)
        if isinstance(outcome, FhirError):
            answers.append(_error_entry(outcome))
        else:
            answers.append(_response_entry(base, entry, outcome))
    return fhir_response({"resourceType": "Bundle", "type": "batch-response", "entry": answers})
