"""Small FHIR R4 Bundle and OperationOutcome helpers shared by the sync engine and the gateway.

Invariants:

- Builders return plain JSON-ready dicts and never copy patient data anywhere it was not put:
  ``operation_outcome`` carries only the diagnostics text its caller passes (callers must not
  pass patient data; the gateway's errors name fields and reasons, never values).
- Readers (:func:`bundle_entries`, :func:`next_link`, :func:`parse_history_entry`,
  :func:`parse_response_entry`) accept any JSON value and either return well-typed results or
  raise :class:`~sync.protocol.fhir.validate.InvalidResource` with a JSON path: a malformed server
  answer
  never surfaces as a ``KeyError`` or ``TypeError`` deep in the engine.
- Conditional requests use FHIR's exact forms: ``ifNoneExist`` =
  ``identifier=<system>|<value>`` and ``ifMatch`` = ``W/"<versionId>"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from sync.protocol.fhir.read import client_identifier, is_valid_id
from sync.protocol.fhir.validate import InvalidResource
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM

Severity = Literal["fatal", "error", "warning", "information"]
_SEVERITIES = frozenset({"fatal", "error", "warning", "information"})
_BUNDLE_TYPES = frozenset(
    [
        "document",
        "message",
        "transaction",
        "transaction-response",
        "batch",
        "batch-response",
        "history",
        "searchset",
        "collection",
    ]
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})
_MAX_URL_CHARS = 8_192


def _fail(reason: str, path: str) -> NoReturn:
    raise InvalidResource(reason, path)


# --- builders --------------------------------------------------------------------------------


def operation_outcome(severity: Severity, code: str, diagnostics: str) -> dict[str, Any]:
    """An OperationOutcome with one issue. ``code`` is a FHIR IssueType (e.g. ``invalid``)."""
    if severity not in _SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")
    issue: dict[str, Any] = {"severity": severity, "code": code}
    if diagnostics:
        issue["diagnostics"] = diagnostics
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def etag(version_id: str) -> str:
    """The weak ETag FHIR uses for a version: ``W/"3"``."""
    if not is_valid_id(version_id):
        raise ValueError("not a FHIR version id")
    return f'W/"{version_id}"'


def parse_etag(value: Any) -> str | None:
    """The version id in ``W/"3"`` or ``"3"``, or None if ``value`` is not such an ETag."""
    if type(value) is not str:
        return None
    text = value[2:] if value.startswith("W/") else value
    if len(text) < 3 or text[0] != '"' or text[-1] != '"':
        return None
    version = text[1:-1]
    return version if is_valid_id(version) else None


def entry_full_url(base_url: str, resource_type: str, resource_id: str) -> str:
    """``<base>/<Type>/<id>`` for ``Bundle.entry.fullUrl``."""
    return f"{base_url.rstrip('/')}/{resource_type}/{resource_id}"


def _bundle(kind: str, entries: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": kind}
    bundle.update({k: v for k, v in extra.items() if v is not None})
    bundle["entry"] = entries
    return bundle


def _links(self_url: str | None, next_url: str | None) -> list[dict[str, str]] | None:
    links = []
    if self_url is not None:
        links.append({"relation": "self", "url": self_url})
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return links or None


def searchset(
    entries: list[dict[str, Any]],
    next_url: str | None,
    total: int | None = None,
    *,
    self_url: str | None = None,
    base_url: str | None = None,
) -> dict[str, Any]:
    """A searchset Bundle of ``entries`` (resources), with ``link[next]`` when there is more."""
    wrapped = []
    for resource in entries:
        entry: dict[str, Any] = {}
        if base_url is not None:
            entry["fullUrl"] = entry_full_url(base_url, resource["resourceType"], resource["id"])
        entry["resource"] = resource
        entry["search"] = {"mode": "match"}
        wrapped.append(entry)
    return _bundle("searchset", wrapped, total=total, link=_links(self_url, next_url))


def history_entry(
    *,
    resource_type: str,
    resource_id: str,
    version_id: str,
    last_updated: str,
    resource: dict[str, Any] | None,
    base_url: str | None = None,
) -> dict[str, Any]:
    """One history entry: a create (version "1"), an update, or a deletion (``resource=None``)."""
    url = f"{resource_type}/{resource_id}"
    entry: dict[str, Any] = {}
    if base_url is not None:
        entry["fullUrl"] = entry_full_url(base_url, resource_type, resource_id)
    if resource is None:
        request = {"method": "DELETE", "url": url}
        status = "204 No Content"
    elif version_id == "1":
        entry["resource"] = resource
        request = {"method": "POST", "url": resource_type}
        status = "201 Created"
    else:
        entry["resource"] = resource
        request = {"method": "PUT", "url": url}
        status = "200 OK"
    entry["request"] = request
    entry["response"] = {"status": status, "etag": etag(version_id), "lastModified": last_updated}
    return entry


def history(
    entries: list[dict[str, Any]],
    next_url: str | None,
    total: int | None = None,
    *,
    self_url: str | None = None,
) -> dict[str, Any]:
    """A history Bundle of entries made by :func:`history_entry`."""
    return _bundle("history", entries, total=total, link=_links(self_url, next_url))


def if_none_exist(system: str, value: str) -> str:
    """The ``ifNoneExist`` query for an identifier: ``identifier=<system>|<value>``."""
    return f"identifier={system}|{value}"


def create_entry(resource: dict[str, Any], *, full_url: str | None = None) -> dict[str, Any]:
    """A transaction entry creating ``resource`` exactly once, keyed on its client identifier.

    The resource must carry an identifier in the client-id system: the server then creates it
    only if no resource with that identifier exists (a retried push never duplicates).
    """
    client_id = client_identifier(resource)
    if client_id is None:
        raise ValueError("a create needs a client identifier")
    entry: dict[str, Any] = {}
    if full_url is not None:
        entry["fullUrl"] = full_url
    entry["resource"] = resource
    entry["request"] = {
        "method": "POST",
        "url": resource["resourceType"],
        "ifNoneExist": if_none_exist(CLIENT_ID_SYSTEM, client_id),
    }
    return entry


def update_entry(resource: dict[str, Any], *, version_id: str) -> dict[str, Any]:
    """A transaction entry updating ``resource`` only if the server still has ``version_id``."""
    if not is_valid_id(resource.get("id")):
        raise ValueError("an update needs the resource id")
    return {
        "fullUrl": f"{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "request": {
            "method": "PUT",
            "url": f"{resource['resourceType']}/{resource['id']}",
            "ifMatch": etag(version_id),
        },
    }


def transaction(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle (all or nothing)."""
    return _bundle("transaction", entries)


def batch(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch Bundle (each entry on its own)."""
    return _bundle("batch", entries)


# --- readers ---------------------------------------------------------------------------------


def bundle_entries(bundle: Any, expected_type: str | None = None) -> list[dict[str, Any]]:
    """The entries of a Bundle (``[]`` when it has none), checked to be objects."""
    if type(bundle) is not dict:
        _fail("wrong_type", "$")
    if bundle.get("resourceType") != "Bundle":
        _fail("unknown_type", "$.resourceType")
    kind = bundle.get("type")
    if type(kind) is not str or kind not in _BUNDLE_TYPES:
        _fail("bad_code", "Bundle.type")
    if expected_type is not None and kind != expected_type:
        _fail("unexpected_type", "Bundle.type")
    entries = bundle.get("entry", [])
    if type(entries) is not list:
        _fail("wrong_type", "Bundle.entry")
    for i, entry in enumerate(entries):
        if type(entry) is not dict:
            _fail("wrong_type", f"Bundle.entry[{i}]")
    return entries


def next_link(bundle: Any) -> str | None:
    """``Bundle.link`` with relation ``next``, or None when this is the last page.

    Only checks shape (a non-empty string without whitespace, of bounded length); whether the
    URL's host may be contacted is the transport's decision (NW-2).
    """
    if type(bundle) is not dict:
        _fail("wrong_type", "$")
    links = bundle.get("link", [])
    if type(links) is not list:
        _fail("wrong_type", "Bundle.link")
    found: str | None = None
    for i, link in enumerate(links):
        if type(link) is not dict:
            _fail("wrong_type", f"Bundle.link[{i}]")
        if link.get("relation") != "next":
            continue
        url = link.get("url")
        if type(url) is not str:
            _fail("wrong_type", f"Bundle.link[{i}].url")
        if not url or len(url) > _MAX_URL_CHARS or any(c.isspace() for c in url):
            _fail("bad_url", f"Bundle.link[{i}].url")
        if found is not None:
            _fail("duplicate_next", f"Bundle.link[{i}]")
        found = url
    return found


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One change read from a history Bundle. ``resource`` is None for a deletion."""

    resource_type: str
    resource_id: str
    version_id: str | None
    deleted: bool
    resource: Any


def _request_url(entry: dict[str, Any], path: str) -> tuple[str, str]:
    request = entry.get("request")
    if type(request) is not dict:
        _fail("missing", f"{path}.request")
    method = request.get("method")
    if type(method) is not str or method not in _METHODS:
        _fail("bad_code", f"{path}.request.method")
    url = request.get("url")
    if type(url) is not str:
        _fail("wrong_type", f"{path}.request.url")
    return method, url


def parse_history_entry(entry: Any, index: int = 0) -> HistoryItem:
    """Read one history entry; the resource itself is NOT validated here (the caller does)."""
    path = f"Bundle.entry[{index}]"
    if type(entry) is not dict:
        _fail("wrong_type", path)
    response = entry.get("response")
    version = parse_etag(response.get("etag")) if type(response) is dict else None
    resource = entry.get("resource")
    if resource is not None:
        if type(resource) is not dict:
            _fail("wrong_type", f"{path}.resource")
        kind, ident = resource.get("resourceType"), resource.get("id")
        if type(kind) is not str or type(ident) is not str or not is_valid_id(ident):
            _fail("bad_id", f"{path}.resource")
        meta = resource.get("meta")
        if type(meta) is dict and is_valid_id(meta.get("versionId")):
            version = meta["versionId"]
        return HistoryItem(kind, ident, version, False, resource)
    method, url = _request_url(entry, path)
    if method != "DELETE":
        _fail("missing", f"{path}.resource")
    kind, slash, ident = url.partition("/")
    if not slash or not kind.isalpha() or not is_valid_id(ident):
        _fail("bad_reference", f"{path}.request.url")
    return HistoryItem(kind, ident, version, True, None)


REFUSAL_CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,47}")  # a server's stable reason code


def refusal_code(outcome: Any) -> str | None:
    """The stable reason code of a refusal's OperationOutcome (``issue[0].details.text``, e.g.
    ``patient_left_site``), or None when it holds none: free text from a server never passes
    (it could carry record content)."""
    if type(outcome) is not dict or outcome.get("resourceType") != "OperationOutcome":
        return None
    issues = outcome.get("issue")
    if type(issues) is not list or not issues or type(issues[0]) is not dict:
        return None
    details = issues[0].get("details")
    text = details.get("text") if type(details) is dict else None
    if type(text) is str and REFUSAL_CODE_RE.fullmatch(text):
        return text
    return None


@dataclass(frozen=True, slots=True)
class ResponseItem:
    """One entry of a transaction/batch response."""

    status: int
    location: str | None
    version_id: str | None
    resource: Any
    outcome: Any


def parse_response_entry(entry: Any, index: int = 0) -> ResponseItem:
    """Read ``entry.response`` of a transaction-response or batch-response Bundle."""
    path = f"Bundle.entry[{index}]"
    if type(entry) is not dict:
        _fail("wrong_type", path)
    response = entry.get("response")
    if type(response) is not dict:
        _fail("missing", f"{path}.response")
    status_text = response.get("status")
    if type(status_text) is not str:
        _fail("wrong_type", f"{path}.response.status")
    head = status_text.split(" ", 1)[0]
    if len(head) != 3 or not head.isascii() or not head.isdigit():
        _fail("bad_status", f"{path}.response.status")
    location = response.get("location")
    if location is not None and type(location) is not str:
        _fail("wrong_type", f"{path}.response.location")
    return ResponseItem(
        status=int(head),
        location=location,
        version_id=parse_etag(response.get("etag")),
        resource=entry.get("resource"),
        outcome=response.get("outcome"),
    )
