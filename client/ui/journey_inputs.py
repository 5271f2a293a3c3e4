"""What the headless demo journey (``client.ui.journey``) is given: the users and their
passwords, the gateway operator's steps, and the one error it raises.

Invariants:
- A password is never printed: ``Credentials.__repr__`` names the user only.
- ``HookGatewayOps`` runs the operator's own command without a shell, with a timeout, and gives
  a frozen client's child the caller's original ``LD_LIBRARY_PATH`` back.
- Every failure here is a ``JourneyError`` with a reason (``timeout``, ``gateway_hook``,
  ``input``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class JourneyError(Exception):
    """The journey could not go on; ``reason`` is ``timeout``, ``gateway_hook`` or ``input``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class GatewayOps(Protocol):
    """What the gateway's operator does while the journey runs."""

    def transfer_patient(self, patient_id: str) -> None:
        """Move the patient to another site on the gateway (a new Patient version)."""

    def wait_filed(self) -> bool:
        """Wait until the gateway has filed every pushed note into the health record (its
        upstream); False at once when the gateway has no upstream."""


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(user={self.user!r})"


@dataclass(frozen=True)
class JourneyUsers:
    clinician: Credentials
    auditor: Credentials

    @classmethod
    def from_json(cls, text: str) -> JourneyUsers:
        """``{"clinician": {"user": .., "password": ..}, "auditor": {...}}``."""
        try:
            raw = json.loads(text)
            return cls(
                clinician=Credentials(
                    str(raw["clinician"]["user"]), str(raw["clinician"]["password"])
                ),
                auditor=Credentials(str(raw["auditor"]["user"]), str(raw["auditor"]["password"])),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise JourneyError("input", "the journey's users are not readable JSON") from error

    def to_json(self) -> str:
        return json.dumps(
            {
                "clinician": {"user": self.clinician.user, "password": self.clinician.password},
                "auditor": {"user": self.auditor.user, "password": self.auditor.password},
            }
        )


NO_UPSTREAM_EXIT = 3  # ``CMD wait-filed``: the gateway has no upstream


class HookGatewayOps:
    """Gateway steps through a command: ``CMD transfer-patient PATIENT_ID`` (exit 0 = done),
    ``CMD wait-filed`` (exit 0 = every note filed upstream; ``NO_UPSTREAM_EXIT``: no upstream).

    Used by the frozen client, which has no gateway code. A frozen (PyInstaller) process sets
    ``LD_LIBRARY_PATH`` to its own folder; the hook gets the caller's original value back so
    a Python on the host does not load the bundle's libraries.
    """

    def __init__(self, command: str, *, timeout: float = 120.0) -> None:
        self.command = shlex.split(command)
        if not self.command:
            raise JourneyError("input", "the gateway hook command is empty")
        self.timeout = timeout

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"):
            original = env.pop(f"{name}_ORIG", None)
            if getattr(sys, "frozen", False):
                env.pop(name, None)
                if original is not None:
                    env[name] = original
        return env

    def _run(self, args: Sequence[str], other_ok: int | None = None) -> int:
        try:
            done = subprocess.run(  # noqa: S603 - the operator's own hook, no shell
                [*self.command, *args],
                capture_output=True,
                text=True,
                timeout=self.timeout,
                env=self._env(),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise JourneyError("gateway_hook", f"gateway hook did not run: {error}") from error
        for line in done.stdout.splitlines():
            print(f"    hook: {line}", flush=True)
        if done.returncode not in (0, other_ok):
            sys.stderr.write(done.stderr)
            raise JourneyError("gateway_hook", f"gateway hook {args[0]} exited {done.returncode}")
        return done.returncode

    def transfer_patient(self, patient_id: str) -> None:
        self._run(["transfer-patient", patient_id])

    def wait_filed(self) -> bool:
        """``CMD wait-filed``: exit 0 filed, ``NO_UPSTREAM_EXIT`` when there is no upstream."""
        return self._run(["wait-filed"], other_ok=NO_UPSTREAM_EXIT) == 0
