"""Policy verification cost: full verify (1-of-1, 2-of-3), store re-verify, vs raw Ed25519.

Baseline, measured in the same run: one bare ``Ed25519PublicKey.verify`` over the same
signing input. The ratio shows what envelope parsing, strict base64url, the schema check and
(for the store) the MAC and file read add on top of the unavoidable signature check.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policy.jws import sign
from policy.model import build_payload
from policy.schema import defaults
from policy.store import MemoryVersionAnchor, PolicyStore
from policy.verify import TrustConfig, verify_policy

ROUNDS = 300


def _per_call(fn: Callable[[], object], rounds: int = ROUNDS) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - start) / rounds


def main() -> None:
    now = datetime.now(UTC)
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]
    settings = defaults()
    settings["network.spki_pins"] = tuple(
        base64.b64encode(hashlib.sha256(bytes([i])).digest()).decode() for i in range(2)
    )
    doc = build_payload(
        version=1,
        site="hmp-brixton",
        issued_at=now,
        not_before=now - timedelta(minutes=1),
        expires_at=now + timedelta(days=30),
        settings=settings,
        devices=tuple(f"dev-{i:05d}" for i in range(500)),
    )
    payload = json.dumps(doc, separators=(",", ":")).encode()
    one = sign(payload, keys[:1])
    two = sign(payload, keys[:2])
    trust1 = TrustConfig.from_keys([keys[0].public_key()], 1)
    trust23 = TrustConfig.from_keys([k.public_key() for k in keys], 2)

    envelope = json.loads(one)
    signing_input = f"{envelope['signatures'][0]['protected']}.{envelope['payload']}".encode()
    signature = keys[0].sign(signing_input)
    public = keys[0].public_key()
    baseline = _per_call(lambda: public.verify(signature, signing_input))

    def verify(env: bytes, trust: TrustConfig) -> Callable[[], object]:
        return lambda: verify_policy(
            env, trust, now=now, installed_version=None, site="hmp-brixton", device_id="dev-00042"
        )

    v11 = _per_call(verify(one, trust1))
    v23 = _per_call(verify(two, trust23))
    with tempfile.TemporaryDirectory() as tmp:
        store = PolicyStore(Path(tmp) / "policy.store", b"k" * 32, MemoryVersionAnchor())
        store.install(one, trust1, now=now, site="hmp-brixton", device_id="dev-00042")
        current = _per_call(
            lambda: store.current(trust1, now=now, site="hmp-brixton", device_id="dev-00042")
        )

    print(f"envelope: {len(one)} bytes (500 device ids), 2-signature envelope {len(two)} bytes")
    print(f"baseline Ed25519 verify      {baseline * 1e6:8.1f} µs")
    for label, value in (
        ("verify_policy 1-of-1", v11),
        ("verify_policy 2-of-3", v23),
        ("PolicyStore.current 1-of-1", current),
    ):
        print(f"{label:28} {value * 1e6:8.1f} µs  ratio {value / baseline:5.2f}x baseline")


if __name__ == "__main__":
    main()
