"""Audit entries as FHIR R4 AuditEvents (IHE BALP), Bundles and CSV rows (AD-3).

Invariants:
- ``to_audit_event`` is a pure function of the entry: the same entry always maps to the same
  resource. Besides the BALP view (type/subtype, action, recorded, outcome, agents, source,
  entity, purposeOfEvent) every AuditEvent carries the extension ``CHAIN_EXTENSION`` with the
  entry's canonical JSON, seq, prev_hash, entry hash and MAC, so an export can be re-verified.
- ``entries_from_bundle`` trusts nothing: it is bounded (entry count, string sizes, JSON nesting
  via the caller's parser), rebuilds every entry from its canonical JSON, and regenerates the
  AuditEvent from the entry; a resource that differs in any field from that regeneration is
  refused with ``AuditFormatError`` reason ``edited`` (and the seq), so the readable part of an
  export cannot be changed behind the chain's back. Structure errors are reason ``malformed``.
- The export holds no record content: detail values are codes and counts
  (``sync.protocol.audit.entry``).
- CSV cells that a spreadsheet would run as a formula (``= + - @`` or a tab/CR first) are
  prefixed with ``'``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from sync.protocol.audit.entry import (
    CANONICAL_FIELDS,
    AuditEntry,
    AuditFormatError,
    entry_from_canonical,
)
from sync.protocol.fhir.vocabulary import USER_SYSTEM

CHAIN_EXTENSION = "https://gatehouse.example/fhir/StructureDefinition/audit-chain"
DEVICE_SYSTEM = "https://gatehouse.example/fhir/device"
ROLE_SYSTEM = "https://gatehouse.example/fhir/role"
ACTION_SYSTEM = "https://gatehouse.example/fhir/audit-action"
MAX_BUNDLE_ENTRIES = 1_000_000

_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_REST = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
_OUTCOME = {"success": "0", "denied": "4", "failure": "8"}


def _c(system: str, code: str, display: str | None = None) -> dict[str, str]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


_LOGIN = _c(_DCM, "110114", "User Authentication")
_ALERT = _c(_DCM, "110113", "Security Alert")
_APP = _c(_DCM, "110100", "Application Activity")
_EXPORT = _c(_DCM, "110106", "Export")
_RESTFUL = _c(_REST, "rest", "Restful Operation")
_DISCLOSE = _c(_LIFECYCLE, "disclose", "Disclose Record Lifecycle Event")

# action -> (type, subtypes, FHIR action code, BALP profile suffix or None)
_MAPPING: dict[str, tuple[dict[str, str], list[dict[str, str]], str, str | None]] = {
    "login_ok": (_LOGIN, [_c(_DCM, "110122", "Login")], "E", None),
    "login_failed": (_LOGIN, [_c(_DCM, "110122", "Login")], "E", None),
    "unlock": (_LOGIN, [_c(_DCM, "110122", "Login")], "E", None),
    "lock": (_LOGIN, [_c(_DCM, "110123", "Logout")], "E", None),
    "lockout": (_ALERT, [], "E", None),
    "search": (_RESTFUL, [_c(_INTERACTION, "search-type", "search type")], "E", "Query"),
    "record_view": (_RESTFUL, [_c(_INTERACTION, "read", "read")], "R", "PatientRead"),
    "note_written": (_RESTFUL, [_c(_INTERACTION, "create", "create")], "C", "PatientCreate"),
    "break_glass": (_ALERT, [_c(_DCM, "110127", "Emergency Override Started")], "E", None),
    "export": (_EXPORT, [_DISCLOSE], "R", "PrivacyDisclosure.Source"),
    "copy_allowed": (_EXPORT, [_DISCLOSE], "R", "PrivacyDisclosure.Source"),
    "print_allowed": (_EXPORT, [_DISCLOSE], "R", "PrivacyDisclosure.Source"),
    "copy_blocked": (_EXPORT, [_DISCLOSE], "R", None),
    "print_blocked": (_EXPORT, [_DISCLOSE], "R", None),
    "sync": (_APP, [], "E", None),
    "policy_installed": (_APP, [_c(_DCM, "110131", "Software Configuration")], "U", None),
    "policy_refused": (_ALERT, [_c(_DCM, "110131", "Software Configuration")], "E", None),
    "clock_tamper": (_ALERT, [], "E", None),
    "purge": (_RESTFUL, [_c(_INTERACTION, "delete", "delete")], "D", "PatientDelete"),
    "wipe": (_APP, [], "D", None),
}
_DEFAULT: tuple[dict[str, str], list[dict[str, str]], str, str | None] = (_APP, [], "E", None)


_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


def _user_agent_type(event_type: dict[str, str], action_code: str) -> dict[str, str]:
    """BALP UserAgentTypesVS: IRCP for query/retrieve, AUT for create/update, INF for export."""
    if event_type is _EXPORT:
        return _c(_PARTICIPATION, "INF", "informant")
    if action_code in ("C", "U"):
        return _c(_PARTICIPATION, "AUT", "author")
    if action_code == "D":
        return _c("http://terminology.hl7.org/CodeSystem/v3-RoleClass", "AGNT", "agent")
    return _c(_PARTICIPATION, "IRCP", "information recipient")


def _ext(url: str, key: str, value: object) -> dict[str, object]:
    return {"url": url, key: value}


def to_audit_event(entry: AuditEntry) -> dict[str, Any]:
    """The FHIR R4 AuditEvent for one entry (BALP-shaped, plus the chain extension)."""
    canonical = entry.canonical_bytes()
    entry_hash = hashlib.sha256(canonical).hexdigest()
    event_type, subtypes, action_code, profile = _MAPPING.get(entry.action, _DEFAULT)
    # Profiles whose patient-specific variant needs a patient only apply when one is named.
    if profile is not None and profile.startswith("Patient") and entry.patient_id is None:
        profile = None
    if profile == "Query" and entry.patient_id is not None:
        profile = "PatientQuery"
    if profile == "PrivacyDisclosure.Source" and (
        entry.patient_id is None or entry.outcome != "success"
    ):
        profile = None
    device = {"identifier": {"system": DEVICE_SYSTEM, "value": entry.device_id}}
    agents: list[dict[str, Any]] = []
    if entry.user_id is not None:
        user: dict[str, Any] = {
            "type": {"coding": [_user_agent_type(event_type, action_code)]},
            "who": {"identifier": {"system": USER_SYSTEM, "value": entry.user_id}},
            "requestor": True,
        }
        if entry.role is not None:
            user["role"] = [{"coding": [_c(ROLE_SYSTEM, entry.role)]}]
        agents.append(user)
    agents.append(
        {
            "type": {"coding": [_c(_DCM, "110150", "Application")]},
            "who": device,
            "requestor": entry.user_id is None,
        }
    )
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": entry_hash,
        "type": event_type,
        "action": action_code,
        "recorded": entry.ts,
        "outcome": _OUTCOME[entry.outcome],
        "agent": agents,
        "source": {
            "observer": device,
            "type": [
                _c("http://terminology.hl7.org/CodeSystem/security-source-type", "1", "User Device")
            ],
        },
        "extension": [
            {
                "url": CHAIN_EXTENSION,
                "extension": [
                    _ext("seq", "valueInteger", entry.seq),
                    _ext("prevHash", "valueString", entry.prev_hash),
                    _ext("entryHash", "valueString", entry_hash),
                    _ext("mac", "valueString", entry.mac),
                    _ext("canonical", "valueString", canonical.decode("utf-8")),
                ],
            }
        ],
    }
    if profile is not None:
        event["meta"] = {"profile": [_BALP + profile]}
    event["subtype"] = [*subtypes, _c(ACTION_SYSTEM, entry.action)]
    if entry.patient_id is not None:
        event["entity"] = [
            {
                "what": {"reference": f"Patient/{entry.patient_id}"},
                "type": _c(
                    "http://terminology.hl7.org/CodeSystem/audit-entity-type", "1", "Person"
                ),
                "role": _c("http://terminology.hl7.org/CodeSystem/object-role", "1", "Patient"),
            }
        ]
    if entry.purpose is not None or entry.reason_text is not None:
        purpose: dict[str, Any] = {}
        if entry.purpose is not None:
            purpose["coding"] = [_c(_ACT_REASON, entry.purpose)]
        if entry.reason_text is not None:
            purpose["text"] = entry.reason_text
        event["purposeOfEvent"] = [purpose]
    return event


def _full_url(entry_hash: str) -> str:
    return f"urn:uuid:{uuid.UUID(bytes=bytes.fromhex(entry_hash)[:16])}"


def export_bundle(entries: Iterable[AuditEntry]) -> dict[str, Any]:
    """A FHIR Bundle (type collection) of the entries' AuditEvents, in the given order."""
    items = []
    for entry in entries:
        event = to_audit_event(entry)
        items.append({"fullUrl": _full_url(event["id"]), "resource": event})
    return {"resourceType": "Bundle", "type": "collection", "entry": items}


def bundle_bytes(bundle: dict[str, Any]) -> bytes:
    """The on-disk form of an export: compact JSON, UTF-8, sorted keys, trailing newline."""
    return orjson.dumps(bundle, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)


def _malformed(message: str, seq: int | None = None) -> AuditFormatError:
    return AuditFormatError("malformed", message, seq)


def _chain_fields(resource: object, index: int) -> tuple[str, str]:
    if not isinstance(resource, dict) or resource.get("resourceType") != "AuditEvent":
        raise _malformed(f"bundle entry {index} is not an AuditEvent")
    extensions = resource.get("extension")
    if not isinstance(extensions, list) or len(extensions) != 1:
        raise _malformed(f"bundle entry {index} lacks the audit-chain extension")
    chain = extensions[0]
    if not isinstance(chain, dict) or chain.get("url") != CHAIN_EXTENSION:
        raise _malformed(f"bundle entry {index} lacks the audit-chain extension")
    values: dict[str, object] = {}
    parts = chain.get("extension")
    if not isinstance(parts, list) or len(parts) != 5:
        raise _malformed(f"bundle entry {index} has a damaged audit-chain extension")
    for part in parts:
        if not isinstance(part, dict) or len(part) != 2 or not isinstance(part.get("url"), str):
            raise _malformed(f"bundle entry {index} has a damaged audit-chain extension")
        values[part["url"]] = part.get("valueString")
    canonical, mac = values.get("canonical"), values.get("mac")
    if not isinstance(canonical, str) or not isinstance(mac, str):
        raise _malformed(f"bundle entry {index} has a damaged audit-chain extension")
    return canonical, mac


def entries_from_bundle(bundle: object) -> list[AuditEntry]:
    """Rebuild the entries of an exported Bundle, strictly (see the module invariants)."""
    if not isinstance(bundle, dict) or set(bundle) != {"resourceType", "type", "entry"}:
        raise _malformed("not a Gatehouse audit export (a FHIR Bundle)")
    if bundle["resourceType"] != "Bundle" or bundle["type"] != "collection":
        raise _malformed("not a FHIR Bundle of type collection")
    items = bundle["entry"]
    if not isinstance(items, list):
        raise _malformed("Bundle.entry must be a list")
    if len(items) > MAX_BUNDLE_ENTRIES:
        raise _malformed(f"more than {MAX_BUNDLE_ENTRIES} entries")
    entries: list[AuditEntry] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"fullUrl", "resource"}:
            raise _malformed(f"bundle entry {index} is not well formed")
        canonical, mac = _chain_fields(item["resource"], index)
        try:
            entry = entry_from_canonical(canonical, mac)
        except AuditFormatError as exc:
            raise _malformed(f"bundle entry {index}: {exc.message}", exc.seq) from None
        event = to_audit_event(entry)
        if item["resource"] != event or item["fullUrl"] != _full_url(event["id"]):
            raise AuditFormatError(
                "edited",
                f"the AuditEvent for entry {entry.seq} was changed: it no longer matches the "
                "chained entry it carries",
                entry.seq,
            )
        entries.append(entry)
    return entries


CSV_HEADER = (*CANONICAL_FIELDS[1:], "entry_hash", "mac")


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text


def to_csv_rows(entries: Sequence[AuditEntry] | Iterable[AuditEntry]) -> Iterator[list[str]]:
    """The header row, then one row per entry (for ``csv.writer``); formula-safe cells."""
    yield list(CSV_HEADER)
    for e in entries:
        detail = orjson.dumps(dict(e.detail), option=orjson.OPT_SORT_KEYS).decode("utf-8")
        row = (
            e.seq,
            e.ts,
            e.device_id,
            e.user_id,
            e.role,
            e.action,
            e.outcome,
            e.patient_id,
            e.purpose,
            e.reason_text,
            detail,
            e.prev_hash,
            e.entry_hash(),
            e.mac,
        )
        yield [_cell(v) for v in row]
