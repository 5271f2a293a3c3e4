"""Transaction and batch Bundles as a laptop POSTs them, read into ``Entry`` items before
anything runs (``api.transaction`` runs them).

Invariants:
- Request bodies are bounded (``MAX_BODY_BYTES``, ``MAX_BUNDLE_ENTRIES``, JSON depth and item
  count, no duplicate keys: ``sync.protocol.fhir.bounded_json``); a body past a bound is
  refused with 413 before it is parsed whole.
- Every resource an entry writes passes the store's structural checks (a patient reference
  may still be a ``urn:uuid:`` of the same Bundle) and
  ``sync.protocol.fhir.validate.validate_resource(as_create=True)``, the rules the client
  applies to what it stores; anything else is refused with 4xx and the entry's reason.
- Only POST (create, optionally ``ifNoneExist: identifier=system|value``), PUT (with an
  optional ``ifMatch: W/"n"``) and DELETE of the stored types are read; Organizations are
  read-only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from sync.gateway.api.outcome import FhirError
from sync.gateway.store import resources as res
from sync.protocol.fhir import vocabulary as vocab
from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded
from sync.protocol.fhir.validate import InvalidResource, validate_resource

MAX_BODY_BYTES = 8 * 1024 * 1024  # a consultation with notes is kilobytes; 8 MiB is generous
MAX_BUNDLE_ENTRIES = 1000
MAX_BUNDLE_DEPTH = res.MAX_JSON_DEPTH + 4  # Bundle.entry[].resource adds three levels
MAX_BODY_ITEMS = 200_000  # JSON members + array items in one request body
IF_MATCH_RE = re.compile(r'^W/"(\d{1,12})"$')
ORDER = {"DELETE": 0, "POST": 1, "PUT": 2}


@dataclass
class Entry:
    index: int
    method: str
    rtype: str
    rid: str | None
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: tuple[str, str] | None
    if_match: int | None


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 beyond ``MAX_BODY_BYTES``."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise FhirError(413, "too-costly", "body_too_large")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise FhirError(413, "too-costly", "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes, max_depth: int) -> Any:
    """Strict, bounded JSON (sync.protocol.fhir.bounded_json: size, depth, items, duplicate
    keys)."""
    try:
        return loads_bounded(
            body, max_bytes=MAX_BODY_BYTES, max_depth=max_depth, max_items=MAX_BODY_ITEMS
        )
    except BoundedJsonError as err:
        if err.reason == "too_large":
            raise FhirError(413, "too-costly", "body_too_large") from None
        reason = "malformed_json" if err.reason == "malformed" else err.reason
        raise FhirError(400, "structure", reason) from None


def bad_request(reason: str) -> FhirError:
    return FhirError(400, "invalid", reason)


def parse_entry(index: int, raw: Any) -> Entry:
    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise bad_request("bad_entry")
    request = raw["request"]
    method, url = request.get("method"), request.get("url")
    if not isinstance(method, str) or method not in ORDER or not isinstance(url, str):
        raise FhirError(400, "not-supported", "unsupported_entry_method")
    path = url.split("?", 1)[0].strip("/").split("/")
    rtype = path[0]
    if rtype not in res.RESOURCE_TYPES:
        raise bad_request("unsupported_resource_type")
    if rtype == vocab.ORGANIZATION:
        raise FhirError(403, "forbidden", "read_only_type")
    rid: str | None = None
    if method == "POST":
        if len(path) != 1:
            raise bad_request("bad_entry_url")
    else:
        if len(path) != 2 or not vocab.ID_RE.fullmatch(path[1]):
            raise bad_request("bad_entry_url")
        rid = path[1]
    resource: dict[str, Any] | None = None
    if method != "DELETE":
        try:
            resource = res.check_resource(raw.get("resource"), rtype, allow_urn=True)
            validate_resource(resource, as_create=True)  # the client's own strict rules
        except res.ResourceError as err:
            raise bad_request(err.reason) from None
        except InvalidResource as err:
            raise bad_request(f"invalid_resource:{err.reason}") from None
        if method == "PUT" and resource.get("id") not in (None, rid):
            raise bad_request("id_mismatch")
    full_url = raw.get("fullUrl")
    if full_url is not None and not isinstance(full_url, str):
        raise bad_request("bad_full_url")
    if_none_exist: tuple[str, str] | None = None
    if "ifNoneExist" in request:
        cond = request["ifNoneExist"]
        if method != "POST" or not isinstance(cond, str):
            raise bad_request("bad_if_none_exist")
        key, _, token = cond.partition("=")
        system, bar, value = token.partition("|")
        if key != "identifier" or not bar or not system or not value:
            raise FhirError(400, "not-supported", "unsupported_if_none_exist")
        if_none_exist = (system, value)
    if_match: int | None = None
    if "ifMatch" in request:
        match = IF_MATCH_RE.match(str(request["ifMatch"]))
        if method == "POST" or match is None:
            raise bad_request("bad_if_match")
        if_match = int(match.group(1))
    return Entry(index, method, rtype, rid, resource, full_url, if_none_exist, if_match)


def parse_bundle(body: bytes) -> tuple[str, list[Entry]]:
    return parse_bundle_value(parse_json(body, MAX_BUNDLE_DEPTH))


def parse_bundle_value(bundle: Any) -> tuple[str, list[Entry]]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise bad_request("not_a_bundle")
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise FhirError(400, "not-supported", "unsupported_bundle_type")
    raw_entries = bundle.get("entry", [])
    if not isinstance(raw_entries, list):
        raise bad_request("bad_entry")
    if len(raw_entries) > MAX_BUNDLE_ENTRIES:
        raise FhirError(413, "too-costly", "too_many_entries")
    return kind, [parse_entry(i, raw) for i, raw in enumerate(raw_entries)]
