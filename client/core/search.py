"""Patient search: the FTS5 index and the query rules (docs/records.md, "Search rules").

Invariants:
- The index (``patient_index`` + ``patient_fts``, same rowid) holds exactly one row per stored
  Patient resource; ``records`` calls ``index_patient`` / ``unindex_patient`` in the same
  transaction as every change to a Patient, so search never sees a patient the store lacks.
- User text never reaches SQL or the FTS5 query language as syntax: SQL values are bound
  parameters, and every FTS5 term is reduced to letters and digits and quoted, so quotes,
  ``*``, ``NEAR``, ``AND``, ``OR``, ``NOT``, ``:`` and parentheses are plain text (or nothing).
- Names are folded the same way on both sides (Unicode NFKD, accents dropped, case-folded,
  ``ø``→``o`` and friends), apostrophes and hyphens make both the joined and the split forms
  searchable: ``O’Brien`` is found by ``obrien``, ``o'brien`` and ``brien``; ``Smith-Jones`` by
  ``smith``, ``jones``, ``smith-jones`` and ``smithjones``.
- ``in_scope`` is true only for a patient whose site is in the given scope; ``site_scope=None``
  means "no scope known" and marks every patient out of scope (fail closed).
- The FTS table runs with ``secure-delete``: an unindexed patient's terms leave the index's
  shadow tables at once, not at the next merge.
"""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from sync.protocol.fhir.vocabulary import (
    NHS_NUMBER_SYSTEM,
    PRISON_NUMBER_SYSTEM,
    SITE_REFERENCE_PREFIX,
)

MAX_QUERY_CHARS = 200  # longer input is cut: nobody types more to find a patient
MAX_QUERY_TERMS = 8  # more words than this add nothing but cost
MIN_NHS_PREFIX_DIGITS = 3
NO_NAME = "(name not recorded)"

# Letters that NFKD does not decompose into base letter + accent.
_SPECIAL_FOLDS = str.maketrans(
    {
        "ø": "o",
        "đ": "d",
        "ð": "d",
        "ł": "l",
        "ħ": "h",
        "ı": "i",
        "ŧ": "t",
        "æ": "ae",
        "œ": "oe",
        "þ": "th",
        "ß": "ss",
    }
)
_APOSTROPHES = "'\u2019\u2018\u02bc\u0060\u00b4\u2032"
_APOSTROPHE_RE = re.compile(f"[{_APOSTROPHES}]")
_SEPARATOR_RE = re.compile(r"[\W_]+")
_ISO_DATE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$")
_UK_DATE = re.compile(r"^(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4}|\d{2})$")
# The form every screen shows dates in (``19-Nov-1978``), month names in English, any case.
_SHOWN_DATE = re.compile(r"^(\d{1,2})[\-/ .]([A-Za-z]{3})[\-/ .](\d{4})$")
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_PRISON_PREFIX = re.compile(r"^[a-z]\d[a-z0-9]{0,5}$", re.IGNORECASE)


@dataclass(frozen=True)
class PatientSummary:
    """One search hit: enough to pick the right person, no clinical content."""

    id: str
    display_name: str
    birth_date: str | None
    nhs_number: str | None
    prison_number: str | None
    site: str | None
    in_scope: bool
    has_alerts: bool
    gender: str | None = None  # FHIR administrative gender; None: the record does not say


@dataclass(frozen=True)
class PatientFields:
    """The identifying fields of a Patient resource, as plain strings."""

    display_name: str
    name_parts: tuple[str, ...]
    birth_date: str | None
    gender: str | None
    nhs_number: str | None
    prison_number: str | None
    site: str | None
    banner_name: str = NO_NAME  # NHS CUI order: "FAMILY, Given (Title)"


def fold(text: str) -> str:
    """Case- and accent-insensitive form of ``text`` (the same on index and query side)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return stripped.casefold().translate(_SPECIAL_FOLDS)


def name_terms(part: str) -> list[str]:
    """Index terms of one name part: each segment plus the joined form (apostrophes, hyphens)."""
    folded = fold(part)
    terms: list[str] = []
    for word in folded.split():
        segments = [s for s in _SEPARATOR_RE.split(_APOSTROPHE_RE.sub(" ", word)) if s]
        terms.extend(segments)
        if len(segments) > 1:
            terms.append("".join(segments))
    return terms


def _query_term(word: str) -> str:
    """A query word reduced to letters and digits: ``o'brien`` and ``smith-jones`` join up."""
    return "".join(_SEPARATOR_RE.split(fold(word)))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _pick_name(names: Any) -> Mapping[str, Any] | None:
    if not isinstance(names, list):
        return None
    candidates = [n for n in names if isinstance(n, dict)]
    for use in ("official", "usual"):
        for name in candidates:
            if name.get("use") == use:
                return name
    return candidates[0] if candidates else None


def _given(name: Mapping[str, Any]) -> list[str]:
    given = name.get("given")
    return [g for g in given if _text(g)] if isinstance(given, list) else []


def _display_name(name: Mapping[str, Any] | None) -> str:
    if name is None:
        return NO_NAME
    family = _text(name.get("family"))
    given = " ".join(_given(name))
    if family and given:
        return f"{family}, {given}"
    return family or given or _text(name.get("text")) or NO_NAME


def _banner_name(name: Mapping[str, Any] | None) -> str:
    """The name as the NHS Common User Interface banner shows it: the family name in capitals,
    then the given names, then the title in brackets ("BOATENG, Wayne (Mr)")."""
    if name is None:
        return NO_NAME
    family = _text(name.get("family"))
    given = " ".join(_given(name))
    prefixes = name.get("prefix")
    title = " ".join(p for p in prefixes if _text(p)) if isinstance(prefixes, list) else ""
    shown = ", ".join(part for part in (family.upper() if family else "", given) if part)
    shown = shown or _text(name.get("text")) or NO_NAME
    return f"{shown} ({title})" if title else shown


def _identifier(resource: Mapping[str, Any], system: str) -> str | None:
    identifiers = resource.get("identifier")
    if not isinstance(identifiers, list):
        return None
    for ident in identifiers:
        if isinstance(ident, dict) and ident.get("system") == system:
            value = _text(ident.get("value"))
            if value:
                return value
    return None


def _birth_date(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value[:10]).isoformat()
    except ValueError:
        return None


def site_of(reference_holder: Any) -> str | None:
    """The site code of an ``{"reference": "Organization/<code>"}`` value, or None."""
    if isinstance(reference_holder, dict):
        ref = reference_holder.get("reference")
        if isinstance(ref, str) and ref.startswith(SITE_REFERENCE_PREFIX):
            return ref[len(SITE_REFERENCE_PREFIX) :] or None
    return None


def patient_fields(patient: Mapping[str, Any]) -> PatientFields:
    """Extract the identifying fields; wrong types in the resource count as absent."""
    parts: list[str] = []
    names = patient.get("name")
    for name in names if isinstance(names, list) else []:
        if isinstance(name, dict):
            parts.extend(_given(name))
            for key in ("family", "text"):
                if _text(name.get(key)):
                    parts.append(name[key])
    nhs = _identifier(patient, NHS_NUMBER_SYSTEM)
    nhs_digits = "".join(ch for ch in nhs if ch.isdigit()) if nhs else None
    prison = _identifier(patient, PRISON_NUMBER_SYSTEM)
    gender = patient.get("gender")
    return PatientFields(
        display_name=_display_name(_pick_name(names)),
        name_parts=tuple(parts),
        birth_date=_birth_date(patient.get("birthDate")),
        gender=gender if isinstance(gender, str) else None,
        nhs_number=nhs_digits or None,
        prison_number=prison.strip().upper() if prison else None,
        site=site_of(patient.get("managingOrganization")),
        banner_name=_banner_name(_pick_name(names)),
    )


def index_patient(
    conn: sqlite3.Connection, patient_id: str, patient: Mapping[str, Any], refreshed_at: str
) -> None:
    """Add or replace the patient's search row (caller's transaction; never commits)."""
    fields = patient_fields(patient)
    terms: list[str] = []
    for part in fields.name_parts:
        terms.extend(name_terms(part))
    if fields.nhs_number:
        terms.append(fields.nhs_number)
    if fields.prison_number:
        terms.append(fields.prison_number.lower())
    complete_at = unindex_patient(conn, patient_id)  # a new version keeps the mark (UI-5)
    # lastrowid, not RETURNING: RETURNING costs ~0.3 ms under cipher_memory_security.
    doc = conn.execute(
        "INSERT INTO patient_index (patient_id, display_name, sort_key, birth_date, nhs_number,"
        " prison_number, site, refreshed_at, gender, complete_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            patient_id,
            fields.display_name,
            fold(fields.display_name),
            fields.birth_date,
            fields.nhs_number,
            fields.prison_number,
            fields.site,
            refreshed_at,
            fields.gender,
            complete_at,
        ),
    ).lastrowid
    if doc is None:
        raise RuntimeError("an INSERT reported no rowid")
    conn.execute(
        "INSERT INTO patient_fts (rowid, terms) VALUES (?, ?)",
        (doc, " ".join(dict.fromkeys(terms))),
    )


def unindex_patient(conn: sqlite3.Connection, patient_id: str) -> str | None:
    """Remove the patient's search row and its FTS terms (caller's transaction); returns the
    row's ``complete_at`` (when the laptop last held the whole record), for a re-index."""
    row = conn.execute(
        "SELECT doc, complete_at FROM patient_index WHERE patient_id = ?", (patient_id,)
    ).fetchone()
    if row is None:
        return None
    conn.execute("DELETE FROM patient_fts WHERE rowid = ?", (row[0],))
    conn.execute("DELETE FROM patient_index WHERE doc = ?", (row[0],))
    return str(row[1]) if row[1] is not None else None


def parse_birth_date(word: str, today: date | None = None) -> str | None:
    """A date of birth as people type it → ISO: ``1984-03-07``; UK day first ``07/03/1984``,
    ``7/3/1984`` (also ``.`` or ``-``); the app's own form ``07-Mar-1984``; and a two-digit year
    ``07/03/84``, which is the most recent such year not after ``today`` (a birth is never in
    the future)."""
    if m := _ISO_DATE.match(word):
        y, mo, d = (int(g) for g in m.groups())
    elif m := _UK_DATE.match(word):
        d, mo, y = (int(g) for g in m.groups())
        if len(m.group(3)) == 2:
            return _two_digit_year(d, mo, y, today or date.today())
    elif (m := _SHOWN_DATE.match(word)) and m.group(2).lower() in _MONTHS:
        d, mo, y = int(m.group(1)), _MONTHS[m.group(2).lower()], int(m.group(3))
    else:
        return None
    try:
        return date(y, mo, d).isoformat()
    except ValueError:
        return None


def _two_digit_year(day: int, month: int, yy: int, today: date) -> str | None:
    try:
        born = date(2000 + yy, month, day)
        if born > today:
            born = date(1900 + yy, month, day)
    except ValueError:
        return None
    return born.isoformat()


@dataclass(frozen=True)
class _Query:
    kind: str  # "name" | "nhs" | "prison" | "none"
    match: str | None = None
    birth_date: str | None = None
    prefix: str | None = None


def parse_query(query: str) -> _Query:
    """Classify the user's text (see module docstring and docs/records.md)."""
    text = unicodedata.normalize("NFKC", query)[:MAX_QUERY_CHARS].strip()
    words = text.split()
    if not words:
        return _Query("none")
    if all(w.isdigit() and w.isascii() for w in words):
        digits = "".join(words)
        if MIN_NHS_PREFIX_DIGITS <= len(digits) <= 10:
            return _Query("nhs", prefix=digits)
        return _Query("none")
    if len(words) == 1 and _PRISON_PREFIX.match(words[0]) and words[0].isascii():
        return _Query("prison", prefix=words[0].upper())
    dob: str | None = None
    terms: list[str] = []
    for word in words:
        parsed = parse_birth_date(word)
        if parsed is not None:
            if dob is not None and dob != parsed:
                return _Query("none")
            dob = parsed
            continue
        term = _query_term(word)
        if term and term not in terms:
            terms.append(term)
    terms = terms[:MAX_QUERY_TERMS]
    if not terms and dob is None:
        return _Query("none")
    match = " ".join(f'"{t}"*' for t in terms) if terms else None
    return _Query("name", match=match, birth_date=dob)


_COLUMNS = (
    "SELECT p.patient_id, p.display_name, p.birth_date, p.nhs_number, p.prison_number, p.site,"
    " p.sort_key, EXISTS (SELECT 1 FROM resources r WHERE r.patient_id = p.patient_id"
    " AND r.type = 'Flag' AND r.active = 1), p.gender"
)
_FROM = {
    "fts": " FROM patient_fts JOIN patient_index p ON p.doc = patient_fts.rowid"
    " WHERE patient_fts MATCH :match AND (:dob IS NULL OR p.birth_date = :dob)",
    "dob": " FROM patient_index p WHERE p.birth_date = :dob",
    "nhs": " FROM patient_index p WHERE p.nhs_number >= :lo AND p.nhs_number < :hi",
    "prison": " FROM patient_index p WHERE p.prison_number >= :lo AND p.prison_number < :hi",
}
MAX_SCOPE_SITES = 64  # a device serves a handful of prisons; more is a policy error


def _scope_clause(in_scope: bool, sites: int) -> str:
    """The site filter, built from placeholders only (``:s0, :s1, …``): values stay bound.

    ``+p.site`` keeps the planner on the identifier or FTS path: filtering a whole site first
    cost 20-50x at 25k patients.
    """
    if sites == 0:
        return ""  # only asked for the out-of-scope pass: everyone is out of scope
    marks = ", ".join(f":s{i}" for i in range(sites))
    if in_scope:
        return f" AND +p.site IN ({marks})"
    return f" AND (+p.site IS NULL OR +p.site NOT IN ({marks}))"


def search_patients(
    conn: sqlite3.Connection,
    query: str,
    *,
    limit: int = 50,
    site_scope: Collection[str] | None,
) -> list[PatientSummary]:
    """Patients matching ``query``: in-scope ones first, each group sorted by name.

    When more patients match than ``limit``, the result is a subset: the UI should ask for a
    more precise query. Read-only; never writes.
    """
    parsed = parse_query(query)
    limit = int(limit)
    if parsed.kind == "none" or limit <= 0:
        return []
    if parsed.kind == "name":
        source = "fts" if parsed.match is not None else "dob"
    else:
        source = parsed.kind
    prefix = parsed.prefix or ""
    scope = sorted(set(site_scope or ()))[:MAX_SCOPE_SITES]
    params: dict[str, object] = {f"s{i}": site for i, site in enumerate(scope)}
    needed = {"fts": ("match", "dob"), "dob": ("dob",), "nhs": ("lo", "hi"), "prison": ("lo", "hi")}
    values = {
        "match": parsed.match,
        "dob": parsed.birth_date,
        "lo": prefix,
        "hi": prefix + "\uffff",
    }
    params.update({name: values[name] for name in needed[source]})
    results: list[PatientSummary] = []
    for in_scope in (True, False):
        remaining = limit - len(results)
        if remaining <= 0:
            break
        if in_scope and not scope:
            continue
        # A literal LIMIT (an int we made): a bound one costs ~0.3 ms per query under
        # cipher_memory_security.
        sql = f"{_COLUMNS}{_FROM[source]}{_scope_clause(in_scope, len(scope))} LIMIT {remaining}"
        rows = conn.execute(sql, params).fetchall()
        rows.sort(key=lambda r: (r[6], r[2] or "", r[0]))
        results.extend(_summary(row, in_scope) for row in rows)
    return results


def caseload(
    conn: sqlite3.Connection, *, limit: int, site_scope: Collection[str]
) -> list[PatientSummary]:
    """The in-scope patients on this device, by name (what the caseload shows before a search)."""
    scope = sorted(set(site_scope))[:MAX_SCOPE_SITES]
    if not scope or limit <= 0:
        return []
    params: dict[str, object] = {f"s{i}": site for i, site in enumerate(scope)}
    marks = ", ".join(f":s{i}" for i in range(len(scope)))
    sql = (
        f"{_COLUMNS} FROM patient_index p WHERE p.site IN ({marks})"
        f" ORDER BY p.sort_key, p.patient_id LIMIT {int(limit)}"
    )
    return [_summary(row, True) for row in conn.execute(sql, params).fetchall()]


def _summary(row: Iterable[Any], in_scope: bool) -> PatientSummary:
    pid, name, dob, nhs, prison, site, _sort, alerts, gender = row
    shown_gender = gender if isinstance(gender, str) else None
    return PatientSummary(pid, name, dob, nhs, prison, site, in_scope, bool(alerts), shown_gender)
