"""The first page of every type's history, and the server's metadata, in ONE request: a FHIR
``batch`` Bundle of GET entries (R4 §3.1.0.11), so a sync with nothing new costs one data-plane
request instead of one per type (issue 15 item 3; docs/sync.md §Requests per sync).

Invariants:
- Only types resumed by ``_history`` (a stored cursor that is a history URL) are batched: the
  entry URL is exactly the stored cursor, made relative to the FHIR base, so each page is the
  one a GET of that cursor would bring. A cursor outside the base is left to its own GET.
- The batch is an optimisation, never a new way to fail: a server that refuses it, answers
  anything but a well-formed ``batch-response`` of the same length, or answers too much, is
  simply read type by type as before (``None``). Only a connection-level failure raises.
- An entry that is not a 200 with a resource yields None for that URL (its type is then read
  by its own GET, which reports the server's refusal as usual).
- Each answered resource is handed on as the bytes of a ``Response``, so the pull validates it
  exactly as a page it fetched itself (bounded JSON, every resource validated).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import orjson

from sync.device.outcome import CONNECTION_REASONS, FHIR_JSON
from sync.device.replica import Replica
from sync.device.transport import Response, Transport, TransportError
from sync.protocol.fhir.bounded_json import MAX_PAGE_DEPTH, BoundedJsonError, loads_bounded
from sync.protocol.fhir.bundle import bundle_entries
from sync.protocol.fhir.paging import is_history
from sync.protocol.fhir.validate import InvalidResource

HISTORY_STREAM_PREFIX = "history:"  # the pull's stream of a type (sync.device.pull)
METADATA = "metadata"
BATCH_LEVELS = 3  # batch-response > entry[] > {} > the page: the page's own depth budget on top


def history_cursors(replica: Replica, resource_types: Sequence[str]) -> dict[str, str]:
    """Each type's stored cursor when that type is resumed by ``_history``."""
    cursors: dict[str, str] = {}
    for kind in resource_types:
        stored = replica.read_cursor(HISTORY_STREAM_PREFIX + kind)
        if stored is not None and is_history(stored):
            cursors[kind] = stored
    return cursors


def relative_to_base(cursor: str, fhir_base: str) -> str | None:
    """A stored cursor (path and query) as a URL relative to the FHIR base, or None."""
    base_path = urlsplit(fhir_base).path.strip("/")
    path = cursor.lstrip("/")
    prefix = base_path + "/" if base_path else ""
    if not path.startswith(prefix):
        return None
    return path[len(prefix) :] or None


def read_in_one_batch(
    transport: Transport, fhir_base: str, urls: Sequence[str]
) -> list[Response | None] | None:
    """GET every URL (relative to the base) in one batch; per URL its answer or None; None for
    the whole batch when the server did not answer it usefully (module docstring)."""
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": url}} for url in urls],
    }
    base = fhir_base.rstrip("/")
    try:
        response = transport.request(
            "POST",
            base,
            body=orjson.dumps(bundle),
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
            idempotent=True,  # reads only
        )
    except TransportError as error:
        if error.reason in CONNECTION_REASONS:
            raise
        return None  # e.g. larger than the transport takes: read type by type
    if response.status != 200:
        return None
    try:
        answer = loads_bounded(response.body, max_depth=MAX_PAGE_DEPTH + BATCH_LEVELS)
        entries = bundle_entries(answer, "batch-response")
    except (BoundedJsonError, InvalidResource):
        return None
    if len(entries) != len(urls):
        return None
    return [_page(entry, f"{base}/{url}") for entry, url in zip(entries, urls, strict=True)]


def _page(entry: Mapping[str, object], url: str) -> Response | None:
    reply = entry.get("response")
    status = reply.get("status") if isinstance(reply, dict) else None
    resource = entry.get("resource")
    if not isinstance(status, str) or not status.startswith("200"):
        return None
    if not isinstance(resource, dict):
        return None
    return Response(200, {"content-type": FHIR_JSON}, orjson.dumps(resource), url)
