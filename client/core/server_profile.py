"""The data plane's capabilities as last read from its ``metadata`` (issue 13), kept in the
device's data folder for IT (``gatehouse device status --json``) without signing in.

Invariants:
- The file holds capability codes, counts, the server's software name and when it was read:
  no patient data, no secrets, so it lives outside the vault (like the device profile).
- Written atomically after a sync whose server described itself; a sync that could not read
  it leaves the last one in place. Reading never raises: a missing or unreadable file is None.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.core.humanize import format_moment
from policy.atomic import atomic_write

SERVER_PROFILE = "server_profile.json"


def save_server_profile(data_dir: Path, profile: dict[str, Any], read_at: dt.datetime) -> None:
    document = {"read_at": read_at.isoformat(), **profile}
    atomic_write(data_dir / SERVER_PROFILE, json.dumps(document, sort_keys=True).encode())


def load_server_profile(data_dir: Path) -> dict[str, Any] | None:
    try:
        document = json.loads((data_dir / SERVER_PROFILE).read_bytes())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


@dataclass(frozen=True)
class ServerSummary:
    """The records server's profile in words for IT (the admin panel): who it is and when it
    was read, what it offers, and one sentence per missing capability saying what the laptop
    does instead. Codes stay in ``device status --json``."""

    server: str
    offers: str
    missing: tuple[str, ...]


# What the laptop does without each capability (docs/sync.md §Capabilities).
_MISSING_WORDS = {
    "history-type": (
        "No change history (_history) for {types}: the laptop reads them by date-sorted "
        "search, finds deleted patients by listing them at every sync, and other deleted "
        "records by a daily id check."
    ),
    "search-type": "No search for {types}: without change history these cannot be pulled.",
    "conditional-create": (
        "No conditional create for {types}: the laptop looks each new note up before sending "
        "it, so a lost reply never files it twice; this costs a few more requests."
    ),
    "if-match": (
        "No versioned updates (If-Match) for {types}: edits are held on the laptop, not sent, "
        "because they could overwrite someone else's. Call IT."
    ),
}
_TYPE_WORDS = {
    "Patient": "patients",
    "AllergyIntolerance": "allergies",
    "Flag": "alerts",
    "Condition": "conditions",
    "MedicationStatement": "medication",
    "Observation": "observations",
    "Encounter": "encounters",
    "DocumentReference": "notes",
}


def describe_server_profile(document: Mapping[str, Any] | None) -> ServerSummary:
    """``load_server_profile``'s document in words (never raises on a damaged document)."""
    if not document:
        return ServerSummary(
            "Not read yet: the laptop describes the records server after its next sync.", "", ()
        )
    software = _plain(document.get("software")) or "An unnamed FHIR server"
    version = _plain(document.get("fhir_version"))
    read_at = _moment(document.get("read_at"))
    server = software + (f" (FHIR {version})" if version else "")
    if read_at is not None:
        server += f", read {format_moment(read_at)}"
    raw_types = document.get("types")
    types: Mapping[str, Any] = raw_types if isinstance(raw_types, dict) else {}
    offers = []
    if document.get("transaction") is True:
        offers.append("transactions")
    for key, words in (
        ("history_type", "change history"),
        ("search_type", "search"),
        ("conditional_create", "conditional create"),
        ("if_match", "versioned updates"),
    ):
        having = [k for k, v in types.items() if isinstance(v, dict) and v.get(key) is True]
        if having:
            offers.append(f"{words} ({_types(having, types)})")
    limit = document.get("max_transaction_entries")
    if type(limit) is int:
        offers.append(f"at most {limit} entries per transaction")
    raw_missing = document.get("missing")
    missing_codes: list[Any] = raw_missing if isinstance(raw_missing, list) else []
    grouped: dict[str, list[str]] = {}
    sentences: list[str] = []
    for code in missing_codes:
        if code == "transaction":
            sentences.append("No transactions: notes cannot be sent to this server. Call IT.")
        elif isinstance(code, str) and ":" in code:
            kind, capability = code.split(":", 1)
            grouped.setdefault(capability, []).append(kind)
    for capability, template in _MISSING_WORDS.items():
        if capability in grouped:
            sentences.append(template.format(types=_types(grouped[capability], types)))
    offered = "Offers " + "; ".join(offers) + "." if offers else "Offers nothing the laptop uses."
    return ServerSummary(server, offered, tuple(sentences))


def _types(kinds: list[str], every: Collection[str]) -> str:
    """The types in words, in the laptop's order; "every record type" when it is all of them."""
    if len(every) > 1 and set(kinds) >= set(every):
        return "every record type"
    order = list(_TYPE_WORDS)
    ordered = sorted(kinds, key=lambda kind: order.index(kind) if kind in order else len(order))
    return ", ".join(_TYPE_WORDS.get(kind, kind) for kind in ordered)


def _plain(value: Any) -> str:
    return value[:120] if isinstance(value, str) and value.isprintable() else ""


def _moment(value: Any) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None
