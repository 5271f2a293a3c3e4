"""Push: send the outbox to the server in FHIR transaction Bundles (DESIGN.md §Sync).

Invariants:
- Exactly-once creates: every create carries its client identifier as ``ifNoneExist``; a push
  whose reply was lost is simply sent again and the server answers with the existing resource
  (CR-2). Updates carry ``ifMatch``; a 412 (or a 404/410 for an update) becomes a conflict
  record holding both versions, never a silent overwrite.
- One bad item never blocks the others: a transaction refused as a whole is split into its
  consultation groups, each sent alone; a refused group is recorded as a push error (visible,
  retried next sync) and the rest goes on. A 5xx stops the push (the server is unwell).
- A push error's code is ``http_<status>``, followed by ``:<reason>`` when the server's
  OperationOutcome names a stable reason code (``http_403:patient_left_site``), so the laptop
  can say why and what to do; server free text is never kept.
- The replies of one Bundle are marked sent in ONE replica transaction; an item the replica
  refuses stays pending and is sent again next sync, where ifNoneExist / ifMatch make the
  repeat harmless.
- Each outbox item is sent at most once per push (no loop on an item that keeps failing);
  cancellation is checked between Bundles.
- A server's transaction size limit never leaves a note unsent (issue 13, NW-6): a single
  consultation refused with 400, 413 or 422 (``SPLIT_STATUSES``) is split in two, in order, and
  each half sent on its own (split again if still refused). The first half's replies are
  marked sent before the second half is read back from the replica, so the second half's
  references to it already carry the server's ids (``Type/<id>``, rewritten by
  ``mark_sent``). Every create still carries ``ifNoneExist``: a half whose reply was lost is
  re-sent without a duplicate. A consultation split this way is no longer atomic on the
  server: a half that keeps failing stays pending as a visible push error.
- What the server says it offers (its CapabilityStatement, ``ServerProfile``) is used BEFORE
  anything is sent (issue 13 item 1):
  - an advertised transaction size limit: no Bundle larger than it is ever posted; whole
    consultations are packed up to the limit and a larger one goes in ordered pieces (each
    piece read back after the one before, as for a refusal split above). A limit learned from
    a refusal (a half that went through) is used the same way for the rest of the push;
  - a type WITHOUT conditional create: its creates are first looked up by client identifier
    (``sync.device.created_lookup``) and those found are marked sent, so a lost reply never
    becomes a second copy; the others are sent without relying on ``ifNoneExist``, and the
    transport never repeats such a Bundle blind: after a lost reply the lookup runs again;
  - a type WITHOUT versioned update (If-Match): its updates are HELD, never sent blind (an
    update without If-Match could overwrite another clinician's edit). Each is a visible push
    error ``held:no_if_match``; the change stays on the laptop and goes when the server
    offers If-Match.
  A server that does not describe itself (no profile) is sent to as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from sync.device.created_lookup import find_already_created
from sync.device.outcome import FHIR_JSON, SyncError, SyncResult, raise_if_cancelled
from sync.device.replica import (
    EXTRA_FULL_URL,
    EXTRA_GROUP,
    EXTRA_IF_NONE_EXIST,
    OutboxItem,
    Replica,
    SentItem,
)
from sync.device.transport import Response, Transport, TransportError
from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded
from sync.protocol.fhir.bundle import (
    bundle_entries,
    parse_response_entry,
    refusal_code,
    transaction,
)
from sync.protocol.fhir.capability import ServerProfile
from sync.protocol.fhir.validate import InvalidResource, validate_resource

log = logging.getLogger(__name__)

PUSH_BATCH = 50  # outbox items per transaction Bundle
# A whole consultation refused with one of these is split, not given up on: servers refuse
# transactions past their size or isolation limits with 400, 413 or 422.
SPLIT_STATUSES = frozenset({400, 413, 422})
SPLIT_REREAD_LIMIT = 10_000  # outbox items read back to find a split group's second half
LOOKUP_RETRIES = 3  # posts of one Bundle to a server without conditional create, lookups between
LOST_REPLY_REASONS = frozenset({"timeout", "connection"})  # the transport's own retry reasons
HELD_NO_IF_MATCH = "held:no_if_match"  # an update held: the server cannot check its base version


class OutboxPush:
    """One push of the whole outbox over the engine's transport, counted in its result."""

    def __init__(
        self,
        transport: Transport,
        replica: Replica,
        result: SyncResult,
        *,
        batch: int = PUSH_BATCH,
        report: Callable[[int], None],
        cancel: threading.Event,
        fhir_base: str = "fhir",
        profile: ServerProfile | None = None,
    ) -> None:
        self._transport = transport
        self._profile = profile
        # No Bundle larger than this is posted (advertised, or learned from a refusal).
        self._limit = profile.max_transaction_entries if profile is not None else None
        self._base = fhir_base.rstrip("/")
        self._replica = replica
        self.result = result
        self._batch = batch
        self._report = report
        self._cancel = cancel

    def run(self) -> None:
        """Send the outbox in transaction Bundles until it is empty (or only errors remain)."""
        attempted: set[int] = set()
        while True:
            raise_if_cancelled(self._cancel)
            items = [i for i in self._replica.list_outbox(self._batch) if i.seq not in attempted]
            if not items:
                return
            attempted.update(i.seq for i in items)
            self._push_items(items)
            self._report(self.result.pushed)

    def _json(self, response: Response, what: str) -> Any:
        try:
            return loads_bounded(response.body)
        except BoundedJsonError as error:
            raise SyncError("bad_response", f"the gateway's {what} is not acceptable") from error

    def _push_items(self, items: Sequence[OutboxItem]) -> None:
        items = self._held_back(items)
        if not items:
            return
        if self._limit is not None and len(items) > self._limit:
            self._send_in_pieces(items, self._limit)
            return
        items = self._not_yet_created(items)
        if not items:
            return
        items, response = self._post_settled(items)
        if response is None:
            return  # the server turned out to hold all of it already
        if response.status == 200:
            self._apply_push_response(items, response)
            return
        if len(items) == 1 and (response.status == 412 or _gone(response.status, items[0])):
            self._conflict(items[0])
            return
        groups = _groups(items)
        if response.status >= 500:
            raise SyncError("server_error", "the gateway could not take the notes right now")
        if len(groups) > 1:
            for group in groups:  # one bad item must not block the others
                self._push_items(group)
            return
        if len(items) > 1 and response.status == 412:
            for item in items:
                self._push_items([item])
            return
        if len(items) > 1 and response.status in SPLIT_STATUSES:
            self._split(items)
            return
        code = _error_code(response.status, _outcome_of(response))
        for item in items:
            self._replica.record_push_error(item.seq, code)
            self.result.push_errors += 1

    def _split(self, items: Sequence[OutboxItem]) -> None:
        """Send one refused group as two ordered halves (module docstring); a first half that
        goes through whole teaches the push a size limit for the rest of this push."""
        half = len(items) // 2
        first, rest = items[:half], {item.seq for item in items[half:]}
        errors_before = self.result.push_errors
        self._push_items(first)
        if self.result.push_errors == errors_before and (self._limit is None or self._limit > half):
            self._limit = half
        self._send_rest(rest)

    def _send_in_pieces(self, items: Sequence[OutboxItem], limit: int) -> None:
        """Send ``items`` in ordered Bundles of at most ``limit`` entries: whole consultations
        packed together while they fit, a larger one cut in order. Each later piece is read
        back from the replica after the one before was marked sent, so its references to
        earlier pieces already carry the server's ids."""
        piece = _first_piece(items, limit)
        self._push_items(piece)
        sent = {item.seq for item in piece}
        self._send_rest({item.seq for item in items if item.seq not in sent})

    def _send_rest(self, rest: set[int]) -> None:
        if not rest:
            return
        # Read the rest back: mark_sent rewrote its references to the sent part's server ids.
        pending = self._replica.list_outbox(SPLIT_REREAD_LIMIT)
        later = [item for item in pending if item.seq in rest]
        if later:
            self._push_items(later)

    def _held_back(self, items: Sequence[OutboxItem]) -> list[OutboxItem]:
        """Updates the server cannot check (no If-Match) are held as visible push errors."""
        kept: list[OutboxItem] = []
        for item in items:
            if (
                item.operation == "update"
                and self._profile is not None
                and not self._profile.of(item.resource_type).versioned_update
            ):
                self._replica.record_push_error(item.seq, HELD_NO_IF_MATCH)
                self.result.push_errors += 1
            else:
                kept.append(item)
        return kept

    def _not_yet_created(self, items: Sequence[OutboxItem]) -> list[OutboxItem]:
        """Without conditional create, creates the server already holds (a lost reply) are
        marked sent from a lookup by client identifier; the rest is read back and returned."""
        profile = self._profile
        if profile is None:
            return list(items)
        unchecked = [
            item
            for item in items
            if item.operation == "create" and not profile.of(item.resource_type).conditional_create
        ]
        if not unchecked:
            return list(items)
        found = find_already_created(self._transport, self._base, unchecked)
        if not found:
            return list(items)
        refused = self._replica.mark_sent_batch(found)
        self.result.pushed += len(found) - len(refused)
        self.result.push_errors += len(refused)
        done = {sent.seq for sent in found}
        rest = {item.seq for item in items if item.seq not in done}
        pending = self._replica.list_outbox(SPLIT_REREAD_LIMIT)
        return [item for item in pending if item.seq in rest]

    def _post_settled(
        self, items: Sequence[OutboxItem]
    ) -> tuple[Sequence[OutboxItem], Response | None]:
        """Post ``items``; returns what was posted last and the answer (None: nothing left).

        Where every create is conditional (or there is none) the transport retries a lost
        reply itself. Otherwise a repeat of the same Bundle could create a second copy, so the
        transport sends it once; after a lost reply the creates are looked up again and only
        what the server does not hold is sent (``LOOKUP_RETRIES`` times at most)."""
        if self._all_creates_conditional(items):
            return items, self._post_transaction(items, idempotent=True)
        for attempt in range(1, LOOKUP_RETRIES + 1):
            try:
                return items, self._post_transaction(items, idempotent=False)
            except TransportError as error:
                if attempt == LOOKUP_RETRIES or error.reason not in LOST_REPLY_REASONS:
                    raise
                self._transport.wait_before_retry(attempt)
                items = self._not_yet_created(items)
                if not items:
                    return items, None
        raise AssertionError("unreachable")  # pragma: no cover

    def _all_creates_conditional(self, items: Sequence[OutboxItem]) -> bool:
        profile = self._profile
        return profile is None or all(
            item.operation != "create" or profile.of(item.resource_type).conditional_create
            for item in items
        )

    def _post_transaction(self, items: Sequence[OutboxItem], *, idempotent: bool) -> Response:
        bundle = transaction([_entry(item) for item in items])
        # Idempotent when every create carries an honoured ifNoneExist (updates carry ifMatch).
        return self._transport.request(
            "POST",
            self._base,
            body=orjson.dumps(bundle),
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
            idempotent=idempotent,
        )

    def _apply_push_response(self, items: Sequence[OutboxItem], response: Response) -> None:
        bundle = self._json(response, "transaction response")
        try:
            entries = bundle_entries(bundle, "transaction-response")
            replies = [parse_response_entry(e, i) for i, e in enumerate(entries)]
        except InvalidResource as error:
            raise SyncError("bad_response", "the gateway's answer is malformed") from error
        if len(replies) != len(items):
            raise SyncError("bad_response", "the gateway answered a different number of items")
        sent: list[SentItem] = []
        for item, reply in zip(items, replies, strict=True):
            if reply.status in (200, 201) and reply.location:
                server_id = _id_from_location(reply.location, item.resource_type)
                meta = _reply_meta(reply.resource)
                version = (
                    reply.version_id
                    or _version_from_location(reply.location)
                    or _text(meta.get("versionId"))
                    or "1"
                )
                stamp = _text(meta.get("lastUpdated"))
                sent.append(SentItem(item.seq, server_id, version, stamp))
            else:
                self._replica.record_push_error(item.seq, _error_code(reply.status, reply.outcome))
                self.result.push_errors += 1
        # One local transaction for the whole Bundle's replies (a commit costs more than the
        # work). An item the replica refuses stays pending and is sent again next sync, where
        # ifNoneExist / ifMatch make the repeat harmless.
        refused = self._replica.mark_sent_batch(sent) if sent else {}
        for seq, reason in refused.items():
            log.warning("sync: outbox item %s not marked sent: %s", seq, reason)
        self.result.pushed += len(sent) - len(refused)
        self.result.push_errors += len(refused)

    def _conflict(self, item: OutboxItem) -> None:
        current: Mapping[str, Any] | None = None
        if item.operation == "update":
            response = self._transport.get(f"{self._base}/{item.resource_type}/{item.local_id}")
            if response.status == 200:
                try:
                    current = validate_resource(self._json(response, "current version"))
                except InvalidResource:
                    current = None
        self._replica.record_conflict(item.seq, current)
        self.result.conflicts += 1


def _entry(item: OutboxItem) -> dict[str, Any]:
    body = dict(item.body)
    request: dict[str, Any]
    if item.operation == "update":
        request = {
            "method": "PUT",
            "url": f"{item.resource_type}/{item.local_id}",
            "ifMatch": f'W/"{item.base_version}"',
        }
    else:
        request = {"method": "POST", "url": item.resource_type}
        if_none_exist = item.extra.get(EXTRA_IF_NONE_EXIST)
        if isinstance(if_none_exist, str):
            request["ifNoneExist"] = if_none_exist
    entry: dict[str, Any] = {"resource": body, "request": request}
    full_url = item.extra.get(EXTRA_FULL_URL)
    if isinstance(full_url, str):
        entry["fullUrl"] = full_url
    return entry


def _outcome_of(response: Response) -> Any:
    """A refusal's body (an OperationOutcome), or None when it is not readable JSON."""
    try:
        return loads_bounded(response.body)
    except BoundedJsonError:
        return None


def _error_code(status: int, outcome: Any) -> str:
    """``http_<status>`` plus the server's stable reason code when it gives one."""
    reason = refusal_code(outcome)
    return f"http_{status}:{reason}" if reason else f"http_{status}"


def _gone(status: int, item: OutboxItem) -> bool:
    """An update of a resource the server deleted (410) or no longer shows this device (404):
    a conflict for the clinician, not a push error retried forever."""
    return item.operation == "update" and status in (404, 410)


def _first_piece(items: Sequence[OutboxItem], limit: int) -> list[OutboxItem]:
    """The first Bundle of at most ``limit`` entries: whole groups while they fit, else the
    first ``limit`` entries of a group larger than the limit (order kept)."""
    piece: list[OutboxItem] = []
    for group in _groups(items):
        if len(piece) + len(group) <= limit:
            piece += group
        elif piece:
            break
        else:
            return group[:limit]
    return piece


def _groups(items: Sequence[OutboxItem]) -> list[list[OutboxItem]]:
    """Split into consultation groups (items sharing ``extra['group']``), order kept."""
    groups: dict[str, list[OutboxItem]] = {}
    for item in items:
        key = str(item.extra.get(EXTRA_GROUP) or f"seq-{item.seq}")
        groups.setdefault(key, []).append(item)
    return list(groups.values())


def _id_from_location(location: str, resource_type: str) -> str:
    parts = location.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    raise SyncError("bad_response", "the gateway's location header is malformed")


def _reply_meta(resource: Any) -> Mapping[str, Any]:
    """``meta`` of the resource a transaction reply carries (a server without ETags or
    versioned locations, e.g. Medplum, says the new version there); {} when none."""
    meta = resource.get("meta") if isinstance(resource, dict) else None
    return meta if isinstance(meta, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _version_from_location(location: str) -> str | None:
    _, sep, version = location.partition("/_history/")
    return version.strip("/") or None if sep else None
