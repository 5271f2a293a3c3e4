"""What every self-test check shares: the failure types, the report and the check's context.

Invariants:
- A check fails only by raising ``CheckFailed`` with a stable ``reason`` and a short ``detail``
  that holds no key material and no data; the runner turns it into one ``Failure``.
- A check writes only inside ``Context.workdir`` (a private temporary directory) and reports
  notes and warnings through the context, never by printing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final

SELFTEST_SITE: Final = "self-test"
SELFTEST_DEVICE: Final = "self-test"


@dataclass(frozen=True)
class Failure:
    """One failed check: ``check`` name, stable ``reason`` code, a short safe ``detail``."""

    check: str
    reason: str
    detail: str

    def line(self) -> str:
        return f"FAIL {self.check}: {self.reason}: {self.detail}"


@dataclass
class SelfTestReport:
    """Everything a run found: failures decide the exit code; notes and warnings do not."""

    checks: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class CheckFailed(Exception):
    """Raised inside a check; becomes a :class:`Failure` with this ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Context:
    """What a check may use: the clock, a private temp dir, and places to put notes."""

    def __init__(self, now: datetime, workdir: Path, report: SelfTestReport) -> None:
        self.now = now
        self.workdir = workdir
        self.report = report

    def note(self, text: str) -> None:
        self.report.notes.append(text)

    def warn(self, text: str) -> None:
        self.report.warnings.append(text)
