"""A laptop enrolled with a real gateway over real mutual TLS: the gateway (``running_gateway``)
with a published policy naming its port and pins, a clinician, and one-time provisioning
bundles; the laptop is provisioned from a bundle exactly as in production.

Only what lies outside the product is replaced: the OS keyring (in memory, or the policy-allowed
file fallback when a child process must share it) and gateway-side password hashing speed.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from keyring.backend import KeyringBackend

from client.core.device import Device
from client.core.kdf import FLOOR
from client.core.provisioning import provision_from_bundle
from sync.device.enrolment import BUNDLE_FORMAT
from sync.gateway import enrolment, policies, users
from tests.support.device import policy_envelope, trust_pem
from tests.support.gateway import TEST_HASHER, Gateway, running_gateway
from tests.support.sync import seed_resources

SITE = "hmp-brixton"
NURSE = ("nurse.ada", "a long and memorable phrase")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def gateway_policy(gw: Gateway, version: int = 1, **settings: Any) -> bytes:
    """The test policy pointed at this gateway and its pins."""
    return policy_envelope(
        version,
        around=now(),
        network__gateway_url=gw.server.url + "/",
        network__allowed_hosts=["127.0.0.1"],
        network__spki_pins=[gw.pki.server_pin, base64.b64encode(b"b" * 32).decode()],
        **settings,
    )


def bundle(gw: Gateway) -> bytes:
    token, expires = enrolment.create_enrol_token(
        gw.store, SITE, now=now(), ttl=dt.timedelta(hours=1)
    )
    return json.dumps(
        {
            "format": BUNDLE_FORMAT,
            "gateway_url": gw.server.url + "/",
            "spki_pins": [gw.pki.server_pin, base64.b64encode(b"b" * 32).decode()],
            "ca_certificate": gw.authority.ca_pem,
            "policy_trust_keys": [trust_pem()],
            "policy_trust_threshold": 1,
            "token": token,
            "token_expires_at": expires.isoformat(),
            "site": SITE,
            "escrow_public_key": gw.authority.escrow_public_b64,
            "receipt_public_key": gw.authority.receipt_public_pem,
        }
    ).encode()


@contextmanager
def laptop_gateway(folder: Path, *, patients: int = 6, **settings: Any) -> Iterator[Gateway]:
    """A running gateway with records, a published policy (``settings`` on top of the test
    defaults) and the clinician ``NURSE``."""
    with running_gateway(folder) as gw:
        gw.load(*seed_resources(patients=patients, seed=5))
        policies.publish(gw.store, gateway_policy(gw, **settings), now=now(), trust_keys=())
        users.add_user(
            gw.store,
            user_id=NURSE[0],
            role="clinician",
            site=SITE,
            password=NURSE[1],
            now=now(),
            hasher=TEST_HASHER,
            allow_weak_hasher=True,
        )
        yield gw


def provision_laptop(gw: Gateway, data: Path, keyring: KeyringBackend, **clocks: Any) -> Device:
    """Provisioned from a fresh bundle (``clocks``: ``clock=`` and ``clocks=`` fakes)."""
    return provision_from_bundle(
        data, bundle(gw), keyring_backend=keyring, kdf_params=FLOOR, **clocks
    )
