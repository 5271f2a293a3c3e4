"""The one base error of ``sync.device``.

Invariants: every exception this package raises on purpose (transport, enrolment, sync, replica
refusals, online audit queries) derives from ``DeviceError`` and carries a stable ``reason``
code and a ``message`` for people that never holds record content, keys or tokens, so the
laptop's error boundary and its CLI each catch one type for the whole package.
"""

from __future__ import annotations


class DeviceError(Exception):
    """A laptop-side sync step could not be done."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message
