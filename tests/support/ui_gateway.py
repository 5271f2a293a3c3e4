"""A real gateway for screen tests: a data folder made by ``init_data_dir`` (CA, server keys,
escrow and receipt keys), seeded synthetic data, a signed and published policy naming its
port and pins, users, and one-time provisioning bundles — served on 127.0.0.1 with mutual TLS.

Only gateway-side password hashing is cheaper than production (``TEST_HASHER``, tested
elsewhere) and the device keyring is in memory; everything the screens drive is real.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.core.device import Device
from client.core.device_keyring import InMemoryKeyring
from client.core.kdf import FLOOR
from client.core.provisioning import provision_from_bundle
from policy.atomic import atomic_write
from policy.jws import kid_for
from policy.schema import defaults
from sync.gateway import admin_cli, datadir, enrolment, policies, users
from sync.gateway.authority import load_authority
from sync.gateway.login_throttle import LoginPolicy
from sync.gateway.seed.generator import generate
from sync.gateway.server import BackgroundGateway, build_app, build_ssl_context
from sync.gateway.store.loader import load_resources
from sync.gateway.store.sqlite import SqliteStore
from tests.support.gateway import TEST_HASHER
from tests.support.policy import envelope_around

SITE = "hmp-brixton"
OTHER_SITE = "hmp-pentonville"
NURSE = ("nurse.demo", "nurse demo password 1")
AUDITOR = ("ig.demo", "auditor demo password 1")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class LiveGateway:
    data: Path
    store: SqliteStore
    server: BackgroundGateway
    url: str

    def bundle(self, out: Path, site: str = SITE) -> Path:
        """A fresh one-time provisioning bundle file (as ``enroll-token`` writes it)."""
        token, expires = enrolment.create_enrol_token(
            self.store, site, now=now(), ttl=dt.timedelta(hours=1)
        )
        bundle = admin_cli.provisioning_bundle(
            self.data, url=self.url, token=token, site=site, expires_at=expires
        )
        atomic_write(out, json.dumps(bundle).encode())
        return out

    def stop(self) -> None:
        self.server.stop()
        self.store.close()


def start_live_gateway(folder: Path, *, patients: int = 20, **settings: Any) -> LiveGateway:
    data = folder / "gateway"
    init = datadir.init_data_dir(data, now=now())
    store = SqliteStore(data / datadir.DATABASE)

    def registering() -> Iterator[dict[str, Any]]:
        for resource in generate(sites=2, patients=patients, seed=5):
            if resource.get("resourceType") == "Organization":
                store.add_site(str(resource["id"]), str(resource.get("name", "")), now())
            yield resource

    load_resources(store, registering())
    authority = load_authority(data)
    app = build_app(
        store,
        ca_cert=authority.ca_cert,
        authority=authority,
        login_policy=LoginPolicy(hasher=TEST_HASHER, max_failures=5),
    )
    context = build_ssl_context(
        data / datadir.SERVER_CERT, data / datadir.SERVER_KEY, data / datadir.CA_CERT
    )
    server = BackgroundGateway(app, context)
    port = server.start()
    url = f"https://127.0.0.1:{port}/"

    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    trust = data / policies.TRUST_DIR
    trust.mkdir(mode=0o700, exist_ok=True)
    atomic_write(
        trust / f"{kid_for(public)}.pem",
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    values = dict(defaults())
    values.update(
        {
            "network.gateway_url": url,
            "network.allowed_hosts": ["127.0.0.1"],
            "network.spki_pins": [init.server_pin, init.backup_pin],
            "device.require_disk_encryption": False,  # the test machine's disk is not the product
        }
    )
    values.update({k.replace("__", "."): v for k, v in settings.items()})
    moment = now()
    policies.publish(
        store,
        envelope_around(moment, site=SITE, settings=values, key=key),
        now=moment,
        trust_keys=policies.load_trust_keys(data),
    )
    for (user, password), role in ((NURSE, "clinician"), (AUDITOR, "auditor")):
        users.add_user(
            store,
            user_id=user,
            role=role,
            site=SITE,
            password=password,
            now=moment,
            hasher=TEST_HASHER,
            allow_weak_hasher=True,
        )
    return LiveGateway(data, store, server, url)


def provision_for_tests(data_dir: Path, raw: bytes) -> Device:
    """``provision_from_bundle`` with an in-memory keyring and Argon2 at the OWASP floor."""
    return provision_from_bundle(data_dir, raw, keyring_backend=InMemoryKeyring(), kdf_params=FLOOR)
