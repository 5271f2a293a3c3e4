"""A sync conflict in clinical words: whose record, what each version says, who wrote it, when.

Guarantees:
- What people read never holds a FHIR field path (``Observation.valueQuantity.value``), a
  resource id, a version id or a code system: each kind of record is described the way the
  chart describes it ("Consultation note", "Blood pressure 120/80 mmHg", "Heart rate 72 /min",
  then the note's text).
- Each version names its author (the practitioner's display name in the resource) or says
  "unknown author" plainly, and its time in UK local time (``humanize.format_moment``,
  ``05-Dec-2026 14:05``), or "time not recorded". Never guessed.
- ``rows`` line the two versions up side by side, one clinical item per row, and mark the rows
  that differ.
- The confirmation before a choice that discards someone's words says whose words go and
  that this cannot be undone (``confirmation``).
- Pure functions of their arguments (and, for ``describe_conflicts``, a read-only look-up of
  the patient's banner in the caller's connection). No Qt; text is plain, never markup.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from client.core.chart import BP_COMPONENTS, VITAL_KINDS, Banner
from client.core.conflicts import Conflict
from client.core.humanize import format_moment
from client.core.records import get, parse_fhir_datetime
from client.core.search import patient_fields

MAX_TEXT_CHARS: Final = 20_000  # of one note shown in the comparison
UNKNOWN_AUTHOR: Final = "unknown author"
NO_TIME: Final = "time not recorded"
GONE: Final = (
    "The gateway no longer holds this record for this site (it was deleted, or the patient "
    "moved to another site)."
)
KIND_WORDS: Final = {
    "DocumentReference": "Clinical note",
    "Observation": "Observation",
    "Encounter": "Consultation",
    "Condition": "Problem",
    "AllergyIntolerance": "Allergy",
    "Flag": "Alert",
    "MedicationStatement": "Medication",
    "MedicationRequest": "Medication",
    "Immunization": "Immunisation",
    "Procedure": "Procedure",
}
UNIT_WORDS: Final = {"Cel": "°C", "mm[Hg]": "mmHg", "kg/m2": "kg/m²", "beats/minute": "/min"}
_VITAL_LABEL = {code: label for label, codes in VITAL_KINDS.values() for code in codes}
_BP_LABEL = {"systolic": "Systolic", "diastolic": "Diastolic"}
# Fields naming who wrote a record, per type (a display name, or nothing).
_AUTHOR_FIELDS: Final = {
    "DocumentReference": ("author",),
    "Observation": ("performer",),
    "Encounter": ("participant",),
    "Condition": ("recorder", "asserter"),
    "AllergyIntolerance": ("recorder", "asserter"),
    "Flag": ("author",),
    "MedicationStatement": ("informationSource",),
    "MedicationRequest": ("requester", "recorder"),
}
# Fields giving when the clinical fact was recorded, per type, before meta.lastUpdated.
_TIME_FIELDS: Final = ("date", "effectiveDateTime", "recordedDate", "authoredOn", "issued")


@dataclass(frozen=True)
class Version:
    """One side of a conflict, as people read it."""

    present: bool  # False: the gateway no longer holds the record
    title: str  # "Consultation note", "Blood pressure"
    author: str  # a display name, or UNKNOWN_AUTHOR
    when: str  # "05-Dec-2026 14:05", or NO_TIME
    items: tuple[tuple[str, str], ...]  # (label, value) in clinical words

    def text(self) -> str:
        if not self.present:
            return GONE
        lines = [self.title, f"Written by {self.author}, {self.when}", ""]
        for label, value in self.items:
            lines.append(f"{label}:\n{value}" if "\n" in value else f"{label}: {value}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Row:
    label: str
    mine: str
    theirs: str

    @property
    def differs(self) -> bool:
        return self.mine != self.theirs


@dataclass(frozen=True)
class ConflictView:
    """A conflict ready to show: whose record, both versions, the rows side by side."""

    conflict: Conflict
    banner: Banner | None  # None: the patient's record is not on this laptop
    title: str
    mine: Version
    theirs: Version
    rows: tuple[Row, ...]

    @property
    def conflict_id(self) -> int:
        return self.conflict.id

    def summary(self) -> str:
        """One line for the list: what, and whose (no ids)."""
        who = self.banner.name if self.banner is not None else "a patient not on this laptop"
        return f"{self.title} · {who} · changed on the gateway {self.theirs.when}"


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _concept(value: Any) -> str | None:
    """A CodeableConcept in words: its text, else a coding's display (never a bare code)."""
    if not isinstance(value, Mapping):
        return None
    if text := _text(value.get("text")):
        return text
    codings = value.get("coding")
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, Mapping) and (display := _text(coding.get("display"))):
            return display
    return None


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return f"{value:g}"


def _quantity(quantity: Any) -> str | None:
    if not isinstance(quantity, Mapping):
        return None
    number = _number(quantity.get("value"))
    if number is None:
        return None
    unit = _text(quantity.get("unit")) or _text(quantity.get("code")) or ""
    unit = UNIT_WORDS.get(unit, unit)
    return f"{number} {unit}".strip()


def _codes(concept: Any) -> list[str]:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return [
        str(c.get("code"))
        for c in (codings if isinstance(codings, list) else [])
        if isinstance(c, Mapping)
    ]


def _observation(resource: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    codes = _codes(resource.get("code"))
    label = next((_VITAL_LABEL[c] for c in codes if c in _VITAL_LABEL), None)
    label = label or _concept(resource.get("code")) or "Observation"
    components = resource.get("component")
    parts: dict[str, str] = {}
    for component in components if isinstance(components, list) else []:
        if not isinstance(component, Mapping):
            continue
        kind = next(
            (BP_COMPONENTS[c] for c in _codes(component.get("code")) if c in BP_COMPONENTS), None
        )
        value = _quantity(component.get("valueQuantity"))
        if kind is not None and value is not None:
            parts[kind] = value
    if "systolic" in parts and "diastolic" in parts:
        systolic = parts["systolic"].split()[0]
        return label, [(label, f"{systolic}/{parts['diastolic']}")]
    items = [(_BP_LABEL.get(k, k), v) for k, v in parts.items()]
    value = _quantity(resource.get("valueQuantity")) or _text(resource.get("valueString"))
    value = value or _concept(resource.get("valueCodeableConcept"))
    if value is not None:
        items.insert(0, (label, value))
    if not items:
        items.append((label, "no value recorded"))
    return label, items


def _note_text(resource: Mapping[str, Any]) -> str | None:
    contents = resource.get("content")
    for content in contents if isinstance(contents, list) else []:
        attachment = content.get("attachment") if isinstance(content, Mapping) else None
        data = attachment.get("data") if isinstance(attachment, Mapping) else None
        if not isinstance(data, str):
            continue
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            return "(the note's text cannot be read)"
        return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "\n… (shortened)"
    return None


def _document(resource: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    title = (
        _text(resource.get("description"))
        or _concept(resource.get("type"))
        or KIND_WORDS["DocumentReference"]
    )
    text = _note_text(resource)
    return title, [("Note", text if text is not None else "no text recorded")]


def _generic(rtype: str, resource: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    kind = KIND_WORDS.get(rtype, "Record")
    items: list[tuple[str, str]] = []
    for label, key in (
        (kind, "code"),
        (kind, "medicationCodeableConcept"),
        (kind, "vaccineCode"),
        ("Type", "type"),
        ("Status", "clinicalStatus"),
        ("Severity", "severity"),
    ):
        value = resource.get(key)
        words = _concept(value[0] if isinstance(value, list) and value else value)
        if words is not None:
            items.append((label, words))
    status = _text(resource.get("status"))
    if status is not None and not any(label == "Status" for label, _ in items):
        items.append(("Status", status))
    notes = resource.get("note")
    for note in notes if isinstance(notes, list) else []:
        if isinstance(note, Mapping) and (words := _text(note.get("text"))):
            items.append(("Comment", words))
    return kind, items or [(kind, "no details recorded")]


def _author(rtype: str, resource: Mapping[str, Any]) -> str:
    for key in _AUTHOR_FIELDS.get(rtype, ("author", "recorder", "performer")):
        value = resource.get(key)
        for ref in value if isinstance(value, list) else [value]:
            if isinstance(ref, Mapping) and isinstance(ref.get("individual"), Mapping):
                ref = ref["individual"]
            if isinstance(ref, Mapping) and (name := _text(ref.get("display"))):
                return name
    return UNKNOWN_AUTHOR


def _moment(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    moment = parse_fhir_datetime(value)
    return moment if moment is not None and moment.tzinfo is not None else None


def _when(resource: Mapping[str, Any], changed_at: str | None) -> str:
    """When this version was written: the change's own time if known, else the record's."""
    meta = resource.get("meta")
    candidates = [changed_at, meta.get("lastUpdated") if isinstance(meta, Mapping) else None]
    candidates += [resource.get(key) for key in _TIME_FIELDS]
    for candidate in candidates:
        moment = _moment(candidate)
        if moment is not None:
            return format_moment(moment)
    return NO_TIME


def describe(resource: Mapping[str, Any] | None, *, changed_at: str | None = None) -> Version:
    """One version in clinical words (``None``: the gateway no longer holds the record)."""
    if resource is None:
        return Version(False, "No longer on the gateway", UNKNOWN_AUTHOR, NO_TIME, ())
    rtype = str(resource.get("resourceType", ""))
    if rtype == "Observation":
        title, items = _observation(resource)
    elif rtype == "DocumentReference":
        title, items = _document(resource)
    else:
        title, items = _generic(rtype, resource)
    return Version(True, title, _author(rtype, resource), _when(resource, changed_at), tuple(items))


def side_by_side(mine: Version, theirs: Version) -> tuple[Row, ...]:
    """One row per clinical item, in the order the items first appear; absent = ``""``."""
    labels: list[str] = []
    for label, _value in (*mine.items, *theirs.items):
        if label not in labels:
            labels.append(label)
    rows = [Row("Written by", mine.author, theirs.author if theirs.present else "")]
    rows.append(Row("When", mine.when, theirs.when if theirs.present else ""))
    mine_items, their_items = dict(mine.items), dict(theirs.items)
    rows += [Row(lb, mine_items.get(lb, ""), their_items.get(lb, "")) for lb in labels]
    return tuple(rows)


def banner_of(conn: sqlite3.Connection, patient_id: str | None, today: dt.date) -> Banner | None:
    """The patient's banner from the local store (read-only), or None when not held."""
    if patient_id is None:
        return None
    patient = get(conn, "Patient", patient_id)
    if patient is None:
        return None
    fields = patient_fields(patient)
    born = dt.date.fromisoformat(fields.birth_date) if fields.birth_date else None
    age = None
    if born is not None and born <= today:
        age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    return Banner(
        patient_id,
        fields.display_name,
        born,
        age,
        fields.gender,
        fields.nhs_number,
        fields.prison_number,
        fields.site,
        fields.banner_name,
    )


def view_of(conflict: Conflict, banner: Banner | None) -> ConflictView:
    mine = describe(conflict.local_body, changed_at=conflict.edited_at)
    theirs = describe(conflict.server_body)
    title = mine.title if mine.present else theirs.title
    return ConflictView(conflict, banner, title, mine, theirs, side_by_side(mine, theirs))


def describe_conflicts(
    conn: sqlite3.Connection, conflicts: Sequence[Conflict], today: dt.date
) -> list[ConflictView]:
    """Every conflict with its patient's banner (read-only, caller's connection)."""
    banners: dict[str | None, Banner | None] = {}
    views = []
    for conflict in conflicts:
        if conflict.patient_id not in banners:
            banners[conflict.patient_id] = banner_of(conn, conflict.patient_id, today)
        views.append(view_of(conflict, banners[conflict.patient_id]))
    return views


def confirmation(view: ConflictView, keep: str) -> tuple[str, str, str]:
    """(title, sentence, the discarding button's words) to ask before ``keep`` discards words.

    ``keep="theirs"`` discards the laptop's version; ``keep="mine"`` overwrites the gateway's."""
    what = view.title[:1].lower() + view.title[1:]
    if keep == "theirs":
        mine = view.mine
        return (
            "Discard your version?",
            f"Your version of this {what}, written by {mine.author} ({mine.when}), will be "
            "deleted from this laptop and replaced by the gateway's version, written by "
            f"{view.theirs.author} ({view.theirs.when}). This cannot be undone.",
            "&Discard my version",
        )
    if keep == "mine":
        theirs = view.theirs
        return (
            "Replace the gateway's version?",
            f"The gateway's version of this {what}, written by {theirs.author} "
            f"({theirs.when}), will be replaced by yours at the next sync. Their words will "
            "then be only in the record's history.",
            "&Replace theirs with mine",
        )
    raise ValueError("keep must be 'mine' or 'theirs'")
