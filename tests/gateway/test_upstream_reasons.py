"""Every reason an upstream pass can fail or hold a note with has a plain sentence for IT
(``upstream status`` prints it beside the code), never the general fallback."""

from __future__ import annotations

import re
from pathlib import Path

from sync.gateway.errors import MESSAGES, OPERATOR_MESSAGES

UPSTREAM = Path(__file__).resolve().parents[2] / "sync/gateway/upstream"
RAISED = re.compile(r'(?:UpstreamError|_Refused)\(\s*(?:"[a-z]+",\s*)?"([a-z_]+)"')


def test_every_upstream_reason_has_a_sentence() -> None:
    reasons = {
        found
        for module in UPSTREAM.glob("*.py")
        for found in RAISED.findall(module.read_text(encoding="utf-8"))
    }
    assert len(reasons) > 20  # the pattern still finds what the modules raise
    known = set(MESSAGES) | set(OPERATOR_MESSAGES)
    assert sorted(reasons - known - {"held", "conflict"}) == []
