"""A clinical resource checked and serialised ahead of its write, less what only the write
knows (its version and ``lastUpdated`` here): the import prepares these on a second core, so
the writing thread neither parses, checks nor serialises them (issue 14's import).

Invariants:
- ``serialise`` applies exactly ``resources.check_resource`` (same ``ResourceError``) and
  keeps everything the resource holds: ``body(rid, version, stamp)`` parses to the very value
  the store writes for the resource with that id, ``meta.versionId`` and ``meta.lastUpdated``
  (the store's ``put`` and ``put_many`` write either form, one same row).
- Only clinical types (a resource naming its patient) are serialised: a Patient's site is set
  by the writer, an Organization is a site.
- ``body`` only splices values that need no escaping in JSON: a resource type of
  ``RESOURCE_TYPES``, an id matching ``ID_RE``, a whole version number, an ISO 8601 stamp.
- Pure functions, plain values (a tuple crosses a process boundary cheaply).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from sync.gateway.store import resources as res
from sync.protocol.fhir.vocabulary import CLINICAL_TYPES, ID_RE

_STAMPED = ("versionId", "lastUpdated")
_SPLICED = ("resourceType", "id", "meta")


class Serialised(NamedTuple):
    """One checked clinical resource: its type, patient and identifiers, and its JSON members
    (``meta_members``: meta's own, less version and stamp; ``members``: the rest, less type,
    id and meta), each the inside of a JSON object (no braces; empty: none)."""

    rtype: str
    patient: str
    identifiers: tuple[tuple[str, str], ...]
    meta_members: bytes
    members: bytes

    def body(self, rid: str, version_id: int, stamp: str) -> bytes:
        """The stored JSON of the resource as ``rid``, version ``version_id``, ``stamp``."""
        if not ID_RE.fullmatch(rid):
            raise res.ResourceError("bad_id")
        meta = b'"versionId":"%d","lastUpdated":"%s"' % (version_id, stamp.encode("ascii"))
        if self.meta_members:
            meta += b"," + self.meta_members
        head = b'{"resourceType":"%s","id":"%s","meta":{%s}' % (
            self.rtype.encode("ascii"),
            rid.encode("ascii"),
            meta,
        )
        return head + (b"," + self.members if self.members else b"") + b"}"


def serialise(resource: dict[str, Any], depth: int | None = None) -> Serialised | None:
    """``resource`` checked and serialised, or None when it is not a clinical resource with an
    id (the caller writes it as a dict). Raises ``ResourceError`` as ``check_resource`` does.
    ``depth``: as for ``check_resource``."""
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if rtype not in CLINICAL_TYPES or not isinstance(rid, str):
        return None
    patient, identifiers = res.checked_parts(resource, rtype, depth=depth)
    assert patient is not None  # a clinical type's check reads its patient
    meta = dict(resource.get("meta", {}))
    rest = dict(resource)
    for key in _STAMPED:
        meta.pop(key, None)
    for key in _SPLICED:
        rest.pop(key, None)
    return Serialised(
        rtype, patient, tuple(identifiers), orjson.dumps(meta)[1:-1], orjson.dumps(rest)[1:-1]
    )
