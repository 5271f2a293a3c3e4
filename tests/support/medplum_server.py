"""A real third-party FHIR R4 server for the tests: Medplum's open-source FHIR router over its
in-memory repository (``tests/support/medplum/server.cjs``, pinned by its package-lock.json),
run by Node as a subprocess at ``https://127.0.0.1:PORT/fhir/R4`` with TLS 1.3 and verified
client certificates from the tests' own PKI.

``make medplum`` (a dependency of ``make test``) installs its packages with ``npm ci`` into
``tests/support/medplum/node_modules``. Without them the fixture fails and says so: a missing
server must never look like a passing suite.

What this promises the tests built on it (the process and the client are
``third_party_process``'s, shared with sekmet-fhir):
- ``running_medplum`` yields only once the server listens, and stops it (its own process, by
  pid) on exit; the server also exits when the test process dies (its stdin closes).
- ``MedplumServer.session(creds)`` is a plain ``requests`` session verifying the server's
  certificate against the test CA and presenting ``creds``; ``seed`` writes resources through
  the FHIR API (PUT with the caller's id), as any other client of that server would.
"""

from __future__ import annotations

import contextlib
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy.schema import RESOURCE_TYPES as PULLED_TYPES
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM
from tests.support.third_party_process import ThirdPartyServer, running_server, tls_arguments
from tests.support.tls import make_test_pki

SERVER_DIR = Path(__file__).parent / "medplum"
SCRIPT = SERVER_DIR / "server.cjs"
BASE_PATH = "/fhir/R4"
START_TIMEOUT_S = 60.0
DEVICE_MADE = ("Encounter", "Observation", "DocumentReference")  # what a consultation creates


class MedplumMissing(RuntimeError):
    """Node or the pinned Medplum packages are not installed (run ``make medplum``)."""


@dataclass(kw_only=True)
class MedplumServer(ThirdPartyServer):
    base_path = BASE_PATH  # the FHIR base URL is ``…/fhir/R4``

    def seed(self, resources: Sequence[dict[str, Any]]) -> None:
        http = self.session()
        for resource in resources:
            self.put(resource, http)

    def search_all(self, resource_type: str, **params: str) -> list[dict[str, Any]]:
        """Every resource of a type as the server holds it (one unpaged search: the in-memory
        repository returns everything that matches when ``_count`` is large enough)."""
        response = self.session().get(
            f"{self.base}/{resource_type}", params={"_count": "100000", **params}, timeout=60
        )
        response.raise_for_status()
        bundle = response.json()
        return [entry["resource"] for entry in bundle.get("entry", [])]

    def site_patients(self, site: str) -> set[str]:
        """The ids of the server's patients managed by ``site``."""
        return {
            p["id"]
            for p in self.search_all("Patient")
            if p.get("managingOrganization", {}).get("reference") == f"Organization/{site}"
        }

    def site_view(
        self, site: str, types: Sequence[str] = PULLED_TYPES
    ) -> dict[tuple[str, str], str]:
        """(type, id) → versionId of every resource of ``site``'s patients: what a laptop of
        that site must hold (the server itself filters nothing by site)."""
        everything = {kind: self.search_all(kind) for kind in types}
        mine = {
            p["id"]
            for p in everything.get("Patient", [])
            if p.get("managingOrganization", {}).get("reference") == f"Organization/{site}"
        }
        return {
            (r["resourceType"], r["id"]): r["meta"]["versionId"]
            for kind, resources in everything.items()
            for r in resources
            if _patient_of(r) in mine
        }

    def client_ids(self, types: Sequence[str] = DEVICE_MADE) -> Counter[str]:
        """How many resources carry each Gatehouse client identifier (exactly-once measure)."""
        return Counter(
            ident["value"]
            for kind in types
            for resource in self.search_all(kind)
            for ident in resource.get("identifier", [])
            if ident.get("system") == CLIENT_ID_SYSTEM
        )


def _patient_of(resource: dict[str, Any]) -> str | None:
    if resource["resourceType"] == "Patient":
        return str(resource["id"])
    key = "patient" if resource["resourceType"] == "AllergyIntolerance" else "subject"
    reference = resource.get(key, {}).get("reference", "")
    return reference.split("/", 1)[1] if reference.startswith("Patient/") else None


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise MedplumMissing("Node.js is not installed; the Medplum test server needs Node 20+")
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        raise MedplumMissing("the Medplum test server is not installed: run `make medplum`")
    return node


@contextlib.contextmanager
def running_medplum(
    directory: Path,
    *,
    max_entries: int | None = None,
    without: Sequence[str] = (),
    client_ca_pem: str | None = None,
) -> Iterator[MedplumServer]:
    """Start the Medplum server with a fresh PKI under ``directory``; stop it on exit.

    ``client_ca_pem`` is a further CA whose client certificates the server accepts (e.g. a
    gateway's device CA, so a laptop the gateway enrolled can use it as its data plane).

    ``max_entries`` advertises Medplum's own transaction limit in its CapabilityStatement;
    ``without`` (``conditional-create``, ``if-match``) makes it a server lacking those: it
    ignores the header and says so in its statement (server.cjs)."""
    node = _node()
    options: list[str] = []
    if max_entries is not None:
        options += ["--max-entries", str(max_entries)]
    if without:
        options += ["--without", ",".join(without)]
    pki = make_test_pki(directory / "pki")
    seeder = pki.device("medplum-seeder", "seeding")
    client_cas = pki.ca_path
    if client_ca_pem is not None:
        client_cas = directory / "client-cas.pem"
        client_cas.write_text(pki.ca_path.read_text() + "\n" + client_ca_pem)
    argv = [node, str(SCRIPT), *tls_arguments(pki, client_cas), "--port", "0", *options]
    with running_server(
        argv,
        lambda process, port: MedplumServer(pki=pki, port=port, seeder=seeder, process=process),
        name="Medplum",
        cwd=SERVER_DIR,
        start_timeout_s=START_TIMEOUT_S,
    ) as server:
        yield server
