"""Fuzzing the verifier: any input gives a Policy or PolicyRefused, never another exception."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.jws import b64url_encode, sign
from policy.model import Policy
from policy.schema import SETTINGS, validate_settings
from policy.verify import PolicyReason, PolicyRefused, verify_policy
from tests.support.policy import DEVICE, KEY_A, NOW, SITE, encode, payload_doc, signed, trust

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TRUST = trust(KEY_A)
GOOD_DOC = payload_doc(version=4)
GOOD = signed(GOOD_DOC)
GOOD_POLICY = verify_policy(GOOD, TRUST, now=NOW, installed_version=None, site=SITE, device_id=None)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=20,
)


def outcome(envelope: bytes) -> Policy | PolicyRefused:
    try:
        return verify_policy(
            envelope, TRUST, now=NOW, installed_version=None, site=SITE, device_id=DEVICE
        )
    except PolicyRefused as exc:
        return exc


@FUZZ
@given(st.binary(max_size=4096))
def test_any_bytes_give_policy_or_refusal(data: bytes) -> None:
    result = outcome(data)
    assert isinstance(result, PolicyRefused)


@FUZZ
@given(json_values)
def test_any_json_envelope_gives_refusal(value: Any) -> None:
    assert isinstance(outcome(json.dumps(value).encode()), PolicyRefused)


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(GOOD) - 1), st.binary(max_size=3)),
        min_size=1,
        max_size=4,
    )
)
def test_PO1_mutated_envelope_never_yields_another_policy(edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(GOOD)
    for index, replacement in edits:
        data[index : index + 1] = replacement
    result = outcome(bytes(data))
    if isinstance(result, Policy):  # only harmless edits (e.g. whitespace) may pass
        assert dict(result.settings) == dict(GOOD_POLICY.settings)
        assert result.version == GOOD_POLICY.version


@FUZZ
@given(st.binary(max_size=2048))
def test_any_signed_payload_bytes_give_policy_or_schema_refusal(payload: bytes) -> None:
    result = outcome(sign(payload, [KEY_A]))
    assert isinstance(result, PolicyRefused)
    assert result.reason is PolicyReason.SCHEMA


@FUZZ
@given(
    st.dictionaries(st.sampled_from([s.name for s in SETTINGS]), json_values, max_size=4),
    st.dictionaries(st.sampled_from(sorted(GOOD_DOC)), json_values, max_size=2),
)
def test_any_signed_payload_document_gives_policy_or_refusal(
    setting_changes: dict[str, Any], top_changes: dict[str, Any]
) -> None:
    doc = json.loads(json.dumps(GOOD_DOC))
    doc["settings"].update(setting_changes)
    doc.update(top_changes)
    result = outcome(sign(encode(doc), [KEY_A]))
    if isinstance(result, Policy):
        for name, value in setting_changes.items():
            expected = tuple(value) if isinstance(value, list) else value
            assert result.get(name) == expected
    else:
        assert result.reason in {
            PolicyReason.SCHEMA,
            PolicyReason.NOT_YET_VALID,
            PolicyReason.EXPIRED,
            PolicyReason.WRONG_SITE,
            PolicyReason.WRONG_DEVICE,
        }


@FUZZ
@given(st.dictionaries(st.text(max_size=40), json_values, max_size=6))
def test_validate_settings_never_raises_anything_else(mapping: dict[str, Any]) -> None:
    try:
        validate_settings(mapping)
    except PolicyRefused as exc:
        assert exc.reason is PolicyReason.SCHEMA


def test_deep_nesting_is_refused_not_crashed() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert outcome(deep[:200_000]).reason is PolicyReason.MALFORMED  # type: ignore[union-attr]
    payload_deep = sign(b"[" * 50_000 + b"]" * 50_000, [KEY_A])
    assert outcome(payload_deep).reason is PolicyReason.SCHEMA  # type: ignore[union-attr]
    header = b64url_encode(b"[" * 600 + b"]" * 600)
    nested_header = json.dumps(
        {"payload": "e30", "signatures": [{"protected": header, "signature": "AA"}]}
    ).encode()
    assert outcome(nested_header).reason is PolicyReason.MALFORMED  # type: ignore[union-attr]
