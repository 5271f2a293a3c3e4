"""The sync engine: push the outbox, then pull every resource type's changes (DESIGN.md §Sync).

The protocol decides; the transport moves bytes (CONVENTIONS.md §3). The engine talks to the
local store only through ``sync.device.replica.Replica`` and never imports the client.

Guarantees:
- Push before pull, so a clinician's notes go up before anything comes down.
- Exactly-once creates: every create carries its client identifier as ``ifNoneExist``; a push
  whose reply was lost is simply sent again and the server answers with the existing resource
  (CR-2). Updates carry ``ifMatch``; a 412 becomes a conflict record holding both versions.
- One bad item never blocks the others: a transaction refused as a whole is split into its
  consultation groups, each sent alone; a refused group is recorded as a push error (visible,
  retried next sync) and the rest goes on.
- Pull is history-based per resource type with paging; every page is validated, then applied
  with its cursor in ONE replica transaction (``apply_page``), so a sync killed at any instant
  resumes from the last committed page without loss or duplicates (CR-1).
- The cursor after the last page is the server's ``x-resume`` link (a server change sequence,
  which never skips a change committed out of order). A server without it is resumed with
  ``_since`` = the newest ``lastUpdated`` seen minus ``SINCE_OVERLAP`` (overlap, then dedupe by
  version in the replica); see docs/sync.md.
- Every inbound resource is validated (``sync.protocol.fhir.validate``) before it reaches the
  replica;
  a bad one is quarantined with its reason and the rest of the page goes on (NW-3). That
  includes a resource nested deeper than ``MAX_DEPTH``: a page may be ``MAX_PAGE_DEPTH`` deep,
  and only a page past that (or otherwise not bounded JSON) is refused as a whole.
- Pages are read one ahead: a worker downloads page N+1 while page N is applied; only the
  caller's thread parses, validates and calls the replica.
- Progress (phase, items, bytes) is reported through a callback; cancellation is checked
  between pages and batches (never in the middle of a replica transaction).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from sync.device.replica import (
    EXTRA_FULL_URL,
    EXTRA_GROUP,
    EXTRA_IF_NONE_EXIST,
    Deletion,
    OutboxItem,
    Page,
    Quarantined,
    Replica,
    ReplicaError,
    SentItem,
)
from sync.device.transport import Response, Transport, TransportError
from sync.protocol.fhir.bounded_json import (
    MAX_DEPTH,
    MAX_PAGE_DEPTH,
    BoundedJsonError,
    json_depth,
    loads_bounded,
    loads_bounded_with_depth,
)
from sync.protocol.fhir.bundle import (
    bundle_entries,
    next_link,
    parse_history_entry,
    parse_response_entry,
    transaction,
)
from sync.protocol.fhir.validate import InvalidResource, parse_instant, validate_resource

log = logging.getLogger(__name__)

PAGE_SIZE = 500  # resources per history page: ~1-2 MiB of JSON, one replica transaction
PUSH_BATCH = 50  # outbox items per transaction Bundle
SINCE_OVERLAP = dt.timedelta(minutes=5)  # re-read window for servers without a change sequence
RESUME_RELATION = "x-resume"
# Answers meaning "this server has no type-level _history" (not found, bad request, not
# allowed, not implemented): the engine then falls back to a _lastUpdated search.
NO_HISTORY_STATUSES = frozenset({400, 404, 405, 501})
MAX_PAGES_PER_STREAM = 100_000  # 50M resources at 500 a page: a loop guard, not a real limit
# Failures after which nothing else can work in this sync: the connection itself is refused
# or gone, or the device has just been wiped.
FATAL_REASONS = frozenset(
    {"pin_mismatch", "tls", "connection", "timeout", "config", "wiped", "vault_locked"}
)
FHIR_JSON = "application/fhir+json"
ENTRY_RESOURCE_LEVELS = 3  # Bundle {} > entry [] > entry {} > the resource


class SyncError(Exception):
    """A sync that could not complete; ``reason`` is stable, ``message`` is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class Cancelled(SyncError):
    def __init__(self) -> None:
        super().__init__("cancelled", "The sync was cancelled; what was received is kept.")


@dataclass(frozen=True)
class Progress:
    phase: str  # "push" | "pull" | "control" | "done"
    detail: str  # e.g. the resource type being pulled
    items: int
    bytes: int


@dataclass
class SyncResult:
    pulled: int = 0
    deleted: int = 0
    pushed: int = 0
    conflicts: int = 0
    push_errors: int = 0
    quarantined: int = 0
    skipped_older: int = 0
    requests: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    duration_s: float = 0.0
    # Every stream was pulled to its end through _history, so every deletion and transfer was
    # seen: the device holds the server's current caseload (the search fallback cannot say so).
    caseload_confirmed: bool = False
    error: str | None = None  # the first failure's reason (None: everything succeeded)
    failed_phases: dict[str, str] = field(default_factory=dict)
    control: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


ControlStep = Callable[[Transport, SyncResult], None]


class SyncEngine:
    """One whole sync over one transport connection."""

    def __init__(
        self,
        transport: Transport,
        replica: Replica,
        *,
        resource_types: Sequence[str],
        page_size: int = PAGE_SIZE,
        push_batch: int = PUSH_BATCH,
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
        control_before: Sequence[tuple[str, ControlStep]] = (),
        control_after: Sequence[tuple[str, ControlStep]] = (),
    ) -> None:
        self._transport = transport
        self._replica = replica
        self._types = tuple(resource_types)
        self._page_size = page_size
        self._push_batch = push_batch
        self._progress = progress or (lambda _: None)
        self._cancel = cancel or threading.Event()
        self._before = tuple(control_before)
        self._after = tuple(control_after)
        self.result = SyncResult()

    # -- running -------------------------------------------------------------------------------

    def run(self) -> SyncResult:
        """Control steps before (time, audit, commands), push, pull, control steps after
        (policy, audit). Never raises for sync failures: see ``result.error``.

        Each phase runs on its own: a failing push, pull or policy step is recorded and the
        others still run, so a remote wipe or lock can never be starved by a broken page or a
        poison note. Only a connection-level failure (pin, TLS, network) or a wipe ends the
        whole sync early; cancellation ends it between phases and pages.
        """
        started = time.monotonic()
        phases: list[tuple[str, Callable[[], None]]] = [
            (name, self._control_phase(name, step)) for name, step in self._before
        ]
        phases += [("push", self.push), ("pull", self.pull)]
        phases += [(name, self._control_phase(name, step)) for name, step in self._after]
        try:
            for name, phase in phases:
                self._check_cancel()
                try:
                    phase()
                except (SyncError, TransportError, ReplicaError) as error:
                    reason = error.reason
                    if isinstance(error, Cancelled):
                        raise
                    self.result.failed_phases[name] = reason
                    self.result.error = self.result.error or reason
                    log.warning("sync phase %s failed: %s", name, reason)
                    if reason in FATAL_REASONS:
                        break
        except Cancelled as cancelled:
            self.result.error = cancelled.reason
        finally:
            counters = self._transport.counters
            self.result.requests = counters.requests
            self.result.bytes_received = counters.bytes_received
            self.result.bytes_sent = counters.bytes_sent
            self.result.duration_s = time.monotonic() - started
            self._report("done", "", self.result.pulled + self.result.pushed)
        return self.result

    def _control_phase(self, name: str, step: ControlStep) -> Callable[[], None]:
        def run_step() -> None:
            self._report("control", name, 0)
            step(self._transport, self.result)

        return run_step

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    def _report(self, phase: str, detail: str, items: int) -> None:
        self._progress(Progress(phase, detail, items, self._transport.counters.bytes_received))

    def _json(self, response: Response, what: str) -> Any:
        try:
            return loads_bounded(response.body)
        except BoundedJsonError as error:
            raise SyncError("bad_response", f"the gateway's {what} is not acceptable") from error

    # -- push ----------------------------------------------------------------------------------

    def push(self) -> None:
        """Send the outbox in transaction Bundles until it is empty (or only errors remain)."""
        attempted: set[int] = set()
        while True:
            self._check_cancel()
            items = [
                i for i in self._replica.list_outbox(self._push_batch) if i.seq not in attempted
            ]
            if not items:
                return
            attempted.update(i.seq for i in items)
            self._push_items(items)
            self._report("push", "", self.result.pushed)

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
        for item in items:
            self._replica.record_push_error(item.seq, f"http_{response.status}")
            self.result.push_errors += 1

    def _post_transaction(self, items: Sequence[OutboxItem]) -> Response:
        bundle = transaction([_entry(item) for item in items])
        # Idempotent by construction: creates carry ifNoneExist, updates carry ifMatch.
        return self._transport.request(
            "POST",
            "fhir",
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
                version = reply.version_id or _version_from_location(reply.location) or "1"
                sent.append(SentItem(item.seq, server_id, version))
            else:
                self._replica.record_push_error(item.seq, f"http_{reply.status}")
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
            response = self._transport.get(f"fhir/{item.resource_type}/{item.local_id}")
            if response.status == 200:
                try:
                    current = validate_resource(self._json(response, "current version"))
                except InvalidResource:
                    current = None
        self._replica.record_conflict(item.seq, current)
        self.result.conflicts += 1

    # -- pull ----------------------------------------------------------------------------------

    def pull(self) -> None:
        histories = [self._pull_type(resource_type) for resource_type in self._types]
        self.result.caseload_confirmed = all(histories)

    def _pull_type(self, resource_type: str) -> bool:
        """Pull one stream, reading one page ahead: while the replica applies page N on this
        thread, a worker downloads page N+1, so the network and the server's work overlap the
        local writes. The worker only moves bytes (it waits on the socket, holding the GIL
        briefly): parsing and validating stay on this thread, because a busy second Python
        thread makes SQLite's per-row GIL hand-back crawl. The worker touches only the
        transport, which this thread leaves alone until the worker is done; the replica is
        only ever called on the caller's thread. At most two pages are held in memory."""
        stream = f"history:{resource_type}"
        url = self._replica.read_cursor(stream) or self._start_url(resource_type, history=True)
        seen = {url}
        response = self._transport.get(url, headers={"Accept": FHIR_JSON})
        if (
            response.status in NO_HISTORY_STATUSES
            and _is_history(url)
            and not self._replica.read_cursor(stream)
        ):
            # A server without type-level _history: fall back to a _lastUpdated search
            # (new and changed resources only; deletions are not seen: docs/sync.md).
            url = self._start_url(resource_type, history=False)
            seen.add(url)
            response = self._transport.get(url, headers={"Accept": FHIR_JSON})
        fetched = self._parsed(response, url, resource_type)
        history = fetched.history  # True: deletions and transfers are seen on this stream
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatehouse-pull") as worker:
            for _ in range(MAX_PAGES_PER_STREAM):
                following = _origin_free(fetched.following) if fetched.following else None
                upcoming: Future[Response] | None = None
                if following is not None and following not in seen and not self._cancel.is_set():
                    seen.add(following)
                    upcoming = worker.submit(self._download, following)
                try:
                    stats = self._replica.apply_page(self._page(stream, resource_type, fetched))
                except BaseException:
                    if upcoming is not None:
                        upcoming.cancel()  # or, if already running, waited for on exit
                    raise
                self.result.pulled += stats.applied
                self.result.deleted += stats.deleted
                self.result.quarantined += stats.quarantined
                self.result.skipped_older += stats.skipped_older
                self._report("pull", resource_type, self.result.pulled)
                if following is None:
                    return history
                self._check_cancel()
                if upcoming is None:
                    raise SyncError("bad_link", f"the gateway's {resource_type} pages loop")
                fetched = self._parsed(upcoming.result(), following, resource_type)
        raise SyncError("bad_link", f"too many {resource_type} pages in one sync")

    def _download(self, url: str) -> Response:
        """GET one page (runs on the read-ahead worker: the transport only)."""
        return self._transport.get(url, headers={"Accept": FHIR_JSON})

    def _parsed(self, response: Response, url: str, resource_type: str) -> _Fetched:
        """A page answer validated entry by entry, its links checked (no replica needed)."""
        if response.status != 200:
            raise SyncError("pull_refused", f"the gateway refused the {resource_type} changes")
        try:
            bundle, depth = loads_bounded_with_depth(response.body, max_depth=MAX_PAGE_DEPTH)
        except BoundedJsonError as error:
            raise SyncError(
                "bad_response", f"the gateway's {resource_type} page is not acceptable"
            ) from error
        # Bundle > entry[] > {} > resource: only past this can a resource be too deep.
        may_be_too_deep = depth > ENTRY_RESOURCE_LEVELS + MAX_DEPTH
        history = _is_history(url)
        try:
            entries = bundle_entries(bundle, "history" if history else "searchset")
            following = next_link(bundle)
        except InvalidResource as error:
            raise SyncError("bad_response", "a page of changes is malformed") from error
        fetched = _Fetched(history, following, _link(bundle, RESUME_RELATION))
        for index, entry in enumerate(entries):
            try:
                item = parse_history_entry(entry, index)
                if item.resource_type != resource_type:
                    raise InvalidResource("wrong_type", f"Bundle.entry[{index}]")
                if item.deleted:
                    fetched.deletions.append(
                        Deletion(item.resource_type, item.resource_id, item.version_id)
                    )
                    continue
                if may_be_too_deep and json_depth(item.resource) > MAX_DEPTH:
                    raise InvalidResource("too_deep", f"Bundle.entry[{index}].resource")
                resource = validate_resource(item.resource)
            except InvalidResource as error:
                fetched.quarantined.append(_quarantine(entry, error))
                continue
            fetched.resources.append(resource)
        for link in (fetched.following, fetched.resume):  # checked BEFORE any cursor is stored
            if link is not None:
                try:
                    self._transport.url(link)
                except TransportError as error:
                    raise SyncError("bad_link", "a page link points outside the gateway") from error
        return fetched

    def _start_url(
        self, resource_type: str, *, history: bool, since: dt.datetime | None = None
    ) -> str:
        if history:
            query: dict[str, str | int] = {"_count": self._page_size}
            if since is not None:
                query["_since"] = since.isoformat()
            return f"fhir/{resource_type}/_history?" + urlencode(query)
        query = {"_sort": "_lastUpdated", "_count": self._page_size}
        if since is not None:
            query["_lastUpdated"] = "ge" + since.isoformat()
        return f"fhir/{resource_type}?" + urlencode(query)

    def _page(self, stream: str, resource_type: str, fetched: _Fetched) -> Page:
        """The page to apply, with the cursor to store alongside it (caller's thread)."""
        if fetched.following:
            cursor = _origin_free(fetched.following)
        elif fetched.resume:
            cursor = _origin_free(fetched.resume)
        elif (newest := _newest(fetched.resources)) is not None:
            # No change sequence: resume from the newest lastUpdated seen minus an overlap;
            # re-read resources are deduplicated by version in the replica.
            cursor = self._start_url(
                resource_type, history=fetched.history, since=newest - SINCE_OVERLAP
            )
        else:
            cursor = self._replica.read_cursor(stream) or self._start_url(
                resource_type, history=fetched.history
            )
        return Page(stream, fetched.resources, fetched.deletions, fetched.quarantined, cursor)


@dataclass
class _Fetched:
    """One page as received: valid resources, deletions, quarantined entries and its links."""

    history: bool
    following: str | None
    resume: str | None
    resources: list[Mapping[str, Any]] = field(default_factory=list)
    deletions: list[Deletion] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)


def _origin_free(url: str) -> str:
    """A link as stored in a cursor: path and query only, never the host, so a gateway that
    moves (a new URL in a new policy) does not strand every stored cursor."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _is_history(url: str) -> bool:
    return "/_history" in url.split("?", 1)[0]


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


def _version_from_location(location: str) -> str | None:
    _, sep, version = location.partition("/_history/")
    return version.strip("/") or None if sep else None


def _link(bundle: Any, relation: str) -> str | None:
    links = bundle.get("link") if isinstance(bundle, dict) else None
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == relation:
            url = link.get("url")
            if isinstance(url, str):
                return url
    return None


def _newest(resources: Sequence[Mapping[str, Any]]) -> dt.datetime | None:
    """The newest ``meta.lastUpdated`` of a page (only needed where no link gives a cursor)."""
    stamps = [stamp for r in resources if (stamp := _last_updated(r)) is not None]
    return max(stamps, default=None)


def _last_updated(resource: Mapping[str, Any]) -> dt.datetime | None:
    meta = resource.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("lastUpdated"), str):
        try:
            return parse_instant(meta["lastUpdated"])
        except ValueError:
            return None
    return None


def _quarantine(entry: Any, error: InvalidResource) -> Quarantined:
    resource = entry.get("resource") if isinstance(entry, dict) else None
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    ident = resource.get("id") if isinstance(resource, dict) else None
    try:
        raw = orjson.dumps(entry)
    except TypeError:
        raw = b""
    return Quarantined(
        kind if isinstance(kind, str) else None,
        ident if isinstance(ident, str) else None,
        error.reason,
        error.path,
        raw,
    )
