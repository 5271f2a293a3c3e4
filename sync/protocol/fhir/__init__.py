"""FHIR R4 helpers shared by the sync engine and the gateway.

- :mod:`sync.protocol.fhir.bounded_json`: parsing that bounds size, depth and item count and refuses
  duplicate keys and non-finite numbers (NW-3); one error type, ``BoundedJsonError``.
- :mod:`sync.protocol.fhir.validate`: strict validation of the resources the client stores, the
  identifier systems of docs/conventions-local.md and helpers to read them; one error type,
  ``InvalidResource(reason, path)``.
- :mod:`sync.protocol.fhir.bundle`: Bundle and OperationOutcome builders and safe readers.

Nothing here touches the network, the disk or Qt.
"""

from __future__ import annotations

from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded
from sync.protocol.fhir.validate import (
    CLIENT_ID_SYSTEM,
    NHS_NUMBER_SYSTEM,
    PRISON_NUMBER_SYSTEM,
    SITE_SYSTEM,
    InvalidResource,
    client_identifier,
    nhs_check_digit_ok,
    nhs_number,
    patient_ref_of,
    prison_number,
    site_of_patient,
    validate_resource,
)

__all__ = [
    "CLIENT_ID_SYSTEM",
    "NHS_NUMBER_SYSTEM",
    "PRISON_NUMBER_SYSTEM",
    "SITE_SYSTEM",
    "BoundedJsonError",
    "InvalidResource",
    "client_identifier",
    "loads_bounded",
    "nhs_check_digit_ok",
    "nhs_number",
    "patient_ref_of",
    "prison_number",
    "site_of_patient",
    "validate_resource",
]
