"""The auditor's online queries against the gateway (docs/control-plane.md §Auditor queries).

Guarantees:
- Only ``/audit`` is asked, only through a ``sync.device.transport.Transport`` (pinned mutual TLS),
  always with the caller's bearer token; the token is never logged.
- Every answer is parsed with ``sync.protocol.fhir.bounded_json`` and validated strictly before use:
  a searchset Bundle whose entries are AuditEvents, each of which must be exactly the event
  the chained entry it carries maps to (``sync.protocol.audit.audit_event.to_audit_event``): a
  server cannot
  slip extra fields (clinical content, rich text) into what an auditor sees. Chain status
  rows and notes-not-filed rows have exactly the documented fields and types.
- Paging follows ``next`` links (same origin only, the transport refuses others) up to
  ``MAX_RESULTS`` events; past that the result says it was cut (``truncated``).
- "Out of hours" is judged on the device (the gateway has no such parameter) with the same
  rule as ``gatehouse-gateway audit report``: before 08:00 or from 18:00 UK local time, or at
  a weekend.
- Every failure is one ``AuditClientError`` with a stable ``reason``: the gateway's own
  refusal code (``role_forbidden``, ``bearer_invalid``, ``unknown_search_parameter`` …),
  ``http_<status>``, ``bad_answer``, ``too_many_results`` or ``bad_query``. Transport failures
  stay ``TransportError`` (the UI explains those already).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from sync.device.errors import DeviceError
from sync.device.transport import Transport
from sync.protocol.audit.audit_event import CHAIN_EXTENSION, to_audit_event
from sync.protocol.audit.entry import AuditEntry, AuditFormatError, entry_from_canonical
from sync.protocol.audit.report import out_of_hours
from sync.protocol.fhir.bounded_json import MAX_CONTROL_BYTES, BoundedJsonError, loads_bounded

log = logging.getLogger(__name__)

SEARCH_PATH = "audit/AuditEvent"
CHAINS_PATH = "audit/chains"
NOT_FILED_PATH = "audit/notes-not-filed"
PAGE_SIZE = 500  # the gateway allows 1..1000 per page
MAX_RESULTS = 5_000  # what one screen can show usefully; more means: narrow the filters
# Pages per search: 10 suffice for MAX_RESULTS at PAGE_SIZE; more are needed only when most
# rows are filtered out on the device (out of hours). Also stops a server paging forever.
MAX_PAGES = 200
MAX_PAGE_BYTES = 16 * 1024 * 1024  # 1,000 AuditEvents of about 2-4 KiB each, with room
MAX_CSV_BYTES = 16 * 1024 * 1024
MAX_CHAINS = 10_000
MAX_NOT_FILED = 1_000  # the gateway lists at most this many, oldest first
_NOT_FILED_KEYS = frozenset({"type", "id", "version", "state", "reason", "since", "patient_id"})
MAX_FIELD_CHARS = 256  # the gateway refuses longer search values too
_CHAIN_KEYS = frozenset(
    {"device_id", "last_seq", "head_hash", "last_receipt_at", "alerts", "latest_alert"}
)
_ALERT_KEYS = frozenset({"raised_at", "first_bad_seq", "reason"})


class AuditClientError(DeviceError):
    """An online audit query failed; ``reason`` is stable, ``message`` is for people."""


@dataclasses.dataclass(frozen=True)
class AuditQuery:
    """Filters of an online audit search (None/False = any). Dates are inclusive UTC days."""

    patient_id: str | None = None
    user_id: str | None = None
    device_id: str | None = None
    since: dt.date | None = None
    until: dt.date | None = None
    break_glass: bool = False
    out_of_hours: bool = False
    action: str | None = None  # a Gatehouse action code, e.g. record_view

    def params(self) -> list[tuple[str, str]]:
        """The gateway's FHIR search parameters (out of hours is filtered on the device)."""
        out: list[tuple[str, str]] = []
        for key, value in (
            ("patient", self.patient_id),
            ("agent", self.user_id),
            ("source", self.device_id),
            ("subtype", self.action),
        ):
            if value is not None:
                if not value.strip() or len(value) > MAX_FIELD_CHARS or not value.isprintable():
                    raise AuditClientError("bad_query", "A filter value is empty or too long.")
                out.append((key, value.strip()))
        if self.since is not None:
            out.append(("date", f"ge{self.since.isoformat()}"))
        if self.until is not None:
            out.append(("date", f"le{self.until.isoformat()}"))
        if self.since and self.until and self.since > self.until:
            raise AuditClientError("bad_query", "The date range ends before it starts.")
        if self.break_glass:
            out.append(("purpose", "BTG"))
        return out

    def describe(self) -> dict[str, Any]:
        """The filters for the local audit entry's ``detail`` (identifiers only, no clinical
        content): short strings, ``yes`` for a flag; ``bad_query`` if a value is not valid."""
        self.params()
        out: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if value is True:
                out[key] = "yes"
            elif isinstance(value, dt.date):
                out[key] = value.isoformat()
            elif isinstance(value, str):
                out[key] = value.strip()
        return out


@dataclasses.dataclass(frozen=True)
class SearchResult:
    events: list[dict[str, Any]]  # validated AuditEvents, gateway order (time, device, seq)
    entries: list[AuditEntry]  # the chained entries they carry, same order
    truncated: bool  # more matched than MAX_RESULTS


def _headers(token: str, accept: str) -> dict[str, str]:
    if not token or len(token) > 128 or any(c.isspace() for c in token):
        raise AuditClientError("bearer_invalid", "The gateway sign-in is not valid.")
    return {"Authorization": f"Bearer {token}", "Accept": accept}


def _refusal(status: int, body: bytes) -> AuditClientError:
    reason = f"http_{status}"
    try:
        data = loads_bounded(body, max_bytes=MAX_CONTROL_BYTES, max_depth=4)
    except BoundedJsonError:
        data = None
    if isinstance(data, dict):
        code = data.get("error")
        if isinstance(code, str) and code.isascii() and code.replace("_", "").isalnum():
            reason = code[:64]
    return AuditClientError(reason, f"The gateway refused the audit query ({reason}).")


def _get_json(transport: Transport, url: str, token: str, max_depth: int) -> Any:
    response = transport.get(url, headers=_headers(token, "application/fhir+json"))
    if response.status != 200:
        raise _refusal(response.status, response.body)
    try:
        return loads_bounded(response.body, max_bytes=MAX_PAGE_BYTES, max_depth=max_depth)
    except BoundedJsonError as error:
        raise AuditClientError("bad_answer", "The gateway's audit answer is not valid.") from error


def _bad(what: str) -> AuditClientError:
    return AuditClientError("bad_answer", f"The gateway's audit answer is not valid ({what}).")


def audit_event_entry(event: object) -> AuditEntry:
    """The chained entry an AuditEvent carries, if the event is exactly its mapping."""
    if not isinstance(event, dict) or event.get("resourceType") != "AuditEvent":
        raise _bad("not an AuditEvent")
    extensions = event.get("extension")
    if not isinstance(extensions, list) or len(extensions) != 1:
        raise _bad("no audit-chain extension")
    chain = extensions[0]
    if not isinstance(chain, dict) or chain.get("url") != CHAIN_EXTENSION:
        raise _bad("no audit-chain extension")
    parts = chain.get("extension")
    values: dict[str, object] = {}
    for part in parts if isinstance(parts, list) else []:
        if isinstance(part, dict) and isinstance(part.get("url"), str):
            values[part["url"]] = part.get("valueString")
    canonical, mac = values.get("canonical"), values.get("mac")
    if not isinstance(canonical, str) or not isinstance(mac, str):
        raise _bad("damaged audit-chain extension")
    try:
        entry = entry_from_canonical(canonical, mac)
    except AuditFormatError:
        raise _bad("damaged chained entry") from None
    if to_audit_event(entry) != event:
        raise _bad("an AuditEvent does not match the entry it carries")
    return entry


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link", [])
    if not isinstance(links, list):
        raise _bad("Bundle.link")
    for link in links:
        if not isinstance(link, dict):
            raise _bad("Bundle.link")
        if link.get("relation") == "next":
            url = link.get("url")
            if not isinstance(url, str):
                raise _bad("Bundle.link")
            return url
    return None


def search_audit(transport: Transport, token: str, query: AuditQuery) -> SearchResult:
    """Every AuditEvent of the user's site that matches ``query`` (up to ``MAX_RESULTS``)."""
    url: str | None = f"{SEARCH_PATH}?{urlencode([*query.params(), ('_count', str(PAGE_SIZE))])}"
    events: list[dict[str, Any]] = []
    entries: list[AuditEntry] = []
    pages = 0
    truncated = False
    while url is not None:
        if pages >= MAX_PAGES:
            truncated = True
            break
        pages += 1
        bundle = _get_json(transport, url, token, max_depth=16)
        if (
            not isinstance(bundle, dict)
            or bundle.get("resourceType") != "Bundle"
            or bundle.get("type") != "searchset"
            or not isinstance(bundle.get("entry", []), list)
        ):
            raise _bad("not a searchset Bundle")
        for item in bundle.get("entry", []):
            if not isinstance(item, dict) or not isinstance(item.get("resource"), dict):
                raise _bad("a Bundle entry")
            event = item["resource"]
            entry = audit_event_entry(event)
            if query.out_of_hours and not out_of_hours(dt.datetime.fromisoformat(entry.ts)):
                continue
            if len(events) >= MAX_RESULTS:
                truncated = True
                break
            events.append(event)
            entries.append(entry)
        url = None if truncated else _next_link(bundle)
    log.info("online audit search: %d events in %d pages", len(events), pages)
    return SearchResult(events, entries, truncated)


def download_csv(transport: Transport, token: str, query: AuditQuery) -> bytes:
    """The gateway's own CSV (``_format=csv``) of the first 1,000 matches (one page).

    Out of hours cannot be asked of the gateway: such a query is refused (``bad_query``);
    export the events from ``search_audit`` instead.
    """
    if query.out_of_hours:
        raise AuditClientError("bad_query", "The gateway cannot filter out-of-hours entries.")
    params = [*query.params(), ("_count", "1000"), ("_format", "csv")]
    response = transport.get(f"{SEARCH_PATH}?{urlencode(params)}", headers=_headers(token, "*/*"))
    if response.status != 200:
        raise _refusal(response.status, response.body)
    if len(response.body) > MAX_CSV_BYTES:
        raise AuditClientError("too_many_results", "The gateway's CSV is too large.")
    if not response.headers.get("content-type", "").startswith("text/csv"):
        raise _bad("not CSV")
    try:
        response.body.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("not UTF-8") from None
    return response.body


def _optional_text(value: object) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= MAX_FIELD_CHARS)


def _count(value: object) -> bool:
    return type(value) is int and value >= 0


def chain_status(transport: Transport, token: str) -> list[dict[str, Any]]:
    """The audit-chain status of every device of the user's site, strictly validated."""
    return parse_chains(_get_json(transport, CHAINS_PATH, token, max_depth=4))


def parse_chains(data: object) -> list[dict[str, Any]]:
    """The rows of a ``/audit/chains`` answer, or ``AuditClientError`` (``bad_answer``)."""
    if (
        not isinstance(data, dict)
        or set(data) != {"chains"}
        or not isinstance(data["chains"], list)
    ):
        raise _bad("chain status")
    rows = data["chains"]
    if len(rows) > MAX_CHAINS:
        raise _bad("too many chains")
    for row in rows:
        if not isinstance(row, dict) or set(row) != _CHAIN_KEYS:
            raise _bad("a chain status row")
        alert = row["latest_alert"]
        ok = (
            isinstance(row["device_id"], str)
            and 0 < len(row["device_id"]) <= MAX_FIELD_CHARS
            and _count(row["last_seq"])
            and _optional_text(row["head_hash"])
            and _optional_text(row["last_receipt_at"])
            and _count(row["alerts"])
            and (
                alert is None
                or (
                    isinstance(alert, dict)
                    and set(alert) == _ALERT_KEYS
                    and _optional_text(alert["raised_at"])
                    and (alert["first_bad_seq"] is None or _count(alert["first_bad_seq"]))
                    and _optional_text(alert["reason"])
                )
            )
        )
        if not ok:
            raise _bad("a chain status row")
    return rows


def notes_not_filed(transport: Transport, token: str) -> list[dict[str, Any]]:
    """The site's notes the gateway holds back from the health record (held, conflict),
    strictly validated: ids, codes and times, never record content."""
    return parse_not_filed(_get_json(transport, NOT_FILED_PATH, token, max_depth=4))


def parse_not_filed(data: object) -> list[dict[str, Any]]:
    """The rows of a ``/audit/notes-not-filed`` answer, or ``AuditClientError``."""
    if not isinstance(data, dict) or set(data) != {"notes"} or not isinstance(data["notes"], list):
        raise _bad("notes not filed")
    rows = data["notes"]
    if len(rows) > MAX_NOT_FILED:
        raise _bad("too many notes not filed")
    for row in rows:
        ok = (
            isinstance(row, dict)
            and set(row) == _NOT_FILED_KEYS
            and all(
                isinstance(row[k], str) and 0 < len(row[k]) <= MAX_FIELD_CHARS
                for k in ("type", "id")
            )
            and _count(row["version"])
            and row["state"] in ("held", "conflict")
            and _optional_text(row["reason"])
            and _optional_text(row["since"])
            and _optional_text(row["patient_id"])
        )
        if not ok:
            raise _bad("a note not filed")
    return rows
