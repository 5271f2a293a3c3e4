"""Every installed policy has its ``policy_installed`` entry in the audit chain (AD-1).

A policy lives in its own file (``policy.store``), the chain in the vault: two files, so no
single transaction holds both. A kill after the policy file is replaced and before the entry
is appended left an installed policy with no entry, and later syncs answer "current".

Guarantees:
- :func:`record_installed_policy` appends ``policy_installed`` for the installed version when
  the chain holds no ``policy_installed`` entry for that version; the recovered entry says so
  (``detail.recovered = 1``) and carries the time it was recovered, not a guessed install time.
- It runs in the caller's vault transaction: at every sign-in (before ``login_ok``) and at every
  sync that finds the policy current. Nothing can read or upload the chain without a sign-in,
  so wherever the chain can be seen, every installed policy is in it.
- Idempotent: a version already in the chain adds nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from client.core.audit_log import AuditLog

ACTION = "policy_installed"


def record_installed_policy(
    conn: Any,
    audit: AuditLog,
    *,
    version: int,
    ts: dt.datetime,
    user_id: str | None,
    role: str | None,
) -> bool:
    """Append the missing ``policy_installed`` entry for ``version``; True when one was added."""
    for entry in audit.entries_of_action(conn, ACTION):
        if entry.detail.get("version") == version:
            return False
    audit.append(
        conn,
        ts=ts,
        action=ACTION,
        outcome="success",
        user_id=user_id,
        role=role,
        detail={"version": version, "recovered": 1},
    )
    return True
