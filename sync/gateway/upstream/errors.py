"""``UpstreamError``: every refusal or failure of the upstream connection, one reason code each.

Invariant: the message and the reason never carry a secret (key, token, assertion) nor record
content; an upstream's own words are kept only where an operator must read them (a refused
token request's ``error`` code), cut to ``MAX_DETAIL`` printable characters.
"""

from __future__ import annotations

from sync.gateway.errors import GatewayError

MAX_DETAIL = 200


class UpstreamError(GatewayError):
    """The upstream connection cannot be configured or used as asked; ``reason`` is stable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, reason if not detail else f"{reason}: {detail}")
        self.detail = printable(detail)


def printable(text: str) -> str:
    """``text`` cut to ``MAX_DETAIL`` characters, non-printable ones replaced."""
    return "".join(c if c.isprintable() else "?" for c in text[:MAX_DETAIL])
