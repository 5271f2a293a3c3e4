"""A ``batch`` Bundle of GET entries POSTed to /fhir (FHIR R4 §3.1.0.11): several reads in one
request — how a laptop checks every type's history (and the metadata) in one round trip
(issue 15 item 3: a no-change sync in at most 3 requests).

Invariants:
- Each entry is answered exactly as the same GET sent on its own would be: it is dispatched
  through the FHIR app itself (same routes, same parameter checks, same exception handlers)
  with the caller's ASGI scope — so the same verified device identity and site, the same
  scheme and host in the links — and only the method, path and query replaced. No entry can
  reach anything a direct GET could not.
- Entries are read one after another; a refused entry (4xx/5xx) is that entry's
  ``response.status`` with its OperationOutcome, and the others are still answered.
- A batch is either all GETs (this module) or all writes (``api.transaction``); a mix is
  refused (400 ``mixed_batch``). At most ``MAX_READ_ENTRIES`` entries; an entry URL is
  relative to the FHIR base (``Patient/_history?…``, ``metadata``) or an absolute URL / path
  under this server's ``/fhir``; anything else is refused for that entry (400
  ``bad_entry_url``).
- Entry bodies are embedded as they were produced (``orjson.Fragment``), never re-parsed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from sync.gateway.api.outcome import FhirError, fhir_response, operation_outcome, status_text

MAX_READ_ENTRIES = 64  # reads in one batch: every synced type and the metadata, with room
FHIR_PREFIX = "/fhir"


def read_urls(bundle: Mapping[str, Any]) -> list[str] | None:
    """The entry URLs when every entry of this batch is a GET; None when none is (a write
    batch); ``FhirError`` when the batch mixes them or is malformed."""
    entries = bundle.get("entry", [])
    if not isinstance(entries, list) or not entries:
        return None
    methods = [_method(entry) for entry in entries]
    if "GET" not in methods:
        return None
    if any(method != "GET" for method in methods):
        raise FhirError(400, "not-supported", "mixed_batch")
    if len(entries) > MAX_READ_ENTRIES:
        raise FhirError(413, "too-costly", "too_many_entries")
    urls: list[str] = []
    for entry in entries:
        url = entry["request"].get("url")
        if not isinstance(url, str) or not url or len(url) > 4096:
            raise FhirError(400, "invalid", "bad_entry_url")
        urls.append(url)
    return urls


def _method(entry: Any) -> str | None:
    request = entry.get("request") if isinstance(entry, dict) else None
    method = request.get("method") if isinstance(request, dict) else None
    return method if isinstance(method, str) else None


async def answer_reads(request: Request, urls: Sequence[str]) -> Response:
    """The ``batch-response``: one entry per URL, in order."""
    answers = [await _answer(request, url) for url in urls]
    return fhir_response({"resourceType": "Bundle", "type": "batch-response", "entry": answers})


async def _answer(request: Request, url: str) -> dict[str, Any]:
    path, query = _fhir_path(url)
    if path is None:
        error = FhirError(400, "invalid", "bad_entry_url")
        return {"response": {"status": status_text(400), "outcome": operation_outcome(error)}}
    status, headers, body = await _dispatch(request, path, query)
    response: dict[str, Any] = {"status": status_text(status)}
    etag = headers.get("etag")
    if etag:
        response["etag"] = etag
    if status >= 400:
        response["outcome"] = orjson.Fragment(body)
        return {"response": response}
    return {"resource": orjson.Fragment(body), "response": response}


def _fhir_path(url: str) -> tuple[str | None, str]:
    """(path under this server, query) for an entry URL, or (None, "") when it is not one of
    this server's FHIR URLs."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        path = parts.path  # an absolute URL: its path must be under /fhir (the host is ours)
    elif url.startswith("/"):
        path = parts.path
    else:
        path = f"{FHIR_PREFIX}/{parts.path}"
    if not (path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/")) or ".." in path:
        return None, ""
    return path, parts.query


async def _dispatch(request: Request, path: str, query: str) -> tuple[int, dict[str, str], bytes]:
    """Run one GET through the FHIR app with the caller's scope; (status, headers, body)."""
    scope = dict(request.scope)
    scope.update(
        method="GET",
        path=path,
        raw_path=path.encode("ascii", "replace"),
        query_string=query.encode("ascii", "replace"),
        headers=[(k, v) for k, v in request.scope["headers"] if k != b"content-length"],
    )
    scope.pop("router", None)
    scope.pop("endpoint", None)
    scope.pop("path_params", None)
    status = 500
    headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            for key, value in message.get("headers", []):
                headers[key.decode("latin-1").lower()] = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await request.app(scope, receive, send)
    return status, headers, b"".join(chunks)
