"""What the gateway needs to know about a FHIR resource to store, scope and index it.

Invariants:
- Only the resource types in ``RESOURCE_TYPES`` are accepted; each clinical type names its
  patient in one known field (``subject`` or ``patient``) as ``Patient/<id>``; a Patient names
  its site in ``managingOrganization`` as ``Organization/<site>``; an Organization is a site and
  its ``id`` is the site code. A resource breaking these rules is refused with one
  ``ResourceError`` and a stable ``reason``, before anything is stored.
- Checks here are structural and deliberately minimal (shape, ids, references): the store
  applies them to every write, whoever writes. A resource pushed by a device is also validated
  in full by ``sync.protocol.fhir.validate`` before it reaches the store (``api.transaction``).
  Pure functions: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from sync.gateway.errors import GatewayError
from sync.protocol.fhir.bounded_json import json_depth
from sync.protocol.fhir.vocabulary import (
    CLINICAL_TYPES,
    ID_RE,
    ORGANIZATION,
    PATIENT,
    PATIENT_FIELD,
    SITE_CODE_RE,
    URN_UUID_RE,
)

RESOURCE_TYPES = (ORGANIZATION, PATIENT, *CLINICAL_TYPES)  # the order the gateway lists them
MAX_JSON_DEPTH = 32  # FHIR R4 resources we store nest < 12 deep; Bundle adds 3
MAX_IDENTIFIER_CHARS = 256


class ResourceError(GatewayError):
    """A resource is not acceptable; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, f"{reason}: {detail}" if detail else reason)
        self.detail = detail


def split_reference(reference: Any, expected_type: str, *, allow_urn: bool = False) -> str:
    """The id in a relative reference ``<expected_type>/<id>`` (or a bundle-local urn:uuid)."""
    if not isinstance(reference, str):
        raise ResourceError("bad_reference", expected_type)
    if allow_urn and URN_UUID_RE.fullmatch(reference):
        return reference
    rtype, _, rid = reference.partition("/")
    if rtype != expected_type or not ID_RE.fullmatch(rid):
        raise ResourceError("bad_reference", expected_type)
    return rid


def patient_reference_field(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The reference object naming the patient of a clinical resource (mutable, for rewrites)."""
    field = PATIENT_FIELD.get(str(resource.get("resourceType")))
    if field is None:
        return None
    ref = resource.get(field)
    if not isinstance(ref, dict) or "reference" not in ref:
        raise ResourceError("missing_patient_reference", field)
    return ref


def patient_id_of(resource: dict[str, Any], *, allow_urn: bool = False) -> str:
    """The patient a clinical resource belongs to."""
    ref = patient_reference_field(resource)
    if ref is None:
        raise ResourceError("not_clinical")
    return split_reference(ref["reference"], PATIENT, allow_urn=allow_urn)


def site_of_patient(resource: dict[str, Any]) -> str:
    """The site (Organization id) a Patient is managed by."""
    org = resource.get("managingOrganization")
    if not isinstance(org, dict):
        raise ResourceError("missing_managing_organization")
    site = split_reference(org.get("reference"), "Organization")
    if not SITE_CODE_RE.fullmatch(site):
        raise ResourceError("bad_site")
    return site


def identifiers(resource: dict[str, Any]) -> list[tuple[str, str]]:
    """(system, value) pairs of ``resource.identifier`` (validated shape)."""
    found: list[tuple[str, str]] = []
    raw = resource.get("identifier", [])
    if not isinstance(raw, list):
        raise ResourceError("bad_identifier")
    for item in raw:
        if not isinstance(item, dict):
            raise ResourceError("bad_identifier")
        system, value = item.get("system", ""), item.get("value")
        if not isinstance(system, str) or not isinstance(value, str):
            raise ResourceError("bad_identifier")
        if len(system) > MAX_IDENTIFIER_CHARS or len(value) > MAX_IDENTIFIER_CHARS:
            raise ResourceError("bad_identifier")
        found.append((system, value))
    return found


def _name_parts(resource: dict[str, Any]) -> Iterator[str]:
    names = resource.get("name", [])
    if not isinstance(names, list):
        raise ResourceError("bad_name")
    for name in names:
        if not isinstance(name, dict):
            raise ResourceError("bad_name")
        for key in ("family", "text"):
            if isinstance(name.get(key), str):
                yield name[key]
        for key in ("given", "prefix", "suffix"):
            parts = name.get(key, [])
            if isinstance(parts, list):
                yield from (p for p in parts if isinstance(p, str))


def normalise_name(text: str) -> str:
    return " ".join(text.casefold().split())


def name_text(resource: dict[str, Any]) -> str | None:
    """Space-delimited casefolded name words (`` smith o'neil jean-paul ``), or None."""
    if resource.get("resourceType") != PATIENT:
        return None
    words: list[str] = []
    for part in _name_parts(resource):
        words.extend(normalise_name(part).split())
    return " " + " ".join(words) + " " if words else None


def check_resource(
    resource: Any,
    expected_type: str | None = None,
    *,
    allow_urn: bool = False,
    depth: int | None = None,
) -> dict[str, Any]:
    """Structural checks every stored resource passes; returns it typed.

    ``allow_urn``: inside a transaction Bundle the patient may be a ``urn:uuid:`` of another
    entry; it is rewritten to ``Patient/<id>`` and checked again before storing.
    ``depth``: the resource's nesting depth when the caller has measured it already (a bounded
    parse of exactly this resource); None: measured here.
    """
    checked_parts(resource, expected_type, allow_urn=allow_urn, depth=depth)
    return cast(dict[str, Any], resource)  # checked_parts refuses anything but a dict


def checked_parts(
    resource: Any,
    expected_type: str | None = None,
    *,
    allow_urn: bool = False,
    depth: int | None = None,
) -> tuple[str | None, list[tuple[str, str]]]:
    """``check_resource`` (the same checks, the same errors), returning what they read: the
    patient id of a clinical resource (None for a Patient or an Organization) and the
    identifiers."""
    if not isinstance(resource, dict):
        raise ResourceError("not_a_resource")
    rtype = resource.get("resourceType")
    if rtype not in RESOURCE_TYPES:
        raise ResourceError("unsupported_resource_type")
    if expected_type is not None and rtype != expected_type:
        raise ResourceError("wrong_resource_type")
    rid = resource.get("id")
    if rid is not None and (not isinstance(rid, str) or not ID_RE.fullmatch(rid)):
        raise ResourceError("bad_id")
    meta = resource.get("meta", {})
    if not isinstance(meta, dict):
        raise ResourceError("bad_meta")
    if (json_depth(resource) if depth is None else depth) > MAX_JSON_DEPTH:
        raise ResourceError("too_deep")
    found = identifiers(resource)
    if rtype == ORGANIZATION:
        if rid is not None and not SITE_CODE_RE.fullmatch(rid):
            raise ResourceError("bad_site")
    elif rtype == PATIENT:
        site_of_patient(resource)
        name_text(resource)
    else:
        return patient_id_of(resource, allow_urn=allow_urn), found
    return None, found
