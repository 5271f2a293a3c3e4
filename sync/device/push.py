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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from sync.device.outcome import FHIR_JSON, SyncError, SyncResult, raise_if_cancelled
from sync.device.replica import (
    EXTRA_FULL_URL,
    EXTRA_GROUP,
    EXTRA_IF_NONE_EXIST,
    OutboxItem,
    Replica,
    SentItem,
)
from sync.device.transport import Response, Transport
from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded
from sync.protocol.fhir.bundle import (
    bundle_entries,
    parse_response_entry,
    refusal_code,
    transaction,
)
from sync.protocol.fhir.validate import InvalidResource, validate_resource

log = logging.getLogger(__name__)

PUSH_BATCH = 50  # outbox items per transaction Bundle
# A whole consultation refused with one of these is split, not given up on: servers refuse
# transactions past their size or isolation limits with 400, 413 or 422.
SPLIT_STATUSES = frozenset({400, 413, 422})
SPLIT_REREAD_LIMIT = 10_000  # outbox items read back to find a split group's second half


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
    ) -> None:
        self._transport = transport
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
        response = self._post_transaction(items)
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
        """Send one refused group as two ordered halves (module docstring)."""
        half = len(items) // 2
        first, rest = items[:half], {item.seq for item in items[half:]}
        self._push_items(first)
        # Read the rest back: mark_sent rewrote its references to the first half's server ids.
        pending = self._replica.list_outbox(SPLIT_REREAD_LIMIT)
        later = [item for item in pending if item.seq in rest]
        if later:
            self._push_items(later)

    def _post_transaction(self, items: Sequence[OutboxItem]) -> Response:
        bundle = transaction([_entry(item) for item in items])
        # Idempotent by construction: creates carry ifNoneExist, updates carry ifMatch.
        return self._transport.request(
            "POST",
            self._base,
            body=orjson.dumps(bundle),
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
            idempotent=True,
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
