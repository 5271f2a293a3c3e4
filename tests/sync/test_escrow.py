"""Escrow seal of the DEK to the gateway's X25519 key: round trip, binding, one error."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.protocol.escrow import EscrowError, escrow_aad, seal, unseal

GATEWAY = X25519PrivateKey.generate()
GATEWAY_PUBLIC = GATEWAY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
AAD = escrow_aad("dev-0001")


def test_seal_round_trips_with_raw_or_object_public_key() -> None:
    dek = secrets.token_bytes(32)
    for recipient in (GATEWAY_PUBLIC, GATEWAY.public_key()):
        blob = seal(dek, recipient, AAD)
        assert unseal(blob, GATEWAY, AAD) == dek
        assert dek not in blob
    assert seal(dek, GATEWAY_PUBLIC, AAD) != seal(dek, GATEWAY_PUBLIC, AAD)  # ephemeral each time


def test_only_the_gateway_key_and_the_right_device_open_it() -> None:
    blob = seal(secrets.token_bytes(32), GATEWAY_PUBLIC, AAD)
    failures = [
        (blob, X25519PrivateKey.generate(), AAD),
        (blob, GATEWAY, escrow_aad("dev-0002")),
        (blob, GATEWAY, b""),
        (blob[:-1], GATEWAY, AAD),
        (b"", GATEWAY, AAD),
        (b"\x02" + blob[1:], GATEWAY, AAD),
        (blob[:1] + b"\x00" * 32 + blob[33:], GATEWAY, AAD),  # low-order ephemeral point
    ]
    reasons = set()
    for bad_blob, key, aad in failures:
        with pytest.raises(EscrowError) as caught:
            unseal(bad_blob, key, aad)
        reasons.add((type(caught.value), caught.value.reason, str(caught.value)))
    assert reasons == {(EscrowError, "escrow_unseal_failed", "escrow_unseal_failed")}


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_fails_with_the_same_error(position: int, flip: int) -> None:
    blob = bytearray(seal(b"k" * 32, GATEWAY_PUBLIC, AAD))
    blob[position % len(blob)] ^= flip
    with pytest.raises(EscrowError) as caught:
        unseal(bytes(blob), GATEWAY, AAD)
    assert caught.value.reason == "escrow_unseal_failed"


def test_seal_refuses_an_empty_secret_or_a_bad_public_key() -> None:
    with pytest.raises(EscrowError):
        seal(b"", GATEWAY_PUBLIC, AAD)
    with pytest.raises(EscrowError):
        seal(b"k" * 32, b"short", AAD)
    with pytest.raises(EscrowError):
        seal(b"k" * 32, b"\x00" * 32, AAD)  # low-order point: shared secret all zeros


def test_aad_names_the_device() -> None:
    assert escrow_aad("dev-0001") != escrow_aad("dev-0002")
    assert b"dev-0001" in escrow_aad("dev-0001")
