"""The FHIR vocabulary both ends agree on: resource types, identifier systems, id syntax.

Invariants:
- Each name here has exactly one definition in the code base; the laptop (client/, sync/device)
  and the gateway (sync/gateway) import it from here and never restate it.
- The identifier systems are the ones docs/conventions-local.md documents; changing one is a
  wire change (both ends and every stored record must agree).
- Patterns are compiled once and meant for ``fullmatch``: they carry no anchors.
- Pure constants: no I/O, no clock.
"""

from __future__ import annotations

import re
from typing import Final

# -- identifier and terminology systems (docs/conventions-local.md) ----------------------------
SITE_SYSTEM: Final = "https://gatehouse.example/fhir/site"
NHS_NUMBER_SYSTEM: Final = "https://fhir.nhs.uk/Id/nhs-number"
PRISON_NUMBER_SYSTEM: Final = "https://gatehouse.example/fhir/prison-number"
CLIENT_ID_SYSTEM: Final = "https://gatehouse.example/fhir/client-id"
USER_SYSTEM: Final = "https://gatehouse.example/fhir/user"
ALERT_SYSTEM: Final = "https://gatehouse.example/fhir/alert"
LOINC_SYSTEM: Final = "http://loinc.org"
SNOMED_SYSTEM: Final = "http://snomed.info/sct"
UCUM_SYSTEM: Final = "http://unitsofmeasure.org"
DMD_SYSTEM: Final = "https://dmd.nhs.uk"
PROGRESS_NOTE_LOINC: Final = "11506-3"
NOTE_CONTENT_TYPE: Final = "text/plain; charset=utf-8"

# -- resource types ------------------------------------------------------------------------
PATIENT: Final = "Patient"
ORGANIZATION: Final = "Organization"  # a site: its id is the site code; read-only for laptops
# The clinical types a laptop stores, and the field in each that names its patient.
PATIENT_FIELD: Final[dict[str, str]] = {
    "Flag": "subject",
    "AllergyIntolerance": "patient",
    "Condition": "subject",
    "MedicationStatement": "subject",
    "Observation": "subject",
    "Encounter": "subject",
    "DocumentReference": "subject",
}
CLINICAL_TYPES: Final = tuple(PATIENT_FIELD)
STORED_TYPES: Final = frozenset({PATIENT, *CLINICAL_TYPES})  # what a laptop keeps
KNOWN_TYPES: Final = frozenset({*STORED_TYPES, ORGANIZATION})  # what either end accepts

# -- syntax ----------------------------------------------------------------------------------
ID_RE: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # the FHIR ``id`` datatype
SITE_CODE_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # a site code (DNS-label shaped)
URN_UUID_RE: Final = re.compile(r"urn:uuid:[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
PATIENT_REFERENCE_PREFIX: Final = "Patient/"
SITE_REFERENCE_PREFIX: Final = "Organization/"
