"""A second real third-party FHIR R4 server for the tests, one that offers Bulk Data ``$export``
and ``_history``: sekmet-fhir 0.1.1 (PyPI, Apache-2.0; FastAPI over SQLite), run by its own
virtual environment's Python as a subprocess under uvicorn (``tests/support/sekmet/serve.py``)
at ``https://127.0.0.1:PORT/fhir`` with TLS 1.3 and verified client certificates from the
tests' own PKI, over a temporary data folder.

``make sekmet`` (a dependency of ``make test``) installs it, at the versions
``tests/support/sekmet/requirements.txt`` pins, into ``tests/support/sekmet/.venv``: never into
the project's venv. Without it the fixture fails and says so: a missing server must never
look like a passing suite.

What this promises the tests built on it (the process and the client are
``third_party_process``'s, shared with Medplum):
- ``running_sekmet`` yields only once the server listens, and stops it (its own process, by
  pid) on exit; the server also exits when the test process dies (its stdin closes).
- ``load`` writes resources through the server's own FHIR API (transaction Bundles of PUTs at
  the caller's ids), as any other client would; ``put``/``delete`` write one resource.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.third_party_process import (
    FHIR_JSON,
    ThirdPartyServer,
    running_server,
    tls_arguments,
)
from tests.support.tls import make_test_pki

SERVER_DIR = Path(__file__).parent / "sekmet"
SCRIPT = SERVER_DIR / "serve.py"
PYTHON = SERVER_DIR / ".venv" / "bin" / "python"
BASE_PATH = "/fhir"
START_TIMEOUT_S = 90.0
LOAD_BATCH = 500  # entries per transaction Bundle when loading test data


class SekmetMissing(RuntimeError):
    """The pinned sekmet-fhir server is not installed (run ``make sekmet``)."""


@dataclass(kw_only=True)
class SekmetServer(ThirdPartyServer):
    data: Path

    base_path = BASE_PATH  # the FHIR base URL is ``…/fhir``
    write_timeout_s = 60.0

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

    def metadata(self) -> dict[str, Any]:
        response = self.session().get(f"{self.base}/metadata", timeout=30)
        response.raise_for_status()
        statement: dict[str, Any] = response.json()
        return statement


def _python() -> Path:
    if not (PYTHON.is_file() and (SERVER_DIR / ".venv" / ".installed").is_file()):
        raise SekmetMissing("the sekmet-fhir test server is not installed: run `make sekmet`")
    return PYTHON


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
    argv = [str(python), str(SCRIPT), *tls_arguments(pki), "--data", str(data)]
    with running_server(
        [*argv, "--validation", validation],
        lambda process, port: SekmetServer(
            pki=pki, port=port, seeder=seeder, process=process, data=data
        ),
        name="sekmet-fhir",
        cwd=data,
        start_timeout_s=START_TIMEOUT_S,
        env={"PATH": "/usr/bin:/bin", "HOME": str(data)},
    ) as server:
        yield server
