"""The auditor's patient and day search in the core, the remembered re-authentication, and
the audit codes in plain words (no Qt)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from client.core import audit_search
from client.core.audit_reauth import REAUTH_WINDOW_SECONDS, ReauthMemory
from client.core.audit_search import AuditFilter, AuditSearchError, find_patient_ids, local_day
from client.core.audit_words import ACTION_WORDS, action_words, outcome_words, purpose_words
from client.core.session import NotAllowed, Session
from sync.protocol.audit.audit_event import _MAPPING
from tests.support.device import CLINICIAN, load_records, provision
from tests.support.fhir import SEARCH_PATIENTS, nhs_number


@pytest.fixture
def clinician(tmp_path: Path) -> Session:
    td = provision(tmp_path / "data")
    load_records(td.device, SEARCH_PATIENTS)
    return Session.login(td.device, *CLINICIAN)


def ids(session: Session, text: str, known: tuple[str, ...] = ()) -> frozenset[str]:
    with session._act() as conn:
        return find_patient_ids(conn, text, known_ids=known)


def test_a_patient_by_nhs_number_date_of_birth_name_or_id(clinician: Session) -> None:
    nhs = nhs_number(200001)
    for typed in (nhs, f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}", f"{nhs[:3]}-{nhs[3:6]}-{nhs[6:]}"):
        assert ids(clinician, typed) == {"p-zoe"}
    for typed in ("25-Dec-1990", "25/12/90", "25/12/1990", "1990-12-25"):
        assert ids(clinician, typed) == {"p-zoe"}
    assert ids(clinician, "zoe brown") == {"p-zoe"}
    assert ids(clinician, "Brown 25/12/1990") == {"p-zoe"}
    assert ids(clinician, "p-zoe") == {"p-zoe"}
    assert ids(clinician, "p-purged-long-ago", ("p-purged-long-ago",)) == {"p-purged-long-ago"}
    assert ids(clinician, nhs_number(999999)) == frozenset()


def test_part_of_an_nhs_number_is_refused_not_a_prefix(clinician: Session) -> None:
    with pytest.raises(AuditSearchError) as refused:
        ids(clinician, nhs_number(200001)[:6])
    assert refused.value.reason == "nhs_incomplete"
    with pytest.raises(AuditSearchError):
        ids(clinician, "   ")


def test_only_auditors_and_admins_search_the_audit_log(clinician: Session) -> None:
    with pytest.raises(NotAllowed):
        clinician.audit_search("p-zoe", None, None)
    with pytest.raises(NotAllowed):
        audit_search.resolve_patients(clinician, "p-zoe")


def test_days_are_uk_local_days() -> None:
    # 23:30 UTC on 1 June is 00:30 on 2 June in London (BST); in December they agree.
    assert local_day("2026-06-01T23:30:00+00:00") == dt.date(2026, 6, 2)
    assert local_day("2026-12-01T23:30:00+00:00") == dt.date(2026, 12, 1)
    assert local_day("not a time") is None
    assert audit_search.gateway_days(dt.date(2026, 6, 2), dt.date(2026, 6, 3)) == (
        dt.date(2026, 6, 1),
        dt.date(2026, 6, 4),
    )
    with pytest.raises(AuditSearchError):
        AuditFilter(None, dt.date(2026, 6, 3), dt.date(2026, 6, 2))


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def test_the_password_is_remembered_for_the_window_only_and_forgotten_on_demand() -> None:
    clock = FakeMonotonic()
    memory = ReauthMemory(clock)
    assert not memory.confirmed and memory.token() is None
    memory.remember("tok-1")
    clock.now += REAUTH_WINDOW_SECONDS - 1
    assert memory.confirmed and memory.token() == "tok-1"
    clock.now += 2
    assert not memory.confirmed and memory.token() is None
    memory.remember("tok-2")
    clock.now += 60
    memory.remember()  # a device-only proof: the token still ends a window after it was given
    clock.now += REAUTH_WINDOW_SECONDS - 30
    assert memory.confirmed and memory.token() is None
    memory.forget()
    assert not memory.confirmed
    clock.now -= 10_000  # a clock that went backwards never extends anything
    assert not memory.confirmed


def test_every_action_reads_as_words() -> None:
    assert action_words("record_view") == "Opened record"
    assert action_words("break_glass") == "Break-glass access"
    assert action_words("sync") == "Sync"
    assert action_words("some_new_thing") == "Some new thing"
    assert purpose_words("BTG") == "Break-glass" and purpose_words("TREAT") == "Care"
    assert purpose_words(None) == "" and outcome_words("denied") == "Refused"
    for code in _MAPPING:  # every action the FHIR mapping knows has chosen words
        assert code in ACTION_WORDS, code
