"""Self-test of the cryptography the device trusts offline: Argon2id and signed policies.

Invariants:
- ``argon2id`` passes only when Argon2id at the product's floor parameters reproduces a known
  answer.
- ``signed_policy`` signs a policy with an Ed25519 key generated for this run (no key material
  is committed) and passes only when that policy verifies and a tampered or foreign-signed copy
  is refused.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Final

from client.selftest.base import SELFTEST_DEVICE, SELFTEST_SITE, CheckFailed, Context

# Argon2id known answer at the product floor (m=64 MiB, t=3, p=4; client.core.kdf.FLOOR).
ARGON2_KAT_PASSWORD: Final = b"gatehouse self-test"
ARGON2_KAT_SALT: Final = b"gatehouse-selftest-salt"
ARGON2_KAT_HEX: Final = "71f337c11bc334f911950953c2257afb29e72c9995c9600f648f95a6d199daf7"


def check_argon2id(ctx: Context) -> None:
    try:
        from client.core.kdf import FLOOR, derive
    except ImportError as exc:
        raise CheckFailed(
            "argon2_missing", f"cannot import the KDF ({type(exc).__name__})"
        ) from None
    derived = derive(ARGON2_KAT_PASSWORD, ARGON2_KAT_SALT, FLOOR)
    if derived.hex() != ARGON2_KAT_HEX:
        raise CheckFailed("argon2_wrong_answer", "Argon2id does not reproduce the known answer")
    ctx.note(f"Argon2id m={FLOOR.memory_kib} KiB t={FLOOR.iterations} p={FLOOR.parallelism}")


# -- signed policy --------------------------------------------------------------------------


def check_signed_policy(ctx: Context) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from policy.jws import sign
    from policy.model import build_payload
    from policy.schema import defaults
    from policy.verify import PolicyRefused, TrustConfig, verify_policy

    signer = Ed25519PrivateKey.generate()
    stranger = Ed25519PrivateKey.generate()
    trust = TrustConfig.from_keys([signer.public_key()])
    payload = build_payload(
        version=1,
        site=SELFTEST_SITE,
        issued_at=ctx.now,
        not_before=ctx.now - timedelta(minutes=5),
        expires_at=ctx.now + timedelta(days=1),
        settings=defaults(),
    )
    document = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    envelope = sign(document, [signer])

    def verify(candidate: bytes) -> Any:
        return verify_policy(
            candidate,
            trust,
            now=ctx.now,
            installed_version=None,
            site=SELFTEST_SITE,
            device_id=SELFTEST_DEVICE,
        )

    try:
        policy = verify(envelope)
    except PolicyRefused as exc:
        raise CheckFailed(
            "policy_refused", f"a correctly signed policy was refused ({exc.reason})"
        ) from None
    if policy.version != 1 or policy.site != SELFTEST_SITE:
        raise CheckFailed("policy_wrong_content", "the verified policy has the wrong content")

    tampered = json.loads(envelope)
    tampered_doc = dict(payload, version=2)
    from policy.jws import b64url_encode

    tampered["payload"] = b64url_encode(json.dumps(tampered_doc, sort_keys=True).encode())
    forged = sign(document, [stranger])
    for name, candidate in (
        ("tampered", json.dumps(tampered).encode()),
        ("foreign-signed", forged),
    ):
        try:
            verify(candidate)
        except PolicyRefused:
            continue
        raise CheckFailed("policy_forgery_accepted", f"a {name} policy was accepted")
