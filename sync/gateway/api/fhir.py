"""The FHIR R4 data plane at /fhir: metadata, read, vread, search, history, Bundles.

Invariants:
- Every route answers only from the device's own site; the site comes from the verified
  certificate placed in ``scope["gatehouse.device"]`` by the auth middleware, never from the
  request. A resource of another site is indistinguishable from one that does not exist (404).
- Search and history page by the server change sequence: the ``next`` link carries an opaque
  cursor (the last seq served), so paging is stable and — because seq order is commit order —
  a client following ``next`` (then the ``x-resume`` link later) never skips a change.
  This is a documented, FHIR-shaped extension: the links are ordinary URLs, the cursor is the
  ``_cursor`` parameter, and the ``x-resume`` link relation on history pages lets a client that
  reached the end resume later from exactly where it stopped.
- ``_lastUpdated`` filters on the version's own ``meta.lastUpdated``; a resource that entered
  the site by a transfer keeps its lastUpdated, so incremental sync must follow ``_history``
  (seq-ordered, shows the transfer as new), not ``_lastUpdated`` searches.
- Every refusal is an OperationOutcome with a 4xx status and a stable reason code (an
  unexpected failure is a 500 OperationOutcome, ``internal_error``, naming nothing); unknown
  search parameters are refused (400), never silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sync.gateway.api.outcome import (
    FhirError,
    error_response,
    fhir_response,
    version_headers,
)
from sync.gateway.api.responses import retry_after_headers
from sync.gateway.api.transaction import Scope, handle_bundle
from sync.gateway.pki import DeviceIdentity
from sync.gateway.store import resources as res
from sync.gateway.store.base import (
    MAX_PAGE,
    Change,
    DatabaseFailure,
    HistoryQuery,
    SearchQuery,
    Store,
    StoredResource,
    fhir_instant,
    to_us,
)
from sync.protocol.fhir import vocabulary as vocab

log = logging.getLogger(__name__)

DEFAULT_COUNT = 50
DEVICE_SCOPE_KEY = "gatehouse.device"
RESUME_RELATION = "x-resume"
COMMON_SEARCH = frozenset({"_count", "_sort", "_lastUpdated", "_cursor", "_format"})
TYPE_SEARCH: dict[str, frozenset[str]] = {
    vocab.ORGANIZATION: frozenset({"identifier"}),
    vocab.PATIENT: frozenset({"identifier", "name"}),
    **{t: frozenset({"patient", "identifier"}) for t in vocab.CLINICAL_TYPES},
}
HISTORY_PARAMS = frozenset({"_since", "_count", "_cursor", "_format"})
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
MAX_PARAM_CHARS = 256


def device_of(request: Request) -> DeviceIdentity:
    identity = request.scope.get(DEVICE_SCOPE_KEY)
    if not isinstance(identity, DeviceIdentity):  # mounted without the auth layer: fail closed
        raise FhirError(403, "security", "no_device_identity")
    return identity


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


# -- cursors ---------------------------------------------------------------------------------


def encode_cursor(kind: str, seq: int) -> str:
    raw = orjson.dumps({"k": kind, "s": seq})
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(token: str, kind: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise FhirError(400, "invalid", "bad_cursor") from None
    if not isinstance(data, dict) or data.get("k") != kind:
        raise FhirError(400, "invalid", "bad_cursor")
    seq = data.get("s")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise FhirError(400, "invalid", "bad_cursor")
    return seq


# -- parameters ------------------------------------------------------------------------------


def parse_instant(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FhirError(400, "invalid", "bad_date") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _params(request: Request, allowed: frozenset[str]) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            raise FhirError(400, "not-supported", "unknown_search_parameter")
        if len(value) > MAX_PARAM_CHARS:
            raise FhirError(400, "invalid", "parameter_too_long")
        params.setdefault(key, []).append(value)
    for key, values in params.items():
        if key != "_lastUpdated" and len(values) > 1:
            raise FhirError(400, "invalid", "repeated_parameter")
    fmt = params.get("_format")
    if fmt and fmt[0] not in JSON_FORMATS:
        raise FhirError(400, "not-supported", "unsupported_format")
    return params


def _count(params: dict[str, list[str]]) -> int:
    raw = params.get("_count", [str(DEFAULT_COUNT)])[0]
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise FhirError(400, "invalid", "bad_count")
    return int(raw)


def _check_type(rtype: str) -> None:
    if rtype not in res.RESOURCE_TYPES:
        raise FhirError(404, "not-supported", "unsupported_resource_type")


def _next_url(request: Request, params: dict[str, list[str]], token: str) -> str:
    items = [(k, v) for k, vs in params.items() if k != "_cursor" for v in vs]
    items.append(("_cursor", token))
    return f"{str(request.url).split('?', 1)[0]}?{urlencode(items)}"


def _links(request: Request, next_url: str | None) -> list[dict[str, str]]:
    links = [{"relation": "self", "url": str(request.url)}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return links


# -- read / vread ----------------------------------------------------------------------------


def _visible(found: StoredResource | None, site: str) -> StoredResource:
    if found is None or found.site != site:
        raise FhirError(404, "not-found", "not_found")
    if found.deleted:
        raise FhirError(410, "deleted", "deleted")
    return found


async def read(request: Request) -> Response:
    device = device_of(request)
    rtype, rid = request.path_params["rtype"], request.path_params["rid"]
    _check_type(rtype)
    if not vocab.ID_RE.fullmatch(rid):
        raise FhirError(404, "not-found", "not_found")
    _params(request, frozenset({"_format"}))
    found = _visible(await run_in_threadpool(store_of(request).read, rtype, rid), device.site)
    return fhir_response(found.body, headers=version_headers(found))


async def vread(request: Request) -> Response:
    device = device_of(request)
    rtype, rid, vid = (request.path_params[k] for k in ("rtype", "rid", "vid"))
    _check_type(rtype)
    if not vocab.ID_RE.fullmatch(rid) or not vid.isdigit() or len(vid) > 12:
        raise FhirError(404, "not-found", "not_found")
    _params(request, frozenset({"_format"}))
    store = store_of(request)
    found = _visible(await run_in_threadpool(store.vread, rtype, rid, int(vid)), device.site)
    return fhir_response(found.body, headers=version_headers(found))


# -- search ----------------------------------------------------------------------------------


def build_search(rtype: str, site: str, params: dict[str, list[str]]) -> SearchQuery:
    sort = params.get("_sort")
    if sort and sort[0] != "_lastUpdated":
        raise FhirError(400, "not-supported", "unsupported_sort")
    bounds: list[tuple[str, int]] = []
    for value in params.get("_lastUpdated", []):
        prefix, moment = value[:2], value[2:]
        if prefix not in ("gt", "ge", "lt", "le"):
            raise FhirError(400, "not-supported", "unsupported_date_prefix")
        bounds.append((prefix, to_us(parse_instant(moment))))
    patient_id: str | None = None
    if "patient" in params:
        raw = params["patient"][0]
        patient_id = raw.removeprefix("Patient/")
        if not vocab.ID_RE.fullmatch(patient_id):
            raise FhirError(400, "invalid", "bad_patient_parameter")
    identifier: tuple[str | None, str] | None = None
    if "identifier" in params:
        raw = params["identifier"][0]
        system, bar, value = raw.partition("|")
        identifier = (system, value) if bar else (None, raw)
        if not identifier[1]:
            raise FhirError(400, "invalid", "bad_identifier_parameter")
    name: str | None = None
    if "name" in params:
        name = res.normalise_name(params["name"][0])
        if not name:
            raise FhirError(400, "invalid", "bad_name_parameter")
    after = decode_cursor(params["_cursor"][0], "s") if "_cursor" in params else 0
    return SearchQuery(
        rtype=rtype,
        site=site,
        count=_count(params) + 1,  # one more tells whether a next page exists
        after_seq=after,
        last_updated=tuple(bounds),
        patient_id=patient_id,
        identifier=identifier,
        name=name,
    )


async def search(request: Request) -> Response:
    device = device_of(request)
    rtype = request.path_params["rtype"]
    _check_type(rtype)
    params = _params(request, COMMON_SEARCH | TYPE_SEARCH[rtype])
    query = build_search(rtype, device.site, params)
    found = await run_in_threadpool(store_of(request).search, query)
    page, more = found[: query.count - 1], len(found) >= query.count
    next_url = _next_url(request, params, encode_cursor("s", page[-1].seq)) if more else None
    base = _base(request)
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": _links(request, next_url),
        "entry": [
            {
                "fullUrl": f"{base}/{r.rtype}/{r.rid}",
                "resource": orjson.Fragment(r.body),
                "search": {"mode": "match"},
            }
            for r in page
        ],
    }
    return fhir_response(bundle)


# -- history ---------------------------------------------------------------------------------


def _history_entry(base: str, change: Change) -> dict[str, Any]:
    url = f"{change.rtype}/{change.rid}"
    when = fhir_instant(change.last_updated)
    if change.op == "put" and change.body is not None:
        created = change.version_id == 1
        return {
            "fullUrl": f"{base}/{url}",
            "resource": orjson.Fragment(change.body),
            "request": {
                "method": "POST" if created else "PUT",
                "url": change.rtype if created else url,
            },
            "response": {
                "status": "201 Created" if created else "200 OK",
                "etag": f'W/"{change.version_id}"',
                "lastModified": when,
            },
        }
    return {
        "fullUrl": f"{base}/{url}",
        "request": {"method": "DELETE", "url": url},
        "response": {"status": "204 No Content", "lastModified": when},
    }


async def _history(request: Request, rtype: str | None) -> Response:
    device = device_of(request)
    params = _params(request, HISTORY_PARAMS)
    count = _count(params)
    since = to_us(parse_instant(params["_since"][0])) if "_since" in params else None
    after = decode_cursor(params["_cursor"][0], "h") if "_cursor" in params else 0
    query = HistoryQuery(
        site=device.site, count=count + 1, rtype=rtype, after_seq=after, since_us=since
    )
    found = await run_in_threadpool(store_of(request).history, query)
    page, more = found[:count], len(found) > count
    last_seq = page[-1].seq if page else after
    resume = _next_url(request, params, encode_cursor("h", last_seq))
    links = _links(request, resume if more else None)
    links.append({"relation": RESUME_RELATION, "url": resume})
    base = _base(request)
    bundle = {
        "resourceType": "Bundle",
        "type": "history",
        "link": links,
        "entry": [_history_entry(base, c) for c in page],
    }
    return fhir_response(bundle)


async def system_history(request: Request) -> Response:
    return await _history(request, None)


async def type_history(request: Request) -> Response:
    rtype = request.path_params["rtype"]
    _check_type(rtype)
    return await _history(request, rtype)


# -- metadata --------------------------------------------------------------------------------


def capability_statement(now: dt.datetime) -> dict[str, Any]:
    """Exactly what this server supports, nothing more."""

    def resource_entry(rtype: str) -> dict[str, Any]:
        params: list[dict[str, str]] = [
            {"name": "_lastUpdated", "type": "date"},
            {"name": "identifier", "type": "token"},
        ]
        if rtype == vocab.PATIENT:
            params.append({"name": "name", "type": "string"})
        elif rtype != vocab.ORGANIZATION:
            params.append({"name": "patient", "type": "reference"})
        return {
            "type": rtype,
            "interaction": [{"code": c} for c in ("read", "vread", "search-type", "history-type")],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": False,
            "conditionalCreate": True,
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchParam": params,
        }

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": fhir_instant(now),
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "software": {"name": "Gatehouse gateway"},
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Scoped to the site of the client certificate. Creates, updates and"
                    " deletes only inside transaction or batch Bundles (POST, PUT with ifMatch,"
                    " DELETE); Organization (the site itself) is read-only. Search and history"
                    " page by an opaque _cursor in the next link;"
                    " history pages also carry an 'x-resume' link to continue later."
                ),
                "security": {"description": "Mutual TLS 1.3; device certificate required."},
                "resource": [resource_entry(t) for t in res.RESOURCE_TYPES],
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                ],
            }
        ],
    }


async def metadata(request: Request) -> Response:
    device_of(request)
    now: dt.datetime = request.app.state.clock()
    return fhir_response(capability_statement(now))


# -- application -----------------------------------------------------------------------------


async def bundle(request: Request) -> Response:
    device = device_of(request)
    return await handle_bundle(request, store_of(request), Scope(device.site, device.device_id))


async def _fhir_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirError)
    log.info("fhir refused: %s %s", exc.status, exc.reason)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: ("not-found", "no_such_route"), 405: ("not-supported", "method_not_allowed")}
    code, reason = codes.get(exc.status_code, ("processing", "http_error"))
    return error_response(FhirError(exc.status_code, code, reason))


async def _database_failure(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DatabaseFailure)
    log.warning("database failure: %s", exc.reason)
    response = error_response(FhirError(503, "transient", exc.reason))
    response.headers.update(retry_after_headers())
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("internal error: %s", type(exc).__name__)  # no message: it may hold data
    return error_response(FhirError(500, "exception", "internal_error"))


def routes() -> Sequence[Route]:
    return [
        Route("/fhir/metadata", metadata, methods=["GET"]),
        Route("/fhir/_history", system_history, methods=["GET"]),
        Route("/fhir", bundle, methods=["POST"]),
        Route("/fhir/", bundle, methods=["POST"]),
        Route("/fhir/{rtype}", search, methods=["GET"]),
        Route("/fhir/{rtype}/_history", type_history, methods=["GET"]),
        Route("/fhir/{rtype}/{rid}", read, methods=["GET"]),
        Route("/fhir/{rtype}/{rid}/_history/{vid}", vread, methods=["GET"]),
    ]


def create_fhir_app(store: Store, *, clock: Callable[[], dt.datetime]) -> Starlette:
    """The data-plane ASGI app; wrap it in ``server.DeviceAuthMiddleware`` to serve it."""
    app = Starlette(
        routes=list(routes()),
        exception_handlers={
            FhirError: _fhir_error,
            DatabaseFailure: _database_failure,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.store = store
    app.state.clock = clock
    return app
