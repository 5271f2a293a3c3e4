"""The one base error of ``sync.protocol``.

Invariants: every exception this package raises on purpose derives from ``ProtocolError`` and
carries a stable ``reason`` code (for logs, audit entries and ``--json`` output) and a
``message`` that never holds record content, keys or tokens. A caller that only needs to know
"the other end sent something we cannot accept" catches this one type.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Something on the wire or in a signed statement cannot be accepted."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message
