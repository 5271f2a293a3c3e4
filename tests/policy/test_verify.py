"""Envelope, signature, threshold and installation checks (SECURITY PO-1, PO-2)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from policy.jws import (
    MAX_ENVELOPE_BYTES,
    MAX_SIGNATURES,
    b64url_decode,
    b64url_encode,
    kid_for,
    sign,
)
from policy.verify import PolicyReason, PolicyRefused, TrustConfig, verify_policy
from tests.support.policy import (
    DEVICE,
    KEY_A,
    KEY_B,
    KEY_C,
    NOW,
    SITE,
    STRANGER,
    encode,
    payload_doc,
    signed,
    trust,
)


def check(
    envelope: bytes,
    trust_config: TrustConfig | None = None,
    *,
    now: Any = NOW,
    installed_version: int | None = None,
    site: str | None = SITE,
    device_id: str | None = DEVICE,
) -> Any:
    return verify_policy(
        envelope,
        trust_config or trust(KEY_A),
        now=now,
        installed_version=installed_version,
        site=site,
        device_id=device_id,
    )


def refused(envelope: bytes, **kwargs: Any) -> PolicyRefused:
    with pytest.raises(PolicyRefused) as info:
        check(envelope, **kwargs)
    return info.value


def reshape(envelope: bytes, edit: Any) -> bytes:
    doc = json.loads(envelope)
    edit(doc)
    return json.dumps(doc).encode()


def header(alg: str = "EdDSA", **extra: Any) -> str:
    fields = {"alg": alg, "kid": kid_for(KEY_A.public_key()), "typ": "gatehouse-policy+jws"}
    fields.update(extra)
    return b64url_encode(json.dumps(fields).encode())


def hand_signed(payload: bytes, protected: str, key: Any = KEY_A) -> bytes:
    payload_b64 = b64url_encode(payload)
    sig = key.sign(f"{protected}.{payload_b64}".encode())
    entry = {"protected": protected, "signature": b64url_encode(sig)}
    return json.dumps({"payload": payload_b64, "signatures": [entry]}).encode()


# --- the happy path -------------------------------------------------------------------


def test_PO1_valid_policy_verifies_and_keeps_exact_envelope() -> None:
    envelope = signed(payload_doc(version=3, session__idle_lock_seconds=120))
    policy = check(envelope)
    assert policy.version == 3
    assert policy.site == SITE
    assert policy.idle_lock_seconds == 120
    assert policy.get("auth.min_password_length") == 12  # omitted → default
    assert policy.envelope == envelope
    assert policy.signer_kids == (kid_for(KEY_A.public_key()),)
    with pytest.raises(TypeError):
        policy.settings["session.idle_lock_seconds"] = 1


def test_envelope_whitespace_outside_signed_strings_is_fine() -> None:
    envelope = signed(payload_doc())
    pretty = json.dumps(json.loads(envelope), indent=4).encode()
    assert check(pretty).version == 1


# --- too_large / malformed -------------------------------------------------------------


def test_too_large_is_refused_before_parsing() -> None:
    envelope = b"{" + b" " * MAX_ENVELOPE_BYTES + b"}"
    assert refused(envelope).reason is PolicyReason.TOO_LARGE


@pytest.mark.parametrize(
    "envelope",
    [
        b"",
        b"not json",
        b"[]",
        b"\xff\xfe{}",
        b'{"payload":"e30","signatures":[]}',
        b'{"payload":"e30","signatures":"x"}',
        b'{"payload":"e30"}',
    ],
)
def test_malformed_envelopes(envelope: bytes) -> None:
    assert refused(envelope).reason is PolicyReason.MALFORMED


def test_flattened_serialisation_is_refused() -> None:
    good = json.loads(signed(payload_doc()))
    flat = {"payload": good["payload"], **good["signatures"][0]}
    assert refused(json.dumps(flat).encode()).reason is PolicyReason.MALFORMED


def test_unprotected_header_is_refused() -> None:
    def add_header(doc: dict[str, Any]) -> None:
        doc["signatures"][0]["header"] = {"kid": kid_for(KEY_B.public_key())}

    envelope = reshape(signed(payload_doc()), add_header)
    assert refused(envelope).reason is PolicyReason.MALFORMED


def test_duplicate_members_are_refused() -> None:
    envelope = signed(payload_doc())
    doubled = envelope[:-1] + b',"payload":"e30"}'
    assert refused(doubled).reason is PolicyReason.MALFORMED


@pytest.mark.parametrize(
    "protected",
    [
        header(crit=["exp"]),
        header(jku="https://evil.example/keys"),
        header(typ="JWT"),
        b64url_encode(b'{"alg":"EdDSA","typ":"gatehouse-policy+jws"}'),
        b64url_encode(b"[1]"),
        b64url_encode(b"not json"),
    ],
)
def test_bad_protected_headers_are_malformed(protected: str) -> None:
    envelope = hand_signed(encode(payload_doc()), protected)
    assert refused(envelope).reason is PolicyReason.MALFORMED


def test_strict_base64url() -> None:
    assert b64url_decode("e30") == b"{}"
    for bad in ("e30=", "e3+", "e3/", "e 30", "e", "e31"):  # padding, alphabet, length, bits
        with pytest.raises(ValueError):
            b64url_decode(bad)
    envelope = signed(payload_doc())

    def pad(doc: dict[str, Any]) -> None:
        doc["payload"] += "=" * (-len(doc["payload"]) % 4 or 4)

    assert refused(reshape(envelope, pad)).reason is PolicyReason.MALFORMED


def test_too_many_signatures_is_malformed() -> None:
    def multiply(doc: dict[str, Any]) -> None:
        doc["signatures"] = doc["signatures"] * (MAX_SIGNATURES + 1)

    envelope = reshape(signed(payload_doc()), multiply)
    assert refused(envelope).reason is PolicyReason.MALFORMED


# --- signatures ------------------------------------------------------------------------


def test_PO1_tampered_payload_is_bad_signature() -> None:
    envelope = signed(payload_doc(ui__printing=False))
    evil = b64url_encode(encode(payload_doc(ui__printing=True)))

    def swap(doc: dict[str, Any]) -> None:
        doc["payload"] = evil

    assert refused(reshape(envelope, swap)).reason is PolicyReason.BAD_SIGNATURE


def test_PO1_signature_is_checked_before_the_payload_is_parsed() -> None:
    garbage = b"\x00 this is not JSON {"
    assert refused(sign(garbage, [STRANGER])).reason is PolicyReason.UNKNOWN_KEY
    forged = hand_signed(garbage, header(), key=STRANGER)  # claims KEY_A's kid
    assert refused(forged).reason is PolicyReason.BAD_SIGNATURE
    assert refused(sign(garbage, [KEY_A])).reason is PolicyReason.SCHEMA


@pytest.mark.parametrize("alg", ["none", "HS256", "ES256", "eddsa"])
def test_PO1_other_algorithms_are_refused(alg: str) -> None:
    envelope = hand_signed(encode(payload_doc()), header(alg=alg))
    assert refused(envelope).reason is PolicyReason.BAD_SIGNATURE


def test_truncated_signature_is_bad_signature() -> None:
    def truncate(doc: dict[str, Any]) -> None:
        doc["signatures"][0]["signature"] = b64url_encode(b"\x00" * 63)

    assert refused(reshape(signed(payload_doc()), truncate)).reason is PolicyReason.BAD_SIGNATURE


def test_PO1_unknown_key_is_refused() -> None:
    assert refused(signed(payload_doc(), STRANGER)).reason is PolicyReason.UNKNOWN_KEY


def test_a_bad_signature_by_a_trusted_key_refuses_even_above_threshold() -> None:
    envelope = signed(payload_doc(), KEY_A, KEY_B)

    def corrupt_second(doc: dict[str, Any]) -> None:
        doc["signatures"][1]["signature"] = doc["signatures"][0]["signature"]

    result = refused(reshape(envelope, corrupt_second), trust_config=trust(KEY_A, KEY_B))
    assert result.reason is PolicyReason.BAD_SIGNATURE


# --- threshold -------------------------------------------------------------------------


def test_two_of_three_accepts_any_two_distinct_trusted_keys() -> None:
    two_of_three = trust(KEY_A, KEY_B, KEY_C, threshold=2)
    for pair in ((KEY_A, KEY_B), (KEY_A, KEY_C), (KEY_C, KEY_B)):
        policy = check(signed(payload_doc(), *pair), two_of_three)
        assert set(policy.signer_kids) == {kid_for(k.public_key()) for k in pair}


def test_two_of_three_refuses_one_signature() -> None:
    two_of_three = trust(KEY_A, KEY_B, KEY_C, threshold=2)
    result = refused(signed(payload_doc(), KEY_B), trust_config=two_of_three)
    assert result.reason is PolicyReason.BELOW_THRESHOLD


def test_same_key_twice_counts_once() -> None:
    two_of_three = trust(KEY_A, KEY_B, KEY_C, threshold=2)

    def duplicate(doc: dict[str, Any]) -> None:
        doc["signatures"].append(dict(doc["signatures"][0]))

    envelope = reshape(signed(payload_doc(), KEY_A), duplicate)
    assert len(json.loads(envelope)["signatures"]) == 2
    assert refused(envelope, trust_config=two_of_three).reason is PolicyReason.BELOW_THRESHOLD


def test_unknown_signer_does_not_count_but_does_not_refuse() -> None:
    two_of_three = trust(KEY_A, KEY_B, KEY_C, threshold=2)
    with_stranger = signed(payload_doc(), KEY_A, STRANGER)
    assert refused(with_stranger, trust_config=two_of_three).reason is (
        PolicyReason.BELOW_THRESHOLD
    )
    assert check(signed(payload_doc(), KEY_A, STRANGER, KEY_B), two_of_three).version == 1


def test_sign_refuses_the_same_key_twice_and_no_keys() -> None:
    with pytest.raises(ValueError):
        sign(b"{}", [KEY_A, KEY_A])
    with pytest.raises(ValueError):
        sign(b"{}", [])


def test_trust_config_rules() -> None:
    with pytest.raises(ValueError):
        TrustConfig({"not-the-thumbprint": KEY_A.public_key()}, 1)
    with pytest.raises(ValueError):
        trust(KEY_A, KEY_B, threshold=3)
    with pytest.raises(ValueError):
        trust(KEY_A, threshold=0)
    assert len(TrustConfig.from_keys([KEY_A.public_key()] * 2).keys) == 1


# --- schema, time, rollback, site, device ---------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        payload_doc(session__idle_lock_seconds=5),
        payload_doc(session__idle_lock_seconds=True),
        payload_doc(session__idle_lock_seconds="300"),
        payload_doc(session__unknown_setting=1),
        payload_doc(network__tls13_only=False),
        payload_doc(version=0),
        payload_doc(version=1.0),  # type: ignore[arg-type]
        {**payload_doc(), "extra": 1},
        {k: v for k, v in payload_doc().items() if k != "devices"},
        {**payload_doc(), "type": "something-else"},
        {**payload_doc(), "expires_at": "2026-07-01T12:00:00+02:00"},
        {**payload_doc(), "site": "HMP Brixton"},
        payload_doc(devices=[]),
        payload_doc(devices=["a", "a"]),
        payload_doc(data__site_scope=["hmp-pentonville"]),
        payload_doc(not_before=NOW + timedelta(days=40)),
        [1, 2, 3],
    ],
)
def test_PO2_schema_violations_are_refused(doc: object) -> None:
    assert refused(signed(doc)).reason is PolicyReason.SCHEMA


def test_PO2_time_window_boundaries() -> None:
    envelope = signed(payload_doc(not_before=NOW, expires_at=NOW + timedelta(days=1)))
    assert check(envelope, now=NOW).version == 1
    early = refused(envelope, now=NOW - timedelta(seconds=1))
    assert early.reason is PolicyReason.NOT_YET_VALID
    late = refused(envelope, now=NOW + timedelta(days=1))
    assert late.reason is PolicyReason.EXPIRED
    assert check(envelope, now=NOW + timedelta(days=1) - timedelta(seconds=1)).version == 1


def test_naive_now_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        check(signed(payload_doc()), now=NOW.replace(tzinfo=None))


def test_PO2_rollback_refused_for_equal_and_older_versions() -> None:
    envelope = signed(payload_doc(version=5))
    assert refused(envelope, installed_version=5).reason is PolicyReason.ROLLBACK
    assert refused(envelope, installed_version=9).reason is PolicyReason.ROLLBACK
    assert check(envelope, installed_version=4).version == 5
    assert check(envelope, installed_version=None).version == 5


def test_PO2_wrong_site() -> None:
    envelope = signed(payload_doc(site="hmp-pentonville"))
    assert refused(envelope).reason is PolicyReason.WRONG_SITE
    assert check(envelope, site=None).site == "hmp-pentonville"  # not yet enrolled


def test_PO2_wrong_device() -> None:
    envelope = signed(payload_doc(devices=["dev-0002", "dev-0003"]))
    assert refused(envelope).reason is PolicyReason.WRONG_DEVICE
    assert refused(envelope, device_id=None).reason is PolicyReason.WRONG_DEVICE
    assert check(envelope, device_id="dev-0003").devices == ("dev-0002", "dev-0003")
    assert check(signed(payload_doc(devices=None)), device_id="anything").devices is None
