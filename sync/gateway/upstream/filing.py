"""Notes out (issue 14): the upstream outbox filed into the system of record, exactly once.

Every version a laptop wrote is in ``upstream_outbox`` (queued in the transaction that accepted
it, ``store.upstream_tables``). A filing pass takes the pending rows in commit (seq) order:

- consecutive **creates** go up together in ``transaction`` Bundles where the upstream offers
  them and conditional create for their types (each entry a conditional create, references
  between them as ``urn:uuid:``; an edit of a note created earlier in the same run is not a
  create: it ends the Bundle and goes up as a PUT once the create is filed), at most
  the advertised ``max_transaction_entries`` (else ``DEFAULT_TRANSACTION``); a transaction the
  upstream refuses (4xx) is halved until it is accepted, down to single requests, so the size
  settles at what the server takes and a refusal is always pinned to one note;
- the size settled at is **remembered** per upstream base URL in the gateway's database
  (``upstream_transaction_size``, shared by every process of a cluster) and the next pass
  starts from it, so refusals are paid once, not every pass. A pass starts from the largest
  size again (probes upward) when the remembered one is older than ``PROBE_INTERVAL`` or the
  base URL changed (``upstream set``: another key). A refusal pinned on one note that the
  upstream then refuses alone (its content, not the size) gives back the size the split
  started from: one bad note never shrinks the transactions of the others;
- a **create** (a resource the upstream has never seen) is a conditional create on our client
  identifier: ``POST [type]`` with ``If-None-Exist: identifier=<system>|<client id>`` where the
  upstream offers it, else a search on that identifier first, then ``POST`` (never re-sent by
  the connection: a lost reply leaves the row pending, and the next attempt's search finds
  the copy). A retry after a lost reply (or a kill -9 between the upstream's commit and ours)
  finds the first one: never a second copy;
- an **edit** is ``PUT [type]/[upstream id]`` with ``If-Match`` on the upstream version held
  here; a 412 whose current upstream content is ours (our own earlier PUT whose reply was
  lost) is filed, any other 412 is a **conflict**, kept with the upstream's version;
- a **delete** is ``DELETE [type]/[upstream id]`` (404/410 count as done);
- a **Patient** a device wrote is never sent (held, ``patient_not_filed``): the gateway's copy
  names the site instead of the board's Organization;
- references to other gateway resources are rewritten to their upstream ids (only clinical
  types: a site's Organization, never written by a laptop, is left as it is); a reference to
  one queued and not filed yet makes the row wait, and to one held or in conflict holds it
  too (``depends_on_held``), so one refused note never blocks the others. A reference to one
  that can never be filed holds it: deleted here (``refers_to_deleted``: e.g. upstream, by
  the import) or never queued (``refers_to_unfiled``). A waiting row blocks nothing: the
  rows after it go on (later versions of the same resource wait behind it, in order), the
  waiting rows are tried again in the same pass once something was filed (a note naming one
  later in the queue: a laptop Bundle in any order), and any still waiting at the end stay
  pending (``waiting_for_reference``, no backoff) for the next pass.

Invariants:
- The upstream id and version are recorded, and the row closed, in one store transaction
  after the upstream answered; a row is never deleted and never leaves ``pending`` except as
  ``filed``, ``held`` (the upstream refused: reason code and the upstream's own words, cut to
  200 characters, for ``upstream status``) or ``conflict``.
- A transient failure (connection, timeout, 408/429/5xx) leaves the row pending with its
  attempt count and a backoff (``BACKOFF_BASE`` doubling up to ``BACKOFF_MAX``) and ends the
  pass, so the backlog drains in order once the upstream is back.
- A failure that is the gateway's, not the note's (its credentials refused: a token refused,
  or a 401 after a fresh token; TLS; the lease lost) fails the pass with its reason and
  leaves every row pending as it was: no note is held for it.
- A row closed ``filed`` or ``held`` stamps the note for laptops in the same transaction
  (``stamps.py``: a new version tagged "Filed in the health record" or "Held at the gateway"
  with the reason code); the tags are stripped from anything sent upstream.
- Nothing is logged but codes and counts.

Over 500 lines on purpose: ``Filer``'s transactions, single requests, size learning and
outcomes share one pass's state (the rows, the size, the counters, the lease fence); split,
each piece would need all of it passed around.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from typing import Any
from urllib.parse import quote

import orjson

from sync.gateway.store.sql import SqlStore
from sync.gateway.store.upstream_tables import Filed, OutboxItem, OutboxState, TransactionSize
from sync.gateway.upstream.capabilities import UpstreamCapabilities
from sync.gateway.upstream.connection import (
    TRANSIENT_REASONS,
    TRANSIENT_STATUSES,
    Response,
    UpstreamConnection,
)
from sync.gateway.upstream.content import same_content
from sync.gateway.upstream.errors import UpstreamError, printable
from sync.gateway.upstream.references import rewrite
from sync.gateway.upstream.stamps import stamp_in_tx
from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded
from sync.protocol.fhir.filing import without_filing_tags
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM, CLINICAL_TYPES, PATIENT

FHIR_JSON = "application/fhir+json"
RETURN_ALL = "return=representation"
BATCH = 200  # rows read per pass step
DEFAULT_TRANSACTION = 50  # entries per transaction when the upstream names no limit
PROBE_INTERVAL = dt.timedelta(days=1)  # a remembered size is trusted this long, then re-probed
BACKOFF_BASE = dt.timedelta(seconds=5)
BACKOFF_MAX = dt.timedelta(hours=1)
_LOCAL_META = ("versionId", "lastUpdated")
UNAUTHORISED = "upstream_unauthorised"
# Failures of the upstream's answer to one note's request: the note is held with the reason.
# Any other ``UpstreamError`` (credentials, TLS, configuration) is the gateway's: it fails the
# pass and every note stays pending.
_ABOUT_THE_ANSWER = frozenset({"upstream_too_large"})


class _Transient(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Waiting(Exception):
    """A note refers to a gateway record queued for the upstream and not filed yet."""


class _Refused(Exception):
    def __init__(self, state: OutboxState, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.state, self.reason, self.detail = state, reason, printable(detail)


def backoff(attempts: int) -> dt.timedelta:
    delay: dt.timedelta = BACKOFF_BASE * (2 ** max(attempts - 1, 0))
    return min(delay, BACKOFF_MAX)


def _json(response: Response) -> Any:
    try:
        return loads_bounded(response.body)
    except BoundedJsonError:
        return None


def _outcome_words(response: Response) -> str:
    """The upstream's reason, from its OperationOutcome (diagnostics, text or code)."""
    document = _json(response)
    issues = document.get("issue") if isinstance(document, dict) else None
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        text = details.get("text") if isinstance(details, dict) else None
        for words in (issue.get("diagnostics"), text, issue.get("code")):
            if isinstance(words, str) and words:
                return f"HTTP {response.status}: {words}"
    return f"HTTP {response.status}"


def _check(response: Response) -> None:
    if response.status in TRANSIENT_STATUSES:
        raise _Transient(f"upstream_http_{response.status}")
    if response.status == 401:  # even with a fresh token (``connection``): the gateway's fault
        raise UpstreamError(UNAUTHORISED, _outcome_words(response))
    if response.status >= 400:
        raise _Refused("held", "upstream_refused", _outcome_words(response))


def _client_id(resource: dict[str, Any]) -> str | None:
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == CLIENT_ID_SYSTEM:
            value = ident.get("value")
            return value if isinstance(value, str) else None
    return None


def _stamp(resource: Any, response: Response | None = None) -> tuple[str, str]:
    """(upstream id, version) of an answer: its resource, else its ``Location``
    (``…/Type/id/_history/vid``) when the server sent no body."""
    if isinstance(resource, dict) and isinstance(resource.get("id"), str):
        meta = resource.get("meta")
        version = meta.get("versionId") if isinstance(meta, dict) else None
        return str(resource["id"]), str(version) if isinstance(version, str) else ""
    location = response.headers.get("location", "") if response is not None else ""
    parts = location.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        return parts[-3], parts[-1]
    raise _Refused("held", "upstream_answer_unreadable")


def _transaction_stamps(bundle: Any, expected: int) -> list[tuple[str, str]]:
    """(upstream id, version) of each entry of a transaction-response, in order."""
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if not isinstance(entries, list) or len(entries) != expected:
        raise _Refused("held", "upstream_answer_unreadable")
    stamps = []
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        answer = entry.get("response") if isinstance(entry, dict) else None
        location = answer.get("location") if isinstance(answer, dict) else None
        if isinstance(resource, dict) and isinstance(resource.get("id"), str):
            stamps.append(_stamp(resource))
            continue
        parts = location.split("/") if isinstance(location, str) else []
        if len(parts) >= 4 and parts[-2] == "_history":
            stamps.append((parts[-3], parts[-1]))
        else:
            raise _Refused("held", "upstream_answer_unreadable")
    return stamps


class Filer:
    """One filing pass over the outbox."""

    def __init__(
        self,
        connection: UpstreamConnection,
        store: SqlStore,
        capabilities: UpstreamCapabilities,
        now: dt.datetime,
    ) -> None:
        self.connection = connection
        self.store = store
        self.capabilities = capabilities
        self.now = now
        self.counts: Counter[str] = Counter()
        profile = capabilities.profile
        ceiling = (
            (profile.max_transaction_entries or DEFAULT_TRANSACTION) if profile.transaction else 1
        )
        self.base = connection.config.base
        known = store.transaction_size(self.base) if ceiling > 1 else None
        if known is not None and known.probed_at <= now < known.probed_at + PROBE_INTERVAL:
            self.size, self._probed_at = min(known.size, ceiling), known.probed_at
        else:
            self.size, self._probed_at = ceiling, now  # probe: start from the largest allowed
        self._split_from: int | None = None  # the refused size a split started from
        self._refused_alone = 0  # notes the upstream refused when sent on their own
        self._local: dict[tuple[str, str], str] = {}
        self._waiting: list[OutboxItem] = []  # rows waiting for a reference, this sweep
        self._deferred: set[tuple[str, str]] = set()  # their resources: later versions wait

    # -- the pass
    def run(self) -> dict[str, int]:
        after, going = 0, True
        while True:
            items = self.store.outbox(("pending",), BATCH, after=after)
            if not items:
                break
            going = self._rows(items)
            if not going or len(items) < BATCH:
                break
            after = items[-1].seq
        while going and self._waiting:  # tried again while the last sweep closed anything
            waiting, self._waiting, self._deferred = self._waiting, [], set()
            closed = self._closed()
            going = self._rows(waiting) and self._closed() > closed
        for item in self._waiting:  # tried again next pass, without blocking the others
            self.store.outbox_retry_later(
                item.seq, item.attempts + 1, self.now, "waiting_for_reference"
            )
            self.counts["waiting_for_reference"] += 1
        if self.counts["transactions"] or self.counts["transaction_split"]:
            self.counts["transaction_size"] = self.size
            self.store.remember_transaction_size(
                self.base, TransactionSize(self.size, self._probed_at), self.now
            )
        return dict(self.counts)

    def _closed(self) -> int:
        """Rows this pass has closed so far (filed, held, in conflict)."""
        return self.counts["filed"] + self.counts["held"] + self.counts["conflict"]

    def _rows(self, items: list[OutboxItem]) -> bool:
        """File ``items`` in order; False ends the pass."""
        i = 0
        while i < len(items):
            item = items[i]
            if (item.rtype, item.rid) in self._deferred:
                self._waiting.append(item)  # after an earlier version still waiting: in order
                i += 1
                continue
            if item.next_at > self.now:
                self.counts["waiting"] += 1
                return False
            group = self._group(items[i : i + self.size]) if self.size > 1 else []
            if len(group) > 1:
                sent = self._transaction(group)
                if sent is None:
                    return False
                if sent:
                    i += len(group)
                continue  # refused: self.size was halved, try again smaller
            refused_alone = self._refused_alone
            if not self._one(item):
                return False
            if self.size == 1 and self._split_from and self._refused_alone > refused_alone:
                # A split down to single notes ended in one the upstream refused on its own:
                # its content, not the size, was why the transactions holding it were refused.
                self.size, self._split_from = self._split_from, None
            i += 1
        return True

    # -- transactions of creates
    def _group(self, items: list[OutboxItem]) -> list[tuple[OutboxItem, str, dict[str, Any], str]]:
        """The leading creates of ``items`` that can go up in one transaction."""
        group: list[tuple[OutboxItem, str, dict[str, Any], str]] = []
        self._local = {}
        for item in items:
            if item.next_at > self.now or item.op != "put" or item.rtype == PATIENT:
                break
            if (item.rtype, item.rid) in self._local or (item.rtype, item.rid) in self._deferred:
                break  # an edit of a note created earlier in the group: a PUT once it is filed
            if not self.capabilities.profile.of(item.rtype).conditional_create:
                break  # a retried entry must find its first copy: only conditional creates
            if self._upstream_of(item.rtype, item.rid) is not None:
                break
            try:
                body = self._body(item)
            except (_Waiting, _Refused):
                break
            client_id = _client_id(body)
            if client_id is None:
                break
            body.pop("id", None)
            urn = f"urn:uuid:{uuid.uuid4()}"
            self._local[(item.rtype, item.rid)] = urn
            group.append((item, urn, body, client_id))
        self._local = {}
        return group

    def _transaction(self, group: list[tuple[OutboxItem, str, dict[str, Any], str]]) -> bool | None:
        """Send one transaction: True filed, False refused (size halved), None: stop."""
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": urn,
                    "resource": body,
                    "request": {
                        "method": "POST",
                        "url": item.rtype,
                        "ifNoneExist": f"identifier={CLIENT_ID_SYSTEM}|{client_id}",
                    },
                }
                for item, urn, body, client_id in group
            ],
        }
        first = group[0][0]
        try:
            response = self.connection.request(
                "POST",
                self.connection.config.base,
                body=orjson.dumps(bundle),
                headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "Prefer": RETURN_ALL},
                idempotent=True,  # every entry is a conditional create
            )
            _check(response)
            stamps = _transaction_stamps(_json(response), len(group))
        except (_Transient, UpstreamError) as failure:
            if isinstance(failure, UpstreamError) and failure.reason in _ABOUT_THE_ANSWER:
                return self._split(group)  # smaller transactions, smaller answers
            if isinstance(failure, UpstreamError) and failure.reason not in TRANSIENT_REASONS:
                raise
            attempts = first.attempts + 1
            self.store.outbox_retry_later(
                first.seq, attempts, self.now + backoff(attempts), failure.reason
            )
            self.counts["retry_later"] += 1
            return None
        except _Refused:
            return self._split(group)
        for (item, _, _, _), (upstream_id, version) in zip(group, stamps, strict=True):
            self._finish(item, "filed", filed=Filed(item.rtype, item.rid, upstream_id, version))
            self.counts["filed"] += 1
        self.counts["transactions"] += 1
        return True

    def _split(self, group: list[tuple[OutboxItem, str, dict[str, Any], str]]) -> bool:
        """Halve the size after ``group`` was refused (or its answer was too large): False."""
        if self._split_from is None:
            self._split_from = len(group)
        self.size = max(1, len(group) // 2)
        self.counts["transaction_split"] += 1
        return False

    def _one(self, item: OutboxItem) -> bool:
        """File one row; False ends the pass (a transient failure: try again later)."""
        try:
            filed = self._file(item)
        except _Waiting:
            self._waiting.append(item)
            self._deferred.add((item.rtype, item.rid))
            return True
        except (_Transient, UpstreamError) as failure:
            if isinstance(failure, UpstreamError) and failure.reason in _ABOUT_THE_ANSWER:
                self._close(item, "held", failure.reason, failure.detail)
                return True
            if isinstance(failure, UpstreamError) and failure.reason not in TRANSIENT_REASONS:
                raise  # the gateway's (lease, credentials, TLS): the row stays pending
            attempts = item.attempts + 1
            self.store.outbox_retry_later(
                item.seq, attempts, self.now + backoff(attempts), failure.reason
            )
            self.counts["retry_later"] += 1
            return False
        except _Refused as refused:
            self._close(item, refused.state, refused.reason, refused.detail)
            if refused.reason == "upstream_refused":
                self._refused_alone += 1
            return True
        self._finish(item, "filed", filed=filed)
        self.counts["filed"] += 1
        return True

    def _close(self, item: OutboxItem, state: OutboxState, reason: str, detail: str) -> None:
        self._finish(item, state, reason=reason, detail=detail or None)
        self.counts[state] += 1

    def _finish(
        self,
        item: OutboxItem,
        state: OutboxState,
        *,
        reason: str | None = None,
        detail: str | None = None,
        filed: Filed | None = None,
    ) -> None:
        """Close the row and stamp the note's filing state for laptops, in one transaction."""
        with self.store.write() as tx:
            self.store.outbox_done_in_tx(
                item.seq, state, self.now, reason=reason, detail=detail, filed=filed
            )
            if stamp_in_tx(self.store, tx, item, state, reason):
                self.counts["stamped"] += 1

    # -- one row
    def _upstream_of(self, rtype: str, rid: str) -> tuple[str, str] | None:
        """(upstream id, version) the gateway's resource is known as upstream, or None."""
        filed = self.store.filed(rtype, rid)
        if filed is not None:
            return filed.upstream_id, filed.upstream_version
        imported = self.store.imported_one(rtype, rid)
        if imported is not None:
            return rid, imported.upstream_version
        return None

    def _lookup(self, rtype: str, rid: str) -> str | None:
        if (rtype, rid) in self._local:
            return self._local[(rtype, rid)]  # an earlier entry of the same transaction
        if rtype == PATIENT:
            return None  # patients are imported: the same id on both sides
        if rtype not in CLINICAL_TYPES:
            return None  # e.g. the site's Organization: never written by a laptop, never filed
        filed = self.store.filed(rtype, rid)
        if filed is not None:
            return filed.upstream_id
        if self.store.imported_one(rtype, rid) is not None:
            return None  # imported: the same id on both sides
        stored = self.store.read(rtype, rid)
        if stored is None:
            return None  # not a gateway resource: left as it is
        if self.store.outbox_stuck(rtype, rid):
            raise _Refused("held", "depends_on_held", f"{rtype}/{rid}")
        if stored.deleted:
            raise _Refused("held", "refers_to_deleted", f"{rtype}/{rid}")
        if not self.store.outbox_pending(rtype, rid):
            raise _Refused("held", "refers_to_unfiled", f"{rtype}/{rid}")
        return ""  # queued: filed later in this pass or the next, then this one

    def _body(self, item: OutboxItem) -> dict[str, Any]:
        stored = self.store.vread(item.rtype, item.rid, item.version_id)
        if stored is None:
            raise _Refused("held", "version_missing")
        resource = without_filing_tags(orjson.loads(stored.body))  # the gateway's own tags
        unresolved: list[str] = []
        body: dict[str, Any] = rewrite(resource, self._lookup, unresolved)
        if unresolved:
            raise _Waiting
        meta = {k: v for k, v in (body.get("meta") or {}).items() if k not in _LOCAL_META}
        body.pop("meta", None)
        if meta:
            body["meta"] = meta
        return body

    def _file(self, item: OutboxItem) -> Filed | None:
        if item.rtype == PATIENT:
            # The gateway's copy names the site, not the board's Organization: sending it
            # would overwrite the system of record's own registration. IT files it by hand.
            raise _Refused("held", "patient_not_filed")
        known = self._upstream_of(item.rtype, item.rid)
        if item.op == "delete":
            if known is None:
                return None  # never reached the upstream: nothing to delete there
            return self._delete(item, *known)
        body = self._body(item)
        if known is None:
            return self._create(item, body)
        return self._update(item, body, *known)

    def _create(self, item: OutboxItem, body: dict[str, Any]) -> Filed:
        client_id = _client_id(body)
        if client_id is None:
            raise _Refused("held", "no_client_identifier")
        body.pop("id", None)
        condition = f"identifier={CLIENT_ID_SYSTEM}|{client_id}"
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "Prefer": RETURN_ALL}
        if self.capabilities.profile.of(item.rtype).conditional_create:
            headers["If-None-Exist"] = condition
        else:
            found = self._search_identifier(item.rtype, client_id)
            if found is not None:
                return Filed(item.rtype, item.rid, *_stamp(found))
        # Re-sent by the connection after a lost reply only when conditional: a plain POST the
        # upstream may have taken is tried again later (backoff), by a search first.
        response = self.connection.request(
            "POST",
            quote(item.rtype),
            body=orjson.dumps(body),
            headers=headers,
            idempotent="If-None-Exist" in headers,
        )
        _check(response)
        return Filed(item.rtype, item.rid, *_stamp(_json(response), response))

    def _search_identifier(self, rtype: str, client_id: str) -> dict[str, Any] | None:
        response = self.connection.get(
            f"{quote(rtype)}?identifier={quote(CLIENT_ID_SYSTEM + '|' + client_id, safe='')}",
            headers={"Accept": FHIR_JSON},
        )
        _check(response)
        bundle = _json(response)
        entries = bundle.get("entry") if isinstance(bundle, dict) else None
        found = [e["resource"] for e in entries or [] if isinstance(e, dict) and "resource" in e]
        if len(found) > 1:
            raise _Refused("held", "upstream_duplicates")
        return found[0] if found else None

    def _update(
        self, item: OutboxItem, body: dict[str, Any], upstream_id: str, version: str
    ) -> Filed:
        if not self.capabilities.profile.of(item.rtype).versioned_update:
            raise _Refused("held", "if_match_not_offered")
        body["id"] = upstream_id
        response = self.connection.request(
            "PUT",
            f"{quote(item.rtype)}/{quote(upstream_id)}",
            body=orjson.dumps(body),
            headers={
                "Content-Type": FHIR_JSON,
                "Accept": FHIR_JSON,
                "Prefer": RETURN_ALL,
                "If-Match": f'W/"{version}"',
            },
        )
        if response.status == 412:
            return self._after_412(item, body, upstream_id)
        _check(response)
        return Filed(item.rtype, item.rid, *_stamp(_json(response), response))

    def _after_412(self, item: OutboxItem, body: dict[str, Any], upstream_id: str) -> Filed:
        response = self.connection.get(
            f"{quote(item.rtype)}/{quote(upstream_id)}", headers={"Accept": FHIR_JSON}
        )
        _check(response)
        current = _json(response)
        if isinstance(current, dict) and same_content(current, body):
            return Filed(item.rtype, item.rid, *_stamp(current))  # our own edit, reply lost
        _, version = _stamp(current)
        raise _Refused("conflict", "upstream_conflict", f"upstream version {version}")

    def _delete(self, item: OutboxItem, upstream_id: str, version: str) -> Filed:
        headers = {"Accept": FHIR_JSON}
        if self.capabilities.profile.of(item.rtype).versioned_update and version:
            headers["If-Match"] = f'W/"{version}"'
        response = self.connection.request(
            "DELETE", f"{quote(item.rtype)}/{quote(upstream_id)}", headers=headers
        )
        if response.status not in (404, 410):
            if response.status == 412:
                raise _Refused("conflict", "upstream_conflict", "changed upstream")
            _check(response)
        return Filed(item.rtype, item.rid, upstream_id, version)


def file_outbox(
    connection: UpstreamConnection,
    store: SqlStore,
    capabilities: UpstreamCapabilities,
    *,
    now: dt.datetime,
) -> dict[str, int]:
    """One filing pass; returns its counts (``filed``, ``held``, ``conflict``, …)."""
    return Filer(connection, store, capabilities, now).run()
