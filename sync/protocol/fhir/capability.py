"""What a FHIR R4 server says it offers (its ``metadata`` CapabilityStatement), read into the
few facts the laptop decides on (issue 13, docs/sync.md §Capabilities).

Invariants:
- Reading never raises on a strange statement: anything malformed or absent reads as "not
  offered" (the laptop then takes its safe path), and only a value that is not a
  CapabilityStatement at all raises ``InvalidResource``.
- ``ServerProfile.to_json`` holds capability codes, counts and the server's software name
  only (no patient data); it is what ``gatehouse device status --json`` shows IT.
- ``missing`` lists what the laptop would use but the server does not offer, as stable codes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sync.protocol.fhir.validate import InvalidResource

# A few servers advertise a transaction size limit in an extension; none is standard in R4.
MAX_TRANSACTION_EXTENSIONS = frozenset(
    {"https://gatehouse.example/fhir/StructureDefinition/max-transaction-entries"}
)
_MAX_TEXT = 200


@dataclass(frozen=True)
class TypeProfile:
    """One resource type as the server describes it."""

    history_type: bool = False
    search_type: bool = False
    conditional_create: bool = False
    versioned_update: bool = False  # If-Match honoured (versioning = versioned-update)
    search_params: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerProfile:
    """The server's capabilities, as far as its CapabilityStatement tells."""

    software: str = ""
    fhir_version: str = ""
    transaction: bool = False
    batch: bool = False
    max_transaction_entries: int | None = None
    types: Mapping[str, TypeProfile] = field(default_factory=dict)

    def of(self, resource_type: str) -> TypeProfile:
        return self.types.get(resource_type, TypeProfile())

    def missing(self, resource_types: Sequence[str]) -> list[str]:
        """What the laptop would use but the server does not offer (stable codes)."""
        gaps = [] if self.transaction else ["transaction"]
        for kind in resource_types:
            offered = self.of(kind)
            if not offered.history_type:
                gaps.append(f"{kind}:history-type")
            if not offered.search_type:
                gaps.append(f"{kind}:search-type")
        for kind in ("Encounter", "Observation", "DocumentReference"):
            if kind in resource_types:
                offered = self.of(kind)
                if not offered.conditional_create:
                    gaps.append(f"{kind}:conditional-create")
                if not offered.versioned_update:
                    gaps.append(f"{kind}:if-match")
        return gaps

    def to_json(self, resource_types: Sequence[str]) -> dict[str, Any]:
        return {
            "software": self.software,
            "fhir_version": self.fhir_version,
            "transaction": self.transaction,
            "batch": self.batch,
            "max_transaction_entries": self.max_transaction_entries,
            "types": {
                kind: {
                    "history_type": self.of(kind).history_type,
                    "search_type": self.of(kind).search_type,
                    "conditional_create": self.of(kind).conditional_create,
                    "if_match": self.of(kind).versioned_update,
                    "search_params": list(self.of(kind).search_params),
                }
                for kind in resource_types
            },
            "missing": self.missing(resource_types),
        }


def _text(value: Any) -> str:
    return value[:_MAX_TEXT] if isinstance(value, str) and value.isprintable() else ""


def _codes(items: Any) -> set[str]:
    if not isinstance(items, list):
        return set()
    return {i["code"] for i in items if isinstance(i, dict) and isinstance(i.get("code"), str)}


def _max_entries(rest: Mapping[str, Any]) -> int | None:
    for extension in rest.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") in MAX_TRANSACTION_EXTENSIONS:
            value = extension.get("valuePositiveInt")
            if type(value) is int and value > 0:
                return value
    return None


def read_capability_statement(statement: Any) -> ServerProfile:
    """The ``ServerProfile`` of a CapabilityStatement (the ``server`` mode rest entry)."""
    if not isinstance(statement, dict) or statement.get("resourceType") != "CapabilityStatement":
        raise InvalidResource("unknown_type", "$.resourceType")
    rests = statement.get("rest")
    rest = (
        next(
            (r for r in rests if isinstance(r, dict) and r.get("mode") == "server"),
            None,
        )
        if isinstance(rests, list)
        else None
    )
    if rest is None:
        return ServerProfile(_text(_software(statement)), _text(statement.get("fhirVersion")))
    system = _codes(rest.get("interaction"))
    types: dict[str, TypeProfile] = {}
    for entry in rest.get("resource") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            continue
        interactions = _codes(entry.get("interaction"))
        params = entry.get("searchParam")
        names = tuple(
            sorted(
                p["name"]
                for p in (params if isinstance(params, list) else [])
                if isinstance(p, dict) and isinstance(p.get("name"), str)
            )
        )
        types[entry["type"]] = TypeProfile(
            history_type="history-type" in interactions,
            search_type="search-type" in interactions,
            conditional_create=entry.get("conditionalCreate") is True,
            versioned_update=entry.get("versioning") == "versioned-update",
            search_params=names,
        )
    return ServerProfile(
        software=_text(_software(statement)),
        fhir_version=_text(statement.get("fhirVersion")),
        transaction="transaction" in system,
        batch="batch" in system,
        max_transaction_entries=_max_entries(rest),
        types=types,
    )


def _software(statement: Mapping[str, Any]) -> Any:
    software = statement.get("software")
    return software.get("name") if isinstance(software, dict) else None
