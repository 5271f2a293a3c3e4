"""The auditor's question "who opened patient X, and when": a patient and a date range.

Guarantees:
- A patient is named the way people know them: a name, a whole NHS number (10 digits, with or
  without spaces, ``943 476 5919``), a date of birth in any form the caseload search accepts
  (``19-Nov-1978``, ``19/11/78``, ``19/11/1978``, ``1978-11-19``; parsed by
  ``client.core.search``), a prison number, or a patient id. It resolves to patient ids through
  the vault's patient index (read-only; the caller audits the search it serves). A patient
  whose record has left this laptop is still found by id when the entries name it.
- A part of an NHS number is refused (``AuditSearchError``), never treated as a prefix: an
  auditor's answer must be about one person, not about whoever shares the first digits.
- Dates are UK local days (Europe/London), both ends inclusive, as the auditor sees them on
  the screen; entries are stored in UTC and converted before comparing.
- The gateway filters by UTC day only, so it is asked for one day more on each side
  (``gateway_days``) and the answer is filtered again here with the same rule.
- ``search_local`` (behind ``Session.audit_search``) is for auditors and admins only (a refusal
  is audited ``denied``), reads the chain, resolves the patient and appends ONE ``audit_query``
  entry (``where: laptop``, the patient id when exactly one, the days, the count) in the same
  transaction, before anything is returned. A refused patient text writes nothing.
- Apart from that, pure functions of their arguments, no Qt; nothing else here writes.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from client.core.access import ADMIN, AUDITOR
from client.core.errors import UserFacingError
from client.core.humanize import DISPLAY_ZONE
from client.core.search import parse_birth_date, search_patients
from sync.protocol.audit.entry import AuditEntry

if TYPE_CHECKING:
    from client.core.session import Session

MAX_PATIENT_MATCHES: Final = 50  # a name shared by more people than this needs narrowing
NHS_DIGITS: Final = 10
_HYPHENED_NHS: Final = re.compile(r"\d{3}-\d{3}-\d{4}", re.ASCII)


class AuditSearchError(UserFacingError):
    """The patient or dates typed cannot give a sure answer; ``reason`` is stable."""


@dataclass(frozen=True)
class AuditFilter:
    """What the auditor asked: ``patient_ids`` None = any patient; days are UK local days."""

    patient_ids: frozenset[str] | None = None
    since: dt.date | None = None
    until: dt.date | None = None

    def __post_init__(self) -> None:
        if self.since and self.until and self.since > self.until:
            raise AuditSearchError("dates_reversed", "The 'To' date is before the 'From' date.")


@dataclass(frozen=True)
class AuditSearchResult:
    entries: list[AuditEntry]  # the matching entries, oldest first
    patient_ids: frozenset[str] | None  # who the patient text resolved to (None: any)


def local_day(timestamp: str) -> dt.date | None:
    """The UK local day of a stored ISO 8601 timestamp (None if it is not one)."""
    try:
        moment = dt.datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.astimezone(DISPLAY_ZONE).date()


def matches(entry: AuditEntry, wanted: AuditFilter) -> bool:
    if wanted.patient_ids is not None and entry.patient_id not in wanted.patient_ids:
        return False
    if wanted.since is None and wanted.until is None:
        return True
    day = local_day(entry.ts)
    if day is None:
        return False
    return (wanted.since is None or day >= wanted.since) and (
        wanted.until is None or day <= wanted.until
    )


def filter_entries(entries: Iterable[AuditEntry], wanted: AuditFilter) -> list[AuditEntry]:
    return [e for e in entries if matches(e, wanted)]


def gateway_days(
    since: dt.date | None, until: dt.date | None
) -> tuple[dt.date | None, dt.date | None]:
    """UTC days to ask the gateway for so that every UK local day asked is covered."""
    one = dt.timedelta(days=1)
    return (None if since is None else since - one, None if until is None else until + one)


def _nhs_digits(text: str) -> str | None:
    """The digits of a text made only of digits and spaces, or ``943-476-5919``; else None
    (``1978-11-19`` is a date, not a number)."""
    if _HYPHENED_NHS.fullmatch(text):
        return text.replace("-", "")
    compact = text.replace(" ", "")
    return compact if compact.isdigit() and compact.isascii() else None


def _ids(rows: Sequence[tuple[object, ...]]) -> set[str]:
    return {str(r[0]) for r in rows}


def find_patient_ids(
    conn: sqlite3.Connection, text: str, *, known_ids: Collection[str] = ()
) -> frozenset[str]:
    """Patient ids for what the auditor typed (see the module's guarantees). Read-only.

    ``known_ids`` are ids the audit entries name (a patient purged from this laptop is
    found by id). ``AuditSearchError`` for part of an NHS number or too many matches."""
    typed = text.strip()
    if not typed:
        raise AuditSearchError("patient_empty", "Type a name, NHS number or date of birth.")
    found: set[str] = set()
    if typed in known_ids:
        found.add(typed)
    found |= _ids(
        conn.execute(
            "SELECT patient_id FROM patient_index WHERE patient_id = ?", (typed,)
        ).fetchall()
    )
    digits = _nhs_digits(typed)
    if digits is not None:
        if len(digits) != NHS_DIGITS and not found:
            raise AuditSearchError(
                "nhs_incomplete",
                "Type the whole NHS number (10 digits, for example 943 476 5919).",
            )
        found |= _ids(
            conn.execute(
                "SELECT patient_id FROM patient_index WHERE nhs_number = ?", (digits,)
            ).fetchall()
        )
        return frozenset(found)
    born = parse_birth_date(typed)
    if born is not None:
        found |= _ids(
            conn.execute(
                "SELECT patient_id FROM patient_index WHERE birth_date = ?", (born,)
            ).fetchall()
        )
    else:
        hits = search_patients(conn, typed, limit=MAX_PATIENT_MATCHES + 1, site_scope=None)
        found |= {hit.id for hit in hits}
    if len(found) > MAX_PATIENT_MATCHES:
        raise AuditSearchError(
            "too_many_patients",
            f"More than {MAX_PATIENT_MATCHES} patients match. Add the date of birth or "
            "type the NHS number.",
        )
    return frozenset(found)


def describe(wanted: AuditFilter, where: str) -> dict[str, Any]:
    """The search for its audit entry's ``detail``: codes, days and counts, no patient text."""
    detail: dict[str, Any] = {"where": where}
    if wanted.patient_ids is not None:
        detail["patients"] = len(wanted.patient_ids)
    if wanted.since is not None:
        detail["since"] = wanted.since.isoformat()
    if wanted.until is not None:
        detail["until"] = wanted.until.isoformat()
    return detail


def only_patient(wanted: AuditFilter) -> str | None:
    """The patient id for the entry's ``patient_id`` when the search named exactly one."""
    ids = wanted.patient_ids
    return next(iter(ids)) if ids is not None and len(ids) == 1 else None


def resolve_patients(session: Session, text: str) -> frozenset[str]:
    """Patient ids for ``text`` (auditors and admins). Not audited on its own: the search it
    serves is (``audit_online.query_gateway``)."""
    session._require_role((AUDITOR, ADMIN), "find patients in the audit log", "audit_query")
    with session._act() as conn:
        return find_patient_ids(conn, text)


def search_local(
    session: Session, patient_text: str, since: dt.date | None, until: dt.date | None
) -> AuditSearchResult:
    """This laptop's entries about the patient (any, if ``patient_text`` is blank) between the
    UK local days ``since`` and ``until``; audited as one ``audit_query``."""
    session._require_role((AUDITOR, ADMIN), "search the audit log", "audit_query")
    AuditFilter(None, since, until)  # refuse reversed dates before reading anything
    with session._act() as conn:
        entries = session.audit_log.entries(conn, 0)
        ids: frozenset[str] | None = None
        if patient_text.strip():
            known = {e.patient_id for e in entries if e.patient_id}
            ids = find_patient_ids(conn, patient_text, known_ids=known)
        wanted = AuditFilter(ids, since, until)
        found = filter_entries(entries, wanted)
        session._append(
            conn,
            "audit_query",
            patient_id=only_patient(wanted),
            detail=describe(wanted, "laptop") | {"results": len(found)},
        )
    return AuditSearchResult(found, ids)
