"""FHIR R4 as both ends use it.

- :mod:`sync.protocol.fhir.vocabulary`: resource types, identifier systems, id syntax (one
  definition each).
- :mod:`sync.protocol.fhir.bounded_json`: parsing that bounds size, depth and item count and
  refuses duplicate keys and non-finite numbers (NW-3); one error type, ``BoundedJsonError``.
- :mod:`sync.protocol.fhir.validate`: strict validation of the resources the client stores and
  helpers to read them; one error type, ``InvalidResource(reason, path)``.
- :mod:`sync.protocol.fhir.bundle`: Bundle and OperationOutcome builders and safe readers.

Nothing here touches the network, the disk or Qt.
"""
