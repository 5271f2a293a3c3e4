"""Parsers facing the network refuse anything malformed with FhirError only (never a crash)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.gateway.api.bundle_entries import parse_bundle
from sync.gateway.api.fhir import decode_cursor, encode_cursor
from sync.gateway.api.outcome import FhirError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=30,
)
entry_like = st.fixed_dictionaries(
    {
        "request": st.fixed_dictionaries(
            {
                "method": st.sampled_from(["POST", "PUT", "DELETE", "GET"]) | json_values,
                "url": st.sampled_from(["Patient", "Observation/x", "Patient/a/b", "", "Flag"])
                | json_values,
            },
            optional={"ifMatch": json_values, "ifNoneExist": json_values},
        )
    },
    optional={"resource": json_values, "fullUrl": json_values},
)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=60).map(str.encode))
def test_bundle_parser_refuses_arbitrary_bytes_with_fhir_error_only(body: bytes) -> None:
    try:
        parse_bundle(body)
    except FhirError as err:
        assert 400 <= err.status < 500


@settings(max_examples=150, deadline=None)
@given(st.lists(entry_like | json_values, max_size=4), st.sampled_from(["transaction", "batch"]))
def test_bundle_parser_refuses_arbitrary_entries_with_fhir_error_only(
    entries: list[Any], kind: str
) -> None:
    body = orjson.dumps({"resourceType": "Bundle", "type": kind, "entry": entries})
    try:
        parsed_kind, parsed = parse_bundle(body)
    except FhirError as err:
        assert 400 <= err.status < 500
    else:
        assert parsed_kind == kind and len(parsed) == len(entries)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_cursor_decoder_refuses_garbage_with_fhir_error_only(token: str) -> None:
    try:
        seq = decode_cursor(token, "h")
    except FhirError as err:
        assert err.status == 400
    else:
        assert seq >= 0


@given(st.integers(min_value=0, max_value=2**62))
def test_cursor_round_trips(seq: int) -> None:
    assert decode_cursor(encode_cursor("s", seq), "s") == seq
