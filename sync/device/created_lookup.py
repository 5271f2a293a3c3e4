"""Exactly-once creates on a server WITHOUT conditional create (issue 13 item 1; docs/sync.md
§Capabilities): before a create is sent, look it up by its client identifier.

Why this is safe: a client identifier is made by this laptop for one outbox item and no one
else ever writes it, and one laptop pushes one Bundle at a time. So "does the server hold a
resource with this identifier?" can only change by this laptop's own earlier push — whose reply
was lost. A create found here is marked sent with the server's id and version (exactly as if
its reply had arrived); only the creates not found are sent.

Invariants:
- Only creates that carry a client identifier are looked up; updates never are.
- One search per resource type and ``LOOKUP_CHUNK`` identifiers (a token OR search,
  ``identifier=<system>|a,<system>|b``), so the cost is a few requests per push, not one per
  resource.
- A search the server refuses, or an answer that does not read, raises ``SyncError``: sending
  the creates blind could duplicate them, so the push stops (the work stays pending).
- A resource is matched only on the exact (system, value) pair; if the server somehow holds
  two copies the first listed is taken and nothing more is created.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from sync.device.outcome import FHIR_JSON, SyncError
from sync.device.replica import OutboxItem, SentItem
from sync.device.transport import Transport
from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded
from sync.protocol.fhir.bundle import bundle_entries
from sync.protocol.fhir.validate import InvalidResource
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM

LOOKUP_CHUNK = 20  # identifiers per search (URL length stays far below any server's limit)


def find_already_created(
    transport: Transport, fhir_base: str, items: Sequence[OutboxItem]
) -> list[SentItem]:
    """The creates among ``items`` that the server already holds, as ``SentItem``s."""
    by_type: dict[str, dict[str, OutboxItem]] = {}
    for item in items:
        if item.operation == "create" and item.client_identifier:
            by_type.setdefault(item.resource_type, {})[item.client_identifier] = item
    found: list[SentItem] = []
    for resource_type, wanted in by_type.items():
        values = list(wanted)
        for start in range(0, len(values), LOOKUP_CHUNK):
            chunk = values[start : start + LOOKUP_CHUNK]
            for value, resource in _search(transport, fhir_base, resource_type, chunk).items():
                found.append(_sent(wanted[value], resource))
    return found


def _search(
    transport: Transport, fhir_base: str, resource_type: str, values: Sequence[str]
) -> dict[str, Mapping[str, Any]]:
    query = urlencode(
        {
            "identifier": ",".join(f"{CLIENT_ID_SYSTEM}|{_escaped(v)}" for v in values),
            "_count": str(len(values) * 2),
        }
    )
    response = transport.get(
        f"{fhir_base.rstrip('/')}/{resource_type}?{query}", headers={"Accept": FHIR_JSON}
    )
    if response.status != 200:
        raise SyncError(f"http_{response.status}", "the server refused a lookup before a push")
    try:
        entries = bundle_entries(loads_bounded(response.body), "searchset")
    except (BoundedJsonError, InvalidResource) as error:
        raise SyncError("bad_response", "the server's lookup answer is malformed") from error
    wanted = set(values)
    held: dict[str, Mapping[str, Any]] = {}
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            continue
        for value in _client_ids(resource):
            if value in wanted and value not in held and isinstance(resource.get("id"), str):
                held[value] = resource
    return held


def _client_ids(resource: Mapping[str, Any]) -> list[str]:
    identifiers = resource.get("identifier")
    if not isinstance(identifiers, list):
        return []
    return [
        i["value"]
        for i in identifiers
        if isinstance(i, dict)
        and i.get("system") == CLIENT_ID_SYSTEM
        and isinstance(i.get("value"), str)
    ]


def _sent(item: OutboxItem, resource: Mapping[str, Any]) -> SentItem:
    meta = resource.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    version = meta.get("versionId")
    stamp = meta.get("lastUpdated")
    return SentItem(
        item.seq,
        str(resource["id"]),
        version if isinstance(version, str) and version else "1",
        stamp if isinstance(stamp, str) and stamp else None,
    )


def _escaped(value: str) -> str:
    """FHIR search escaping for a token value (``,``, ``|``, ``$`` and ``\\``)."""
    for char in ("\\", ",", "|", "$"):
        value = value.replace(char, "\\" + char)
    return value
