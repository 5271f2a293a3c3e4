"""Strict validation of inbound FHIR R4 resources (the readers built on it: ``read.py``).

Invariants guaranteed by :func:`validate_resource` for a resource it returns:

- ``resourceType`` is one the client stores (:data:`STORED_TYPES`) or ``Organization``.
- ``id`` and ``meta.versionId`` match the FHIR id pattern ``[A-Za-z0-9-.]{1,64}`` and are not
  made only of dots nor contain ``..``; ``meta.lastUpdated`` is a valid instant with a zone.
  (For a create sent by a device, ``as_create=True``, id and meta may be absent.)
- Every field the client reads has the right JSON type (a string is a string, a list is a
  list, a number is a number and not a boolean), lies within its length bound, and dates,
  date-times and instants are real calendar values.
- Every clinical resource belongs to exactly one patient: ``subject`` (``patient`` for
  AllergyIntolerance) is a relative reference ``Patient/<id>``. References are relative
  ``Type/id`` only: no absolute URLs, no ``..``, no query, no fragment (``urn:uuid:`` is
  accepted only in a create, for entries of the same transaction).
- Names and identifiers hold no control characters other than ``\\n`` and ``\\t``, nor
  bidirectional overrides (which can make a name read as another). Markup such as ``<b>`` is
  **kept literally**: showing it as plain text is the UI's job (UI-1).
- NHS numbers pass Modulus 11; prison numbers have the UK form ``A1234BC``.
- A note (DocumentReference) carries base64 ``data`` that decodes to at most 1 MiB, and to
  valid UTF-8 when its content type is ``text/plain``.
- Unknown fields and extensions are tolerated and kept untouched: the input object is
  returned as it is, never rewritten.

Every failure raises :class:`InvalidResource` with a stable ``reason`` and a JSON-path-like
``path`` (``Patient.name[0].family``). Messages never quote values: they may be patient data.
Deep nesting, huge documents and duplicate keys are refused earlier, by
:mod:`sync.protocol.fhir.bounded_json`.

Why this module stays one file (about 520 lines): its primitives (``_str``, ``_code``,
``_reference``…) are private on purpose, so no other module can assemble a laxer check from
them; the type tables and the primitives change together whenever a field rule changes.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, NoReturn

from sync.protocol.errors import ProtocolError
from sync.protocol.fhir.read import is_valid_id, nhs_check_digit_ok
from sync.protocol.fhir.vocabulary import (
    KNOWN_TYPES,
    NHS_NUMBER_SYSTEM,
    PATIENT_FIELD,
    PRISON_NUMBER_SYSTEM,
    URN_UUID_RE,
)

# Length bounds, in characters (notes: decoded bytes).
MAX_NAME_CHARS = 200  # a name part, an identifier value, a code
MAX_TEXT_CHARS = 2_000  # a display, a coded text, a dosage or description
MAX_URI_CHARS = 1_024  # a system URL
MAX_LIST_ITEMS = 1_000  # names, identifiers, codings, components... of one resource
MAX_NOTE_BYTES = 1024 * 1024  # a progress note's decoded text

_TYPE_RE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_CODE_RE = re.compile(r"[^\s]+(?: [^\s]+)*")
_DATE_RE = re.compile(r"\d{4}(?:-\d{2}(?:-\d{2})?)?")
_DATETIME_RE = re.compile(
    r"\d{4}(?:-\d{2}(?:-\d{2}(?:T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2}))?)?)?"
)
_INSTANT_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})")
# C0 and C1 controls except \t and \n, DEL, and bidirectional embeddings/overrides/isolates.
_BAD_CHARS_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# The same for free text, which may also hold \r (line ends from other systems).
_BAD_TEXT_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_PRISON_NUMBER_RE = re.compile(r"[A-Z]\d{4}[A-Z]{2}")
_B64_RE = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


class InvalidResource(ProtocolError, ValueError):
    """A resource fails strict validation. ``reason`` is stable; ``path`` locates the field."""

    REASONS = frozenset(
        {
            # validate.py
            "wrong_type", "missing", "empty", "empty_list", "too_long", "too_many",
            "control_char", "bad_code", "bad_date", "bad_instant", "bad_id", "bad_reference",
            "unknown_type", "bad_nhs_number", "bad_prison_number", "bad_base64", "bad_text",
            "too_deep",
            # bundle.py
            "unexpected_type", "bad_url", "duplicate_next", "bad_status",
        }
    )  # fmt: skip

    def __init__(self, reason: str, path: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(reason, f"at {path}")
        self.path = path


def _fail(reason: str, path: str) -> NoReturn:
    raise InvalidResource(reason, path)


# --- primitives -----------------------------------------------------------------------------


def _obj(value: Any, path: str) -> dict[str, Any]:
    if type(value) is not dict:
        _fail("wrong_type", path)
    return value


def _list(value: Any, path: str) -> list[Any]:
    if type(value) is not list:
        _fail("wrong_type", path)
    if not value:
        _fail("empty_list", path)
    if len(value) > MAX_LIST_ITEMS:
        _fail("too_many", path)
    return value


def _str(value: Any, path: str, limit: int = MAX_TEXT_CHARS) -> str:
    if type(value) is not str:
        _fail("wrong_type", path)
    if not value:
        _fail("empty", path)
    if len(value) > limit:
        _fail("too_long", path)
    # isprintable() is False for every character the pattern names (Cc and Cf), so the
    # common, printable case skips the regex.
    if not value.isprintable() and _BAD_TEXT_RE.search(value):
        _fail("control_char", path)
    return value


def _name_str(value: Any, path: str) -> str:
    text = _str(value, path, MAX_NAME_CHARS)
    if not text.isprintable() and _BAD_CHARS_RE.search(text):
        _fail("control_char", path)
    return text


def _code(value: Any, path: str, allowed: frozenset[str] | None = None) -> str:
    text = _str(value, path, MAX_NAME_CHARS)
    if not _CODE_RE.fullmatch(text):
        _fail("bad_code", path)
    if allowed is not None and text not in allowed:
        _fail("bad_code", path)
    return text


def _bool(value: Any, path: str) -> None:
    if type(value) is not bool:
        _fail("wrong_type", path)


def _number(value: Any, path: str) -> None:
    if type(value) is not int and type(value) is not float:
        _fail("wrong_type", path)


def _date(value: Any, path: str) -> None:
    text = _str(value, path, 10)
    if not _DATE_RE.fullmatch(text):
        _fail("bad_date", path)
    _calendar(text, path)


def _calendar(text: str, path: str) -> None:
    year, month, day = text[:4], text[5:7] or "01", text[8:10] or "01"
    try:
        date(int(year), int(month), int(day))
    except ValueError:
        _fail("bad_date", path)


def _datetime(value: Any, path: str) -> None:
    text = _str(value, path, 40)
    if not _DATETIME_RE.fullmatch(text):
        _fail("bad_date", path)
    if len(text) <= 10:
        _calendar(text, path)
    else:
        _parse_instant(text, path)


def _parse_instant(text: str, path: str) -> datetime:
    seconds, _, rest = text.partition(".")
    if rest:  # Python parses at most microseconds: keep 6 digits and the zone.
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{seconds}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        _fail("bad_date", path)
    if parsed.tzinfo is None:  # pragma: no cover - the patterns require a zone
        _fail("bad_date", path)
    return parsed


def _instant(value: Any, path: str) -> None:
    text = _str(value, path, 40)
    if not _INSTANT_RE.fullmatch(text):
        _fail("bad_instant", path)
    _parse_instant(text, path)


def parse_instant(text: str) -> datetime:
    """Parse a FHIR instant to an aware datetime, or raise InvalidResource(bad_instant)."""
    _instant(text, "instant")
    return _parse_instant(text, "instant")


def _id(value: Any, path: str) -> str:
    if type(value) is not str:
        _fail("wrong_type", path)
    if not is_valid_id(value):
        _fail("bad_id", path)
    return value


# --- data types ------------------------------------------------------------------------------


def _reference(
    value: Any, path: str, target: str | None, *, required: bool, as_create: bool
) -> None:
    ref = _obj(value, path)
    if "display" in ref:
        _str(ref["display"], f"{path}.display")
    if "reference" not in ref:
        if required or "display" not in ref:
            _fail("missing", f"{path}.reference")
        return
    text = _str(ref["reference"], f"{path}.reference", 200)
    if as_create and URN_UUID_RE.fullmatch(text):
        return
    kind, slash, ident = text.partition("/")
    if not slash or not _TYPE_RE.fullmatch(kind) or not is_valid_id(ident):
        _fail("bad_reference", f"{path}.reference")
    if target is not None and kind != target:
        _fail("bad_reference", f"{path}.reference")


def _coding(value: Any, path: str) -> None:
    coding = _obj(value, path)
    if "system" in coding:
        _str(coding["system"], f"{path}.system", MAX_URI_CHARS)
    if "code" in coding:
        _code(coding["code"], f"{path}.code")
    if "display" in coding:
        _str(coding["display"], f"{path}.display")
    if "code" not in coding and "display" not in coding:
        _fail("missing", f"{path}.code")


def _concept(value: Any, path: str) -> None:
    concept = _obj(value, path)
    if "coding" in concept:
        for i, coding in enumerate(_list(concept["coding"], f"{path}.coding")):
            _coding(coding, f"{path}.coding[{i}]")
    if "text" in concept:
        _str(concept["text"], f"{path}.text")
    if "coding" not in concept and "text" not in concept:
        _fail("missing", f"{path}.coding")


def _concepts(value: Any, path: str) -> None:
    for i, concept in enumerate(_list(value, path)):
        _concept(concept, f"{path}[{i}]")


def _period(value: Any, path: str) -> None:
    period = _obj(value, path)
    for key in ("start", "end"):
        if key in period:
            _datetime(period[key], f"{path}.{key}")


def _quantity(value: Any, path: str) -> None:
    quantity = _obj(value, path)
    if "value" not in quantity:
        _fail("missing", f"{path}.value")
    _number(quantity["value"], f"{path}.value")
    if "unit" in quantity:
        _str(quantity["unit"], f"{path}.unit", MAX_NAME_CHARS)
    if "system" in quantity:
        _str(quantity["system"], f"{path}.system", MAX_URI_CHARS)
    if "code" in quantity:
        _code(quantity["code"], f"{path}.code")


def _identifiers(value: Any, path: str) -> None:
    for i, item in enumerate(_list(value, path)):
        here = f"{path}[{i}]"
        identifier = _obj(item, here)
        system = None
        if "system" in identifier:
            system = _str(identifier["system"], f"{here}.system", MAX_URI_CHARS)
        if "value" not in identifier:
            _fail("missing", f"{here}.value")
        text = _name_str(identifier["value"], f"{here}.value")
        if system == NHS_NUMBER_SYSTEM and not nhs_check_digit_ok(text):
            _fail("bad_nhs_number", f"{here}.value")
        if system == PRISON_NUMBER_SYSTEM and not _PRISON_NUMBER_RE.fullmatch(text):
            _fail("bad_prison_number", f"{here}.value")


def _human_names(value: Any, path: str) -> None:
    for i, item in enumerate(_list(value, path)):
        here = f"{path}[{i}]"
        name = _obj(item, here)
        if "use" in name:
            _code(name["use"], f"{here}.use")
        for key in ("family", "text"):
            if key in name:
                _name_str(name[key], f"{here}.{key}")
        for key in ("given", "prefix", "suffix"):
            if key in name:
                for j, part in enumerate(_list(name[key], f"{here}.{key}")):
                    _name_str(part, f"{here}.{key}[{j}]")
        if not ({"family", "given", "text"} & name.keys()):
            _fail("missing", f"{here}.family")


# --- resources -------------------------------------------------------------------------------
# Each type is a table of (field, required, check); a check takes (value, path, as_create).

Check = Callable[[Any, str, bool], object]
Rule = tuple[str, bool, Check]


def _require(obj: dict[str, Any], key: str, path: str) -> Any:
    if key not in obj:
        _fail("missing", f"{path}.{key}")
    return obj[key]


def _plain(check: Callable[[Any, str], object]) -> Check:
    return lambda value, path, create: check(value, path)


def _one_of(allowed: str) -> Check:
    codes = frozenset(allowed.split())
    return lambda value, path, create: _code(value, path, codes)


def _list_of(item: Check) -> Check:
    def check(value: Any, path: str, create: bool) -> None:
        for i, element in enumerate(_list(value, path)):
            item(element, f"{path}[{i}]", create)

    return check


def _fields(obj: dict[str, Any], path: str, rules: tuple[Rule, ...], create: bool) -> None:
    for key, required, check in rules:
        if key in obj:
            check(obj[key], f"{path}.{key}", create)
        elif required:
            _fail("missing", f"{path}.{key}")


def _object_of(*rules: Rule) -> Check:
    return lambda value, path, create: _fields(_obj(value, path), path, rules, create)


def _ref(target: str | None, *, required: bool = True) -> Check:
    def check(value: Any, path: str, create: bool) -> None:
        _reference(value, path, target, required=required, as_create=create)

    return check


def _attachment(value: Any, path: str) -> None:
    attachment = _obj(value, path)
    content_type = _str(_require(attachment, "contentType", path), f"{path}.contentType", 200)
    if "title" in attachment:
        _str(attachment["title"], f"{path}.title")
    data = _require(attachment, "data", path)
    if type(data) is not str:
        _fail("wrong_type", f"{path}.data")
    if len(data) > (MAX_NOTE_BYTES + 2) // 3 * 4:
        _fail("too_long", f"{path}.data")
    raw = data.encode("ascii", "replace")
    if len(raw) % 4 or not _B64_RE.fullmatch(raw):
        _fail("bad_base64", f"{path}.data")
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):  # pragma: no cover - the pattern rejects first
        _fail("bad_base64", f"{path}.data")
    if len(decoded) > MAX_NOTE_BYTES:
        _fail("too_long", f"{path}.data")
    if content_type.split(";")[0].strip().lower() == "text/plain":
        try:
            decoded.decode("utf-8")
        except UnicodeDecodeError:
            _fail("bad_text", f"{path}.data")


CODE, TEXT, NAME, BOOL = _plain(_code), _plain(_str), _plain(_name_str), _plain(_bool)
DATE, DATETIME, INSTANT = _plain(_date), _plain(_datetime), _plain(_instant)
CODING, CONCEPT, CONCEPTS = _plain(_coding), _plain(_concept), _plain(_concepts)
PERIOD, QUANTITY, ATTACHMENT = _plain(_period), _plain(_quantity), _plain(_attachment)
IDENTIFIERS, HUMAN_NAMES = _plain(_identifiers), _plain(_human_names)
_VALUES: tuple[Rule, ...] = (
    ("valueQuantity", False, QUANTITY),
    ("valueString", False, TEXT),
    ("valueCodeableConcept", False, CONCEPT),
)

_TYPE_RULES: dict[str, tuple[Rule, ...]] = {
    "Patient": (
        ("name", False, HUMAN_NAMES),
        ("gender", False, _one_of("male female other unknown")),
        ("birthDate", False, DATE),
        ("active", False, BOOL),
        ("managingOrganization", False, _ref("Organization")),
    ),
    "Organization": (("name", True, NAME), ("active", False, BOOL)),
    "Flag": (
        ("status", True, _one_of("active inactive entered-in-error")),
        ("code", True, CONCEPT),
        ("category", False, CONCEPTS),
        ("period", False, PERIOD),
    ),
    "AllergyIntolerance": (
        ("code", True, CONCEPT),
        ("clinicalStatus", False, CONCEPT),
        ("verificationStatus", False, CONCEPT),
        ("criticality", False, _one_of("low high unable-to-assess")),
        ("type", False, CODE),
        ("category", False, _list_of(CODE)),
        ("recordedDate", False, DATETIME),
        ("reaction", False, _list_of(_object_of(
            ("manifestation", False, CONCEPTS), ("severity", False, CODE)
        ))),
    ),
    "Condition": (
        ("code", True, CONCEPT),
        ("clinicalStatus", False, CONCEPT),
        ("verificationStatus", False, CONCEPT),
        ("category", False, CONCEPTS),
        ("onsetDateTime", False, DATETIME),
        ("abatementDateTime", False, DATETIME),
        ("recordedDate", False, DATETIME),
    ),
    "MedicationStatement": (
        ("status", True, _one_of(
            "active completed entered-in-error intended stopped on-hold unknown not-taken"
        )),
        ("medicationCodeableConcept", False, CONCEPT),
        ("medicationReference", False, _ref("Medication", required=False)),
        ("effectiveDateTime", False, DATETIME),
        ("effectivePeriod", False, PERIOD),
        ("dateAsserted", False, DATETIME),
        ("dosage", False, _list_of(_object_of(("text", False, TEXT)))),
    ),
    "Observation": (
        ("status", True, _one_of(
            "registered preliminary final amended corrected cancelled entered-in-error unknown"
        )),
        ("code", True, CONCEPT),
        ("category", False, CONCEPTS),
        ("effectiveDateTime", False, DATETIME),
        ("issued", False, INSTANT),
        ("encounter", False, _ref("Encounter")),
        *_VALUES,
        ("component", False, _list_of(_object_of(("code", True, CONCEPT), *_VALUES))),
    ),
    "Encounter": (
        ("status", True, _one_of(
            "planned arrived triaged in-progress onleave finished cancelled entered-in-error "
            "unknown"
        )),
        ("class", True, CODING),
        ("type", False, CONCEPTS),
        ("reasonCode", False, CONCEPTS),
        ("period", False, PERIOD),
        ("serviceProvider", False, _ref("Organization")),
    ),
    "DocumentReference": (
        ("status", True, _one_of("current superseded entered-in-error")),
        ("type", False, CONCEPT),
        ("date", False, INSTANT),
        ("description", False, TEXT),
        ("author", False, _list_of(_ref(None, required=False))),
        ("context", False, _object_of(("encounter", False, _list_of(_ref("Encounter"))))),
        ("content", True, _list_of(_object_of(("attachment", True, ATTACHMENT)))),
    ),
}  # fmt: skip

# Every type: its patient (clinical types), its identifiers, then its own fields.
_RULES: dict[str, tuple[Rule, ...]] = {
    kind: (
        *(((PATIENT_FIELD[kind], True, _ref("Patient")),) if kind in PATIENT_FIELD else ()),
        ("identifier", False, IDENTIFIERS),
        *rules,
    )
    for kind, rules in _TYPE_RULES.items()
}


def validate_resource(obj: Any, *, as_create: bool = False) -> dict[str, Any]:
    """Return ``obj`` unchanged if it is a valid resource the client uses; else raise.

    ``as_create=True`` is for a resource a device sends to be created: ``id`` and ``meta``
    may then be absent (the server assigns them) and references may be ``urn:uuid:``.
    """
    resource = _obj(obj, "$")
    kind = resource.get("resourceType")
    if type(kind) is not str:
        _fail("missing" if kind is None else "wrong_type", "$.resourceType")
    if kind not in KNOWN_TYPES:
        _fail("unknown_type", "$.resourceType")
    if "id" in resource or not as_create:
        _id(_require(resource, "id", kind), f"{kind}.id")
    if "meta" in resource or not as_create:
        meta = _obj(_require(resource, "meta", kind), f"{kind}.meta")
        if "versionId" in meta or not as_create:
            _id(_require(meta, "versionId", f"{kind}.meta"), f"{kind}.meta.versionId")
        if "lastUpdated" in meta or not as_create:
            _instant(_require(meta, "lastUpdated", f"{kind}.meta"), f"{kind}.meta.lastUpdated")
    _fields(resource, kind, _RULES[kind], as_create)
    if kind == "Patient" and "name" not in resource and "identifier" not in resource:
        _fail("missing", "Patient.name")
    if kind == "MedicationStatement" and not (
        {"medicationCodeableConcept", "medicationReference"} & resource.keys()
    ):
        _fail("missing", "MedicationStatement.medicationCodeableConcept")
    return resource
