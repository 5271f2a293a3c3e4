"""A second real third-party FHIR R4 server for the tests, one that offers Bulk Data ``$export``
and ``_history``: sekmet-fhir 0.1.1 (PyPI, Apache-2.0; FastAPI over SQLite), run by its own
virtual environment's Python as a subprocess under uvicorn (``tests/support/sekmet/serve.py``)
at ``https://127.0.0.1:PORT/fhir`` with TLS 1.3 and verified client certificates from the
tests' own PKI, over a temporary data folder.

``make sekmet`` (a dependency of ``make test``) installs it, at the versions
``tests/support/sekmet/requirements.txt`` pins, into ``tests/support/sekmet/.venv``: never into
the project's venv. Without it the fixture fails and says so: a missing server must never
look like a passing suite.

What this promises the tests built on it:
- ``running_sekmet`` yields only once the server listens, and stops it (its own process, by
  pid) on exit; the server also exits when the test process dies (its stdin closes).
- ``load`` writes resources through the server's own FHIR API (transaction Bundles of PUTs at
  the caller's ids), as any other client would; ``put``/``delete`` write one resource.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.support.tls import DeviceCredentials, PkiFiles, make_test_pki

SERVER_DIR = Path(__file__).parent / "sekmet"
SCRIPT = SERVER_DIR / "serve.py"
PYTHON = SERVER_DIR / ".venv" / "bin" / "python"
BASE_PATH = "/fhir"
START_TIMEOUT_S = 90.0
FHIR_JSON = "application/fhir+json"
LOAD_BATCH = 500  # entries per transaction Bundle when loading test data


class SekmetMissing(RuntimeError):
    """The pinned sekmet-fhir server is not installed (run ``make sekmet``)."""


@dataclass
class SekmetServer:
    pki: PkiFiles
    port: int
    seeder: DeviceCredentials
    process: subprocess.Popen[bytes]
    data: Path
    sessions: list[requests.Session] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        """The FHIR base URL, with its path (``…/fhir``)."""
        return self.origin + BASE_PATH

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
            timeout=60,
        )
        response.raise_for_status()
        return response.json()

    def load(self, resources: Sequence[dict[str, Any]]) -> None:
        """Write ``resources`` at their own ids, in transaction Bundles of ``LOAD_BATCH``."""
        http = self.session()
        for start in range(0, len(resources), LOAD_BATCH):
            bundle = {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": r,
                        "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                    }
                    for r in resources[start : start + LOAD_BATCH]
                ],
            }
            response = http.post(
                self.base, json=bundle, headers={"Content-Type": FHIR_JSON}, timeout=600
            )
            response.raise_for_status()

    def delete(self, resource_type: str, resource_id: str) -> None:
        response = self.session().delete(f"{self.base}/{resource_type}/{resource_id}", timeout=30)
        response.raise_for_status()

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        response = self.session().get(f"{self.base}/{resource_type}/{resource_id}", timeout=30)
        if response.status_code in (404, 410):
            return None
        response.raise_for_status()
        resource: dict[str, Any] = response.json()
        return resource

    def metadata(self) -> dict[str, Any]:
        response = self.session().get(f"{self.base}/metadata", timeout=30)
        response.raise_for_status()
        statement: dict[str, Any] = response.json()
        return statement


def _python() -> Path:
    if not (PYTHON.is_file() and (SERVER_DIR / ".venv" / ".installed").is_file()):
        raise SekmetMissing("the sekmet-fhir test server is not installed: run `make sekmet`")
    return PYTHON


def _wait_ready(process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode().strip()
        if line.startswith("READY "):
            return int(line.split()[1])
        if not line and process.poll() is not None:
            break
    raise RuntimeError(f"the sekmet-fhir test server did not start (exit {process.poll()})")


@contextlib.contextmanager
def running_sekmet(directory: Path, *, validation: str = "strict") -> Iterator[SekmetServer]:
    """Start sekmet-fhir with a fresh PKI and data folder under ``directory``; stop it on exit.

    ``validation`` is sekmet's own inbound check (``strict``, ``warn``, ``off``): ``off`` only
    to load large data sets faster (benchmarks)."""
    python = _python()
    pki = make_test_pki(directory / "pki")
    seeder = pki.device("sekmet-seeder", "seeding")
    data = directory / "sekmet-data"
    data.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            str(python),
            str(SCRIPT),
            "--cert",
            str(pki.server_cert_path),
            "--key",
            str(pki.server_key_path),
            "--ca",
            str(pki.ca_path),
            "--data",
            str(data),
            "--validation",
            validation,
        ],
        cwd=data,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "HOME": str(data)},
    )
    sessions: list[requests.Session] = []
    try:
        server = SekmetServer(pki, _wait_ready(process), seeder, process, data, sessions)
        yield server
    finally:
        for session in sessions:
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
