"""A note's filing state in the health record, as both ends read it from the resource itself.

The gateway files every note a laptop writes into the upstream record system (issue 14). When
filing succeeds, or the upstream refuses the note, the gateway writes a new version of its own
copy carrying one ``meta.tag`` of ``FILING_SYSTEM`` (``filed`` or ``held``; a held note also
carries one tag of ``FILING_REASON_SYSTEM`` whose code is the gateway's reason code). When the
health record changed a note while a laptop's edit of it was on its way up (an upstream 412),
the health record's version comes down tagged ``conflict``, with one tag of
``FILING_VERSION_SYSTEM`` naming the gateway version of the edit that was not filed: the laptop
that wrote it opens a conflict in its existing conflict flow. That
version reaches laptops through ``_history`` like any change: no protocol change, and a data
plane that never files (a plain FHIR server) simply never sets the tag.

Invariants:
- Only the gateway sets these tags. A laptop never sends them (``without_filing_tags`` before
  an edit goes on the wire), and the gateway strips any a laptop sends before storing.
- A version whose only difference from the one before is these tags is a *filing stamp*: not
  an edit (the gateway accepts a laptop's ``ifMatch`` on the version it stamps).
- Pure functions of a resource: no I/O, no clock. Reason codes are codes, never record content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

FILING_SYSTEM: Final = "https://gatehouse.example/fhir/filing"
FILING_REASON_SYSTEM: Final = "https://gatehouse.example/fhir/filing-reason"
FILING_VERSION_SYSTEM: Final = "https://gatehouse.example/fhir/filing-version"
FILED: Final = "filed"
HELD: Final = "held"
CONFLICT: Final = "conflict"
_DISPLAY: Final = {
    FILED: "Filed in the health record",
    HELD: "Held at the gateway",
    CONFLICT: "Changed in the health record while a laptop edit was on its way",
}
_SYSTEMS: Final = frozenset({FILING_SYSTEM, FILING_REASON_SYSTEM, FILING_VERSION_SYSTEM})

FilingCode = Literal["filed", "held", "conflict"]


@dataclass(frozen=True)
class FilingTag:
    """What the gateway said about the note's filing: ``filed``; ``held`` with a reason code;
    or ``conflict``: this version is the health record's, changed there while a laptop's edit
    (the gateway's version ``version``) was on its way up, and that edit was not filed."""

    code: FilingCode
    reason: str | None = None
    version: str | None = None


def _tags(resource: Mapping[str, Any]) -> list[Any]:
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, Mapping) else None
    return tags if isinstance(tags, list) else []


def _is_filing(tag: Any) -> bool:
    return isinstance(tag, Mapping) and tag.get("system") in _SYSTEMS


def filing_tag(resource: Mapping[str, Any]) -> FilingTag | None:
    """The filing tag of ``resource`` (None: never stamped, or a shape we do not know)."""
    found: dict[str, str] = {}
    for tag in _tags(resource):
        if _is_filing(tag) and isinstance(tag.get("code"), str):
            found[tag["system"]] = tag["code"]
    code = found.get(FILING_SYSTEM)
    if code == FILED:
        return FilingTag(FILED)
    if code == HELD:
        return FilingTag(HELD, found.get(FILING_REASON_SYSTEM))
    if code == CONFLICT:
        return FilingTag(CONFLICT, version=found.get(FILING_VERSION_SYSTEM))
    return None


def without_filing_tags(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``resource`` without the gateway's filing tags (an empty tag list and an empty
    ``meta`` are removed too)."""
    body = dict(resource)
    meta = body.get("meta")
    if not isinstance(meta, Mapping) or not any(_is_filing(t) for t in _tags(body)):
        return body
    meta = dict(meta)
    kept = [t for t in _tags(body) if not _is_filing(t)]
    if kept:
        meta["tag"] = kept
    else:
        meta.pop("tag", None)
    if meta:
        body["meta"] = meta
    else:
        body.pop("meta")
    return body


def with_filing_tag(resource: Mapping[str, Any], tag: FilingTag) -> dict[str, Any]:
    """A copy of ``resource`` carrying ``tag`` (and no other filing tag)."""
    body = without_filing_tags(resource)
    meta = dict(body.get("meta") or {})
    tags = list(meta.get("tag") or [])
    tags.append({"system": FILING_SYSTEM, "code": tag.code, "display": _DISPLAY[tag.code]})
    if tag.code == HELD and tag.reason:
        tags.append({"system": FILING_REASON_SYSTEM, "code": tag.reason[:64]})
    if tag.code == CONFLICT and tag.version:
        tags.append({"system": FILING_VERSION_SYSTEM, "code": tag.version[:64]})
    meta["tag"] = tags
    body["meta"] = meta
    return body
