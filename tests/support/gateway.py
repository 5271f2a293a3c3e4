"""A real gateway on 127.0.0.1 with real TLS, a real store (SQLite, or PostgreSQL with
``GATEHOUSE_TEST_STORE=postgres``) and two sites."""

from __future__ import annotations

import contextlib
import os
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from argon2 import PasswordHasher, Type

from sync.gateway.authority import GatewayAuthority
from sync.gateway.login_throttle import LoginPolicy
from sync.gateway.server import BackgroundGateway, build_app, build_ssl_context
from sync.gateway.store.base import Store
from sync.gateway.store.loader import load_resources
from sync.gateway.store.sql import SqlStore
from sync.gateway.store.sqlite import SqliteStore
from sync.protocol.fhir.vocabulary import CLIENT_ID_SYSTEM, NHS_NUMBER_SYSTEM
from tests.support.tls import DeviceCredentials, PkiFiles, make_test_pki

SITE_A = "hmp-alpha"
SITE_B = "hmp-bravo"
CLIENT_ID = CLIENT_ID_SYSTEM
NHS = NHS_NUMBER_SYSTEM


def nhs_number(seed: str) -> str:
    """A valid test-range NHS number (Modulus 11 check digit) derived from ``seed``."""
    body = 999_000_000 + zlib.crc32(seed.encode()) % 1_000_000
    while True:
        digits = [int(d) for d in str(body)]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        if check != 10:
            return f"{body}{0 if check == 11 else check}"
        body += 1


def patient(pid: str, site: str, family: str = "Smith", given: str = "John") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": NHS, "value": nhs_number(pid)}],
        "name": [{"family": family, "given": [given]}],
        "managingOrganization": {"reference": f"Organization/{site}"},
    }


def observation(oid: str, pid: str, value: float = 72.0) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org"},
    }


def session_for(creds: DeviceCredentials | None, pki: PkiFiles) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(pki.ca_path)
    if creds is not None:
        session.cert = creds.requests_cert
    return session


# Argon2id far below the production floor, for test speed only (users.meets_floor is tested).
TEST_HASHER = PasswordHasher(time_cost=1, memory_cost=256, parallelism=1, type=Type.ID)


@dataclass
class Gateway:
    pki: PkiFiles
    store: Store
    server: BackgroundGateway
    device_a: DeviceCredentials
    device_b: DeviceCredentials
    authority: GatewayAuthority
    sessions: list[requests.Session] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def fhir(self) -> str:
        return f"{self.server.url}/fhir"

    def session(self, creds: DeviceCredentials | None) -> requests.Session:
        session = session_for(creds, self.pki)
        self.sessions.append(session)
        return session

    @property
    def a(self) -> requests.Session:
        return self.session(self.device_a)

    @property
    def b(self) -> requests.Session:
        return self.session(self.device_b)

    def load(self, *resources: dict[str, Any]) -> None:
        load_resources(self.store, resources)

    def post_bundle(
        self, session: requests.Session, entries: list[dict[str, Any]], kind: str = "transaction"
    ) -> requests.Response:
        bundle = {"resourceType": "Bundle", "type": kind, "entry": entries}
        return session.post(
            self.fhir, json=bundle, headers={"Content-Type": "application/fhir+json"}, timeout=30
        )


def create_entry(resource: dict[str, Any], client_id: str | None = None) -> dict[str, Any]:
    client_id = client_id or str(uuid.uuid4())
    resource = dict(resource)
    resource.setdefault("identifier", [])
    resource["identifier"] = [*resource["identifier"], {"system": CLIENT_ID, "value": client_id}]
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": resource,
        "request": {
            "method": "POST",
            "url": resource["resourceType"],
            "ifNoneExist": f"identifier={CLIENT_ID}|{client_id}",
        },
    }


def make_store(tmp_path: Path) -> SqlStore:
    """The store under test: SQLite in ``tmp_path``, or — with ``GATEHOUSE_TEST_STORE=postgres``
    — a ``PgStore`` (the same ``SqlStore``) on a fresh database of the session's real
    PostgreSQL server (the test skips, saying why, where PostgreSQL is not installed)."""
    backend = os.environ.get("GATEHOUSE_TEST_STORE", "sqlite") or "sqlite"
    if backend == "postgres":
        from sync.gateway.store.postgres import PgStore
        from tests.support.postgres import require_server

        return PgStore(require_server().new_database())
    if backend != "sqlite":
        raise ValueError("GATEHOUSE_TEST_STORE must be 'sqlite' or 'postgres'")
    return SqliteStore(tmp_path / "gateway.sqlite3")


def start_gateway(tmp_path: Path, trusted_proxies: tuple[str, ...] = ()) -> Gateway:
    from sync.gateway.server import parse_trusted_proxies

    pki = make_test_pki(tmp_path / "pki")
    store = make_store(tmp_path)
    device_a = pki.device("dev-a", SITE_A)
    device_b = pki.device("dev-b", SITE_B)
    store.set_device("dev-a", SITE_A, "active")
    store.set_device("dev-b", SITE_B, "active")
    authority = GatewayAuthority.generate(pki.ca_key, pki.ca_cert)
    app = build_app(
        store,
        ca_cert=pki.ca_cert,
        authority=authority,
        login_policy=LoginPolicy(hasher=TEST_HASHER, max_failures=3),
        trusted_proxies=parse_trusted_proxies(trusted_proxies),
    )
    context = build_ssl_context(pki.server_cert_path, pki.server_key_path, pki.ca_path)
    server = BackgroundGateway(app, context)
    server.start()
    return Gateway(pki, store, server, device_a, device_b, authority)


@contextlib.contextmanager
def running_gateway(tmp_path: Path, trusted_proxies: tuple[str, ...] = ()) -> Iterator[Gateway]:
    """``start_gateway`` for the block, ``stop_gateway`` after it (also when it fails)."""
    gateway = start_gateway(tmp_path, trusted_proxies)
    try:
        yield gateway
    finally:
        stop_gateway(gateway)


def stop_gateway(gateway: Gateway) -> None:
    for session in gateway.sessions:
        session.close()
    gateway.server.stop()
    gateway.store.close()
