"""Typed errors of the client core, classified where they arise.

The UI handles them at one boundary (CONVENTIONS.md §4):
- ``UserFacingError``: the user can act on it (wrong password, locked out, not allowed). Its
  ``message`` is safe to show as it is: it never contains patient data or key material.
- ``EnvironmentFault``: the machine let us down (disk full, keyring missing, I/O error). The
  message says what happened and what to do; nothing was lost.
- Anything else is a bug: the UI shows a generic apology and logs the exception type only.
  Three exceptions of the core are bugs on purpose and so are not ``GatehouseError``s:
  ``audit_log.AuditLogError`` (the chain's own invariants broken by a caller or by corruption),
  ``outbox.OutboxStateError`` (an impossible outbox transition) and
  ``records.TransactionRequired`` (a write outside the caller's transaction).

``GatehouseError`` is the core's one base error: the error boundary and the CLI catch it once.

Every error carries a stable ``reason`` code, used in the audit log and in tests.
"""

from __future__ import annotations


class GatehouseError(Exception):
    """Base of every classified error. ``reason`` is a stable code; ``message`` is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class UserFacingError(GatehouseError):
    """Something the user can understand and act on."""


class EnvironmentFault(GatehouseError):
    """A fault of the machine (disk, keyring, I/O), not of the user and not a bug."""


class VaultLocked(UserFacingError):
    """A data call was made while the vault is locked (AU-3)."""

    def __init__(self) -> None:
        super().__init__("vault_locked", "Gatehouse is locked. Unlock it with your password.")


class ConsultationError(UserFacingError):
    """A consultation, edit or conflict choice that cannot be saved; ``field`` names what to fix."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(reason, message)
        self.field = field
