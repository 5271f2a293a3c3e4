"""Reading FHIR resources safely: whose patient, which site, which identifier.

Invariants:
- Every function accepts any JSON value and answers ``None`` (or ``False``) for anything that
  is not the expected shape: no ``KeyError``/``TypeError`` ever leaves this module, so callers
  may use it on unvalidated server data as well as on validated resources.
- Ids are accepted only as ``is_valid_id`` allows (the FHIR pattern, never ``.``/``..``).
- Pure functions: no I/O, no clock. ``sync.protocol.fhir.validate`` builds on these; this module
  imports nothing from it.
"""

from __future__ import annotations

from typing import Any

from sync.protocol.fhir.vocabulary import (
    CLIENT_ID_SYSTEM,
    ID_RE,
    NHS_NUMBER_SYSTEM,
    PATIENT_FIELD,
    PRISON_NUMBER_SYSTEM,
)


def is_valid_id(value: Any) -> bool:
    """True for a FHIR logical id we accept: the FHIR pattern, and never ``.``/``..`` tricks."""
    return (
        type(value) is str
        and ID_RE.fullmatch(value) is not None
        and ".." not in value
        and value.strip(".") != ""
    )


def _reference_id(value: Any, target: str) -> str | None:
    if type(value) is not dict:
        return None
    ref = value.get("reference")
    if type(ref) is not str:
        return None
    kind, slash, ident = ref.partition("/")
    if kind != target or not slash or not is_valid_id(ident):
        return None
    return ident


def patient_ref_of(resource: Any) -> str | None:
    """The id of the patient a resource belongs to (a Patient's own id), or None."""
    if type(resource) is not dict:
        return None
    kind = resource.get("resourceType")
    if kind == "Patient":
        ident = resource.get("id")
        return ident if is_valid_id(ident) else None
    field = PATIENT_FIELD.get(kind) if type(kind) is str else None
    return None if field is None else _reference_id(resource.get(field), "Patient")


def site_of_patient(patient: Any) -> str | None:
    """The site code of a Patient (``managingOrganization`` = ``Organization/<code>``)."""
    if type(patient) is not dict or patient.get("resourceType") != "Patient":
        return None
    return _reference_id(patient.get("managingOrganization"), "Organization")


def identifier_value(resource: Any, system: str) -> str | None:
    """The value of the first identifier of ``resource`` in ``system``, or None."""
    if type(resource) is not dict:
        return None
    identifiers = resource.get("identifier")
    if type(identifiers) is not list:
        return None
    for identifier in identifiers:
        if type(identifier) is dict and identifier.get("system") == system:
            value = identifier.get("value")
            return value if type(value) is str else None
    return None


def client_identifier(resource: Any) -> str | None:
    """The device-made identifier (exactly-once creates) of a resource, or None."""
    return identifier_value(resource, CLIENT_ID_SYSTEM)


def nhs_number(patient: Any) -> str | None:
    """The patient's NHS number (10 digits), or None."""
    return identifier_value(patient, NHS_NUMBER_SYSTEM)


def prison_number(patient: Any) -> str | None:
    """The patient's prison number (``A1234BC``), or None."""
    return identifier_value(patient, PRISON_NUMBER_SYSTEM)


def nhs_check_digit(first_nine: str) -> int | None:
    """The Modulus 11 check digit for nine digits, or None when it would be 10 (unusable)."""
    if len(first_nine) != 9 or not first_nine.isascii() or not first_nine.isdigit():
        raise ValueError("nine ASCII digits expected")
    total = sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def nhs_check_digit_ok(value: str) -> bool:
    """True when ``value`` is exactly 10 ASCII digits with a valid Modulus 11 check digit."""
    if type(value) is not str or len(value) != 10 or not value.isascii() or not value.isdigit():
        return False
    return nhs_check_digit(value[:9]) == int(value[9])


def normalise_nhs_number(text: str) -> str | None:
    """``"943 476 5919"`` or ``"943-476-5919"`` → ``"9434765919"`` if valid, else None."""
    digits = text.replace(" ", "").replace("-", "")
    return digits if nhs_check_digit_ok(digits) else None
