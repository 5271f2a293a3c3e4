"""Issue 13: the records server's profile in words for IT (``describe_server_profile``)."""

from __future__ import annotations

from client.core.server_profile import describe_server_profile


def test_each_missing_capability_is_one_sentence_saying_what_the_laptop_does() -> None:
    document = {
        "software": "Acme FHIR",
        "fhir_version": "4.0.1",
        "read_at": "2026-12-01T10:00:00+00:00",
        "transaction": False,
        "max_transaction_entries": 8,
        "types": {
            "Patient": {"history_type": True, "search_type": True},
            "Observation": {"history_type": True, "search_type": True, "if_match": False},
            "Encounter": {"history_type": True, "search_type": True, "if_match": True},
        },
        "missing": ["transaction", "Observation:if-match", "Observation:conditional-create"],
    }
    summary = describe_server_profile(document)
    assert summary.server == "Acme FHIR (FHIR 4.0.1), read 01-Dec-2026 10:00"
    assert summary.offers == (
        "Offers change history (every record type); search (every record type); "
        "versioned updates (encounters); at most 8 entries per transaction."
    )
    assert summary.missing == (
        "No transactions: notes cannot be sent to this server. Call IT.",
        "No conditional create for observations: the laptop looks each new note up before "
        "sending it, so a lost reply never files it twice; this costs a few more requests.",
        "No versioned updates (If-Match) for observations: edits are held on the laptop, not "
        "sent, because they could overwrite someone else's. Call IT.",
    )


def test_a_damaged_or_absent_profile_is_described_not_raised() -> None:
    assert describe_server_profile(None).server.startswith("Not read yet")
    damaged = describe_server_profile({"types": "x", "missing": 3, "software": "\x00"})
    assert damaged.server == "An unnamed FHIR server"
    assert damaged.missing == ()
