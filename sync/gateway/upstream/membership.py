"""Which upstream patients belong to which site (issue 14 §Site membership).

A site is linked (``gatehouse-gateway site link``) to an upstream FHIR ``Group`` (the Bulk Data
convention) or ``Organization``. Its patients are the Group's current members, or the Patients
whose ``managingOrganization`` is that Organization.

Invariants:
- A Group member with ``inactive: true``, or whose ``period`` has ended (or not yet begun), has
  left (is not a member). A member is ``Patient/<id>`` (relative, or absolute on any base);
  anything else is ignored.
- Each patient gets at most ONE site: a patient listed by two linked sites goes to the first by
  site code, and is counted in ``conflicts`` for ``upstream status``; never to both.
- A Group that cannot be read fails the pass (``unknown_group``/``search_refused``): an
  unreadable Group must never read as "everyone has left".
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from sync.gateway.store.upstream_tables import SiteLink
from sync.gateway.upstream.connection import UpstreamConnection
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.search import get_json, keyset_search
from sync.protocol.fhir.validate import parse_instant
from sync.protocol.fhir.vocabulary import ID_RE

_PATIENT_REF = re.compile(r"(?:.*/)?Patient/([A-Za-z0-9\-.]{1,64})")
_DATE = re.compile(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?")


@dataclass
class Membership:
    """Patient id → site, and what did not fit."""

    site_of: dict[str, str] = field(default_factory=dict)
    conflicts: int = 0

    def patients(self, site: str) -> set[str]:
        return {p for p, s in self.site_of.items() if s == site}


def _moment(value: Any, *, end: bool) -> dt.datetime | None:
    """A FHIR dateTime as an instant; a partial date is its first (start) or last (end)
    moment. None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return parse_instant(value)
    except ValueError:
        pass
    match = _DATE.fullmatch(value)
    if match is None:
        return None
    year, month, day = int(match[1]), int(match[2] or 1), int(match[3] or 1)
    try:
        start = dt.datetime(year, month, day, tzinfo=dt.UTC)
    except ValueError:
        return None
    if not end:
        return start
    if match[3]:
        return start + dt.timedelta(days=1)
    if match[2]:
        return (start + dt.timedelta(days=32)).replace(day=1)
    return start.replace(year=year + 1)


def current_member(member: Mapping[str, Any], now: dt.datetime) -> str | None:
    """The patient id of a Group member still in the group at ``now``, else None."""
    if member.get("inactive") is True:
        return None
    period = member.get("period")
    if isinstance(period, dict):
        start, ended = _moment(period.get("start"), end=False), _moment(period.get("end"), end=True)
        if (start is not None and start > now) or (ended is not None and ended <= now):
            return None
    entity = member.get("entity")
    reference = entity.get("reference") if isinstance(entity, dict) else None
    match = _PATIENT_REF.fullmatch(reference) if isinstance(reference, str) else None
    return match[1] if match else None


def group_members(connection: UpstreamConnection, group_id: str, now: dt.datetime) -> set[str]:
    if not ID_RE.fullmatch(group_id):
        raise UpstreamError("unknown_group", group_id)
    status, group = get_json(connection, f"Group/{quote(group_id)}")
    if status in (404, 410):
        raise UpstreamError("unknown_group", group_id)
    if status != 200 or not isinstance(group, dict) or group.get("resourceType") != "Group":
        raise UpstreamError("search_refused", f"Group HTTP {status}")
    members = group.get("member")
    found = {
        pid
        for member in (members if isinstance(members, list) else [])
        if isinstance(member, dict) and (pid := current_member(member, now)) is not None
    }
    return found


def organization_members(connection: UpstreamConnection, organization_id: str) -> set[str]:
    if not ID_RE.fullmatch(organization_id):
        raise UpstreamError("unknown_organization", organization_id)
    params = {"organization": f"Organization/{organization_id}"}
    return {
        str(patient["id"])
        for page in keyset_search(connection, "Patient", params)
        for patient in page
        if isinstance(patient.get("id"), str) and _organization(patient) == organization_id
    }


def _organization(patient: Mapping[str, Any]) -> str | None:
    org = patient.get("managingOrganization")
    reference = org.get("reference") if isinstance(org, dict) else None
    if not isinstance(reference, str) or "Organization/" not in reference:
        return None
    return reference.rsplit("Organization/", 1)[1]


def read_membership(
    connection: UpstreamConnection, links: Sequence[SiteLink], now: dt.datetime
) -> Membership:
    """Every linked site's current patients, each patient at one site."""
    result = Membership()
    for link in sorted(links, key=lambda x: x.site):
        members = (
            group_members(connection, link.ref, now)
            if link.kind == "group"
            else organization_members(connection, link.ref)
        )
        for patient_id in sorted(members):
            if patient_id in result.site_of:
                result.conflicts += 1
                continue
            result.site_of[patient_id] = link.site
    return result
