"""A conflict's two versions in clinical words: no field paths, no ids, authors and UK times."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from client.core.conflict_words import (
    GONE,
    NO_TIME,
    UNKNOWN_AUTHOR,
    ConflictView,
    confirmation,
    describe,
    side_by_side,
    view_of,
)
from client.core.conflicts import Conflict

RAW = ("valueQuantity", "Observation.", "obs-1", "doc-1", "pt-1", "8480-6", "loinc", "mm[Hg]")


def blood_pressure(systolic: float, diastolic: float, **extra: Any) -> dict[str, Any]:
    def part(code: str, value: float) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "unit": "mmHg", "code": "mm[Hg]"},
        }

    return {
        "resourceType": "Observation",
        "id": "obs-1",
        "meta": {"versionId": "3", "lastUpdated": "2026-12-05T14:05:00+00:00"},
        "subject": {"reference": "Patient/pt-1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "component": [part("8480-6", systolic), part("8462-4", diastolic)],
        **extra,
    }


def pulse(value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "obs-2",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": value, "unit": "beats/minute", "code": "/min"},
        "effectiveDateTime": "2026-07-01T10:30:00+00:00",
        "performer": [{"display": "Nurse Tom Reyes"}],
    }


def note(text: str, author: str | None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": "doc-1",
        "description": "Consultation note",
        "subject": {"reference": "Patient/pt-1"},
        "date": "2026-12-05T09:00:00+00:00",
        "content": [{"attachment": {"data": base64.b64encode(text.encode()).decode()}}],
    }
    if author is not None:
        resource["author"] = [{"identifier": {"value": "u1"}, "display": author}]
    return resource


def everything(version: Any) -> str:
    return version.text() + " ".join(f"{a} {b}" for a, b in version.items)


def test_observations_read_as_the_chart_writes_them() -> None:
    bp = describe(blood_pressure(120, 80, performer=[{"display": "Dr Mina Okafor"}]))
    assert bp.title == "Blood pressure"
    assert bp.items == (("Blood pressure", "120/80 mmHg"),)
    assert bp.author == "Dr Mina Okafor"
    assert bp.when == "05-Dec-2026 14:05"  # December: GMT, same as UTC
    hr = describe(pulse(72))
    assert hr.items == (("Heart rate", "72 /min"),)
    assert hr.when == "01-Jul-2026 11:30"  # July: BST, UTC + 1
    for version in (bp, hr):
        for raw in RAW:
            assert raw not in everything(version), raw


def test_a_note_shows_its_text_and_says_honestly_when_the_author_is_unknown() -> None:
    version = describe(note("Chest clear. Review in 2 weeks.", None), changed_at=None)
    assert version.title == "Consultation note"
    assert version.items == (("Note", "Chest clear. Review in 2 weeks."),)
    assert version.author == UNKNOWN_AUTHOR
    assert version.when == "05-Dec-2026 09:00"
    assert "Written by unknown author, 05-Dec-2026 09:00" in version.text()
    undated = describe({"resourceType": "Condition", "code": {"text": "Asthma"}})
    assert undated.when == NO_TIME and undated.items[0] == ("Problem", "Asthma")


def test_the_laptops_change_time_wins_over_the_records_own_date() -> None:
    version = describe(note("x", "Dr A"), changed_at="2026-06-01T00:00:00+00:00")
    assert version.when == "01-Jun-2026 01:00"


def test_rows_line_the_versions_up_and_mark_what_differs() -> None:
    mine = describe(note("Mine", "Dr A"))
    theirs = describe(note("Theirs", "Nurse B"))
    rows = {row.label: row for row in side_by_side(mine, theirs)}
    assert rows["Note"].mine == "Mine" and rows["Note"].theirs == "Theirs" and rows["Note"].differs
    assert rows["Written by"].differs and not rows["When"].differs
    gone = describe(None)
    assert gone.text() == GONE and not gone.present


def conflict(local: dict[str, Any], server: dict[str, Any] | None) -> ConflictView:
    record = Conflict(1, 9, "DocumentReference", "doc-1", "pt-1", local, server, "2026-12-05")
    return view_of(record, None)


def test_the_confirmation_says_whose_words_are_discarded() -> None:
    view = conflict(note("Mine", "Dr Mina Okafor"), note("Theirs", "Nurse Tom Reyes"))
    title, sentence, discard = confirmation(view, "theirs")
    assert title == "Discard your version?" and "&" in discard
    assert "written by Dr Mina Okafor" in sentence and "deleted from this laptop" in sentence
    title, sentence, discard = confirmation(view, "mine")
    assert "written by Nurse Tom Reyes" in sentence and "replaced by yours" in sentence
    assert "a patient not on this laptop" in view.summary() and "doc-1" not in view.summary()
    with pytest.raises(ValueError):
        confirmation(view, "both")
