"""Audit exports on disk: the laptop's own chain, or the gateway results an auditor was shown.

Guarantees:
- One writer for every audit export (``write_audit_export``): ``json`` is a FHIR AuditEvent
  Bundle in ``bundle_bytes`` form (compact, sorted keys, re-verifiable with
  ``gatehouse-audit verify``); ``csv`` is ``to_csv_rows`` (formula-safe cells) with the same
  entry in words appended to each row (``WORD_COLUMNS``: UK local time, action, outcome,
  purpose, from ``client.core.audit_words``), so a reader needs no code book. Any other kind
  is refused before anything is written.
- ``export_entries`` writes exactly the entries it is given (the rows an auditor filtered),
  in chain order (an unfiltered export verifies with ``gatehouse-audit verify``), after the
  session audited the export with their count.
- The file is written with ``atomic_write`` (permissions 0600 before the first byte, then an
  atomic replace): a reader never sees half an export, and no other account can read it.
- Nothing is written unless the act was allowed and audited first: the local chain through
  ``Session.export_audit`` (auditor or admin, audited ``export``), the gateway's results through
  ``audit_online.authorise_export`` (the password again, audited either way).
- Only audit metadata is exported: the entries hold no clinical content.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from client.core import audit_online
from client.core.access import ADMIN, AUDITOR
from client.core.audit_words import action_words, outcome_words, purpose_words
from client.core.humanize import format_timestamp
from client.core.session import Session
from policy.atomic import atomic_write
from sync.protocol.audit.audit_event import (
    bundle_bytes,
    entries_from_bundle,
    export_bundle,
    to_csv_rows,
)
from sync.protocol.audit.entry import AuditEntry

KINDS: Final = ("json", "csv")
WORD_COLUMNS: Final = ("time_uk", "action_in_words", "outcome_in_words", "purpose_in_words")


def _csv_rows(entries: Sequence[AuditEntry]) -> list[list[str]]:
    rows = to_csv_rows(entries)
    out = [[*next(rows), *WORD_COLUMNS]]
    for entry, row in zip(entries, rows, strict=True):
        words = (
            format_timestamp(entry.ts),
            action_words(entry.action),
            outcome_words(entry.outcome),
            purpose_words(entry.purpose),
        )
        out.append([*row, *words])
    return out


def export_bytes(entries: Sequence[AuditEntry], kind: str) -> bytes:
    """The file's content for ``kind`` (``ValueError`` for any other kind)."""
    if kind == "json":
        return bundle_bytes(export_bundle(entries))
    if kind == "csv":
        out = io.StringIO()
        csv.writer(out).writerows(_csv_rows(entries))
        return out.getvalue().encode("utf-8")
    raise ValueError(f"audit exports are one of {', '.join(KINDS)}")


def write_audit_export(path: Path, entries: Sequence[AuditEntry], kind: str) -> int:
    """Write ``entries`` to ``path`` as ``kind``, atomically; returns how many were written."""
    atomic_write(path, export_bytes(entries, kind))
    return len(entries)


def export_local(session: Session, path: Path, kind: str) -> int:
    """The laptop's whole chain (role-checked and audited by the session) to ``path``."""
    if kind not in KINDS:
        raise ValueError(f"audit exports are one of {', '.join(KINDS)}")
    entries = entries_from_bundle(session.export_audit())
    return write_audit_export(path, entries, kind)


def export_entries(session: Session, entries: Sequence[AuditEntry], path: Path, kind: str) -> int:
    """Exactly ``entries`` (the laptop's rows an auditor filtered) to ``path``, in chain order
    (the screen shows newest first; ``gatehouse-audit verify`` reads the chain forwards); the
    export is audited (auditors and admins only) with its format and count before the file is
    written."""
    if kind not in KINDS:
        raise ValueError(f"audit exports are one of {', '.join(KINDS)}")
    session._require_role((AUDITOR, ADMIN), "export the audit log", "export")
    with session._act() as conn:
        detail = {"what": "audit_log", "format": kind, "events": len(entries)}
        session._append(conn, "export", detail=detail)
    return write_audit_export(path, sorted(entries, key=lambda entry: entry.seq), kind)


def export_gateway_results(
    session: Session, password: str | None, entries: Sequence[AuditEntry], path: Path, kind: str
) -> int:
    """Results already shown from the gateway, after the password again (audited)."""
    if kind not in KINDS:
        raise ValueError(f"audit exports are one of {', '.join(KINDS)}")
    audit_online.authorise_export(session, password, kind, len(entries))
    return write_audit_export(path, entries, kind)
