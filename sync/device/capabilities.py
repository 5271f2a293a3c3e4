"""Reading the data plane's ``metadata`` (its CapabilityStatement) once per sync, before the
push, so the engine decides per capability (issue 13, docs/sync.md §Capabilities).

Invariants:
- A server without a readable CapabilityStatement (an error status, not JSON, not a
  CapabilityStatement) yields None: the engine then probes as before (``_history`` first, the
  keyset search when refused). Only a failure of the connection itself raises
  (``TransportError`` with a ``CONNECTION_REASONS`` reason).
- Nothing here stores anything: the engine puts the profile in the sync's result.
"""

from __future__ import annotations

from sync.device.outcome import CONNECTION_REASONS, FHIR_JSON
from sync.device.transport import Response, Transport, TransportError
from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded
from sync.protocol.fhir.capability import ServerProfile, read_capability_statement
from sync.protocol.fhir.validate import InvalidResource


def read_server_profile(transport: Transport, fhir_base: str) -> ServerProfile | None:
    """GET ``[base]/metadata``; the server's profile, or None when it does not say."""
    try:
        response = transport.get(f"{fhir_base.rstrip('/')}/metadata", headers={"Accept": FHIR_JSON})
    except TransportError as error:
        if error.reason in CONNECTION_REASONS:
            raise
        return None  # e.g. a statement larger than any page: not a reason to stop the sync
    return profile_of(response)


def profile_of(response: Response) -> ServerProfile | None:
    """The profile in a ``metadata`` answer, or None when it is not a readable statement."""
    if response.status != 200:
        return None
    try:
        return read_capability_statement(loads_bounded(response.body))
    except (BoundedJsonError, InvalidResource):
        return None
