"""What the tests' third-party FHIR servers (``medplum_server``, ``sekmet_server``) share: one
server run as a subprocess with TLS 1.3 and verified client certificates from the tests' own
PKI, and the plain ``requests`` client the tests use to reach it as any other client would.

What this promises:
- ``running_server`` yields only once the server printed ``READY <port>`` (within the given
  time, else it fails and says which server), and stops it on exit: every session the tests
  opened to it first, then its own process, by pid, terminated then killed after 10 s; the
  server also exits when the test process dies (its stdin closes).
- ``ThirdPartyServer.session(creds)`` verifies the server's certificate against the test CA and
  presents ``creds`` (the seeder's by default).
- ``tls_arguments`` are the server's certificate and key and the CA file its clients'
  certificates must chain to, as both servers' launchers take them.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import requests

from tests.support.tls import DeviceCredentials, PkiFiles

FHIR_JSON = "application/fhir+json"
S = TypeVar("S", bound="ThirdPartyServer")


@dataclass(kw_only=True)
class ThirdPartyServer:
    pki: PkiFiles
    port: int
    seeder: DeviceCredentials
    process: subprocess.Popen[bytes]
    sessions: list[requests.Session] = field(default_factory=list)

    base_path: ClassVar[str]  # the FHIR base URL's path on this server
    write_timeout_s: ClassVar[float] = 30.0

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        """The FHIR base URL, with its path."""
        return self.origin + self.base_path

    def session(self, creds: DeviceCredentials | None = None) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        session.verify = str(self.pki.ca_path)
        session.cert = (creds or self.seeder).requests_cert
        self.sessions.append(session)
        return session

    def put(self, resource: dict[str, Any], session: requests.Session | None = None) -> Any:
        """Create or update ``resource`` at its own id; returns the stored resource."""
        http = session or self.session()
        response = http.put(
            f"{self.base}/{resource['resourceType']}/{resource['id']}",
            json=resource,
            headers={"Content-Type": FHIR_JSON},
            timeout=self.write_timeout_s,
        )
        response.raise_for_status()
        return response.json()

    def delete(self, resource_type: str, resource_id: str) -> None:
        response = self.session().delete(f"{self.base}/{resource_type}/{resource_id}", timeout=30)
        response.raise_for_status()

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The server's current version of one resource (None: absent or deleted)."""
        response = self.session().get(f"{self.base}/{resource_type}/{resource_id}", timeout=30)
        if response.status_code in (404, 410):
            return None
        response.raise_for_status()
        resource: dict[str, Any] = response.json()
        return resource


def _wait_ready(process: subprocess.Popen[bytes], name: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode().strip()
        if line.startswith("READY "):
            return int(line.split()[1])
        if not line and process.poll() is not None:
            break
    raise RuntimeError(f"the {name} test server did not start (exit {process.poll()})")


def tls_arguments(pki: PkiFiles, client_cas: Path | None = None) -> list[str]:
    return [
        "--cert",
        str(pki.server_cert_path),
        "--key",
        str(pki.server_key_path),
        "--ca",
        str(client_cas or pki.ca_path),
    ]


@contextlib.contextmanager
def running_server(
    argv: Sequence[str],
    make: Callable[[subprocess.Popen[bytes], int], S],
    *,
    name: str,
    cwd: Path,
    start_timeout_s: float,
    env: Mapping[str, str] | None = None,
) -> Iterator[S]:
    """The server started with ``argv``, once it is ready (``make(process, port)``); stopped
    on exit."""
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=None if env is None else dict(env),
    )
    server: S | None = None
    try:
        server = make(process, _wait_ready(process, name, start_timeout_s))
        yield server
    finally:
        for session in server.sessions if server is not None else []:
            session.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
