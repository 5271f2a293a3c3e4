"""What the upstream offers (its ``metadata`` CapabilityStatement) and, per capability, what
the gateway does with it or instead of it (issue 14; docs/deploy.md §Upstream).

Invariants:
- ``metadata`` is read before anything else in a pass; a server without a readable
  CapabilityStatement is refused (``no_capability_statement``): the gateway does not guess
  what a system of record supports before writing notes into it. A server that answers it is
  unavailable (``TRANSIENT_STATUSES``: 5xx, 429, 408, after the connection's retries) fails
  the pass with ``upstream_unavailable`` (IT is not sent looking for the wrong fault).
- The statement is read by the same reader the laptop uses
  (``sync.protocol.fhir.capability``); Bulk Data ``Group/[id]/$export`` is read here from
  Group's operations (by name ``export`` or the Bulk Data IG's definition).
- ``decisions`` names every capability the gateway would use, whether it is offered, and the
  gateway's path either way; ``missing`` lists the stable codes of those not offered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sync.gateway.upstream.connection import TRANSIENT_STATUSES, UpstreamConnection
from sync.gateway.upstream.errors import UpstreamError
from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded
from sync.protocol.fhir.capability import ServerProfile, read_capability_statement
from sync.protocol.fhir.validate import InvalidResource
from sync.protocol.fhir.vocabulary import CLINICAL_TYPES, PATIENT

FHIR_JSON = "application/fhir+json"
IMPORTED_TYPES: tuple[str, ...] = (PATIENT, *CLINICAL_TYPES)
FILED_TYPES: tuple[str, ...] = ("Encounter", "Observation", "DocumentReference")
GROUP_EXPORT_DEFINITION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"


@dataclass(frozen=True)
class Decision:
    """One capability: its code, whether the upstream offers it, what the gateway does."""

    code: str
    offered: bool
    plan: str

    def to_json(self) -> dict[str, Any]:
        return {"capability": self.code, "offered": self.offered, "plan": self.plan}


@dataclass(frozen=True)
class UpstreamCapabilities:
    profile: ServerProfile
    group_export: bool

    def decisions(self) -> list[Decision]:
        p = self.profile
        out = [
            Decision(
                "bulk-export:Group",
                self.group_export,
                "Group-linked sites: initial load by Group/[id]/$export (NDJSON, streamed), "
                "hourly reconciliation by id lists; Organization-linked sites by search"
                if self.group_export
                else "initial load by paged search per type and patient (_lastUpdated keyset)",
            )
        ]
        for kind in IMPORTED_TYPES:
            offered = p.of(kind)
            if kind == PATIENT:
                plan = "Patients read by _id at every pass (membership decides who is in)"
            elif offered.history_type:
                plan = "changes and deletions read from _history?_since"
            elif self.group_export:
                plan = (
                    "changes by Group/[id]/$export?_since when every site is Group-linked, "
                    "else by _lastUpdated keyset; deletions by id-list reconciliation"
                )
            else:
                plan = (
                    "changes read by _lastUpdated keyset from the high-water mark "
                    "(with overlap), deletions by id-list reconciliation"
                )
            out.append(Decision(f"{kind}:history-type", offered.history_type, plan))
            if not offered.search_type:
                out.append(
                    Decision(f"{kind}:search-type", False, f"{kind} cannot be imported: held")
                )
        limit = p.max_transaction_entries
        out.append(
            Decision(
                "transaction",
                p.transaction,
                (
                    f"notes filed in transactions of at most {limit} entries"
                    if limit
                    else "notes filed in transactions, halved from 50 until the upstream accepts"
                )
                if p.transaction
                else "notes filed one request at a time, references resolved in order",
            )
        )
        for kind in FILED_TYPES:
            offered = p.of(kind)
            out.append(
                Decision(
                    f"{kind}:conditional-create",
                    offered.conditional_create,
                    "created with If-None-Exist on the Gatehouse client identifier"
                    if offered.conditional_create
                    else "searched by the client identifier before each create",
                )
            )
            out.append(
                Decision(
                    f"{kind}:if-match",
                    offered.versioned_update,
                    "edits sent with If-Match on the upstream version"
                    if offered.versioned_update
                    else "edits held for IT (no safe way to update without If-Match)",
                )
            )
        return out

    def missing(self) -> list[str]:
        return [d.code for d in self.decisions() if not d.offered]

    def to_json(self) -> dict[str, Any]:
        return {
            "software": self.profile.software,
            "fhir_version": self.profile.fhir_version,
            "max_transaction_entries": self.profile.max_transaction_entries,
            "decisions": [d.to_json() for d in self.decisions()],
            "missing": self.missing(),
        }


def _operations(items: Any) -> list[Mapping[str, Any]]:
    return [o for o in items if isinstance(o, dict)] if isinstance(items, list) else []


def _offers_group_export(statement: Mapping[str, Any]) -> bool:
    rests = statement.get("rest")
    for rest in rests if isinstance(rests, list) else []:
        if not isinstance(rest, dict) or rest.get("mode") != "server":
            continue
        for resource in rest.get("resource") or []:
            if not isinstance(resource, dict) or resource.get("type") != "Group":
                continue
            for operation in _operations(resource.get("operation")):
                if operation.get("name") == "export" or operation.get("definition") == (
                    GROUP_EXPORT_DEFINITION
                ):
                    return True
    return False


def read_capabilities(statement: Any) -> UpstreamCapabilities:
    """The capabilities of a parsed CapabilityStatement (``InvalidResource`` if it is not)."""
    profile = read_capability_statement(statement)
    return UpstreamCapabilities(profile=profile, group_export=_offers_group_export(statement))


def fetch_capabilities(connection: UpstreamConnection) -> UpstreamCapabilities:
    """GET ``[base]/metadata``: the upstream's capabilities, or ``UpstreamError``."""
    response = connection.get("metadata", headers={"Accept": FHIR_JSON})
    if response.status in TRANSIENT_STATUSES:  # down or overloaded (after the retries)
        raise UpstreamError("upstream_unavailable", f"HTTP {response.status}")
    if response.status != 200:
        raise UpstreamError("no_capability_statement", f"HTTP {response.status}")
    try:
        return read_capabilities(loads_bounded(response.body))
    except (BoundedJsonError, InvalidResource):
        raise UpstreamError("no_capability_statement", "not a CapabilityStatement") from None
