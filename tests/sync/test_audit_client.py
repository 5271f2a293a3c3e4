"""``sync.device.audit_queries`` against the real gateway in-process (mutual TLS on
127.0.0.1, pinned): searches with every filter, paging, site isolation, chain status, CSV,
refusals, strictness."""

from __future__ import annotations

import copy
import csv
import dataclasses
import datetime as dt
import io
from collections.abc import Iterator
from typing import Any

import pytest

import sync.device.audit_queries as audit_client
from sync.device.audit_queries import (
    AuditClientError,
    AuditQuery,
    audit_event_entry,
    chain_status,
    download_csv,
    parse_chains,
    search_audit,
)
from sync.device.transport import Transport
from sync.protocol.audit.audit_event import to_audit_event
from sync.protocol.audit.report import out_of_hours
from tests.support.control import (
    Enrolled,
    add_user,
    bearer,
    break_glass,
    chain,
    enrol,
    enrol_with_entries,
    upload,
    views,
)
from tests.support.gateway import SITE_A, SITE_B, Gateway, running_gateway
from tests.support.sync import transport_config

# T0 of control_helpers is Friday 2026-11-20 09:00 UTC; entry n is at T0 + n minutes.
AFTER_HOURS = dt.datetime(2026, 11, 20, 19, 0, tzinfo=dt.UTC)


@dataclasses.dataclass
class Site:
    gw: Gateway
    laptop: Enrolled
    other: Enrolled
    auditor: str  # an auditor's token, bound to laptop's certificate
    admin_b: str  # an admin of site B, bound to other's certificate
    clinician: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("audit-client")
    with running_gateway(folder) as gw:
        laptop = enrol(gw, SITE_A, folder / "a")
        actions = [
            *views(2, user="nurse1", patient="pt000001"),
            break_glass("nurse2", "pt000002", "<b>collapsed</b> on the wing"),
            {
                "action": "record_view",
                "outcome": "success",
                "user_id": "nurse2",
                "role": "clinician",
                "patient_id": "pt000002",
                "purpose": "BTG",
            },
            {"action": "login_failed", "outcome": "failure", "user_id": "nurse1"},
        ]
        entries, state = chain(laptop.device_id, laptop.k0, actions)
        late, _ = chain(
            laptop.device_id,
            laptop.k0,
            views(1, user="nurse3", patient="pt000003"),
            state=state,
            start=AFTER_HOURS - dt.timedelta(minutes=state.seq),
        )
        assert upload(gw, gw.session(laptop.creds), [*entries, *late]).status_code == 200
        other = enrol_with_entries(gw, SITE_B, folder / "b", views(3, user="nurse-b"))
        add_user(gw, "aud-a", "auditor", SITE_A)
        add_user(gw, "adm-b", "admin", SITE_B)
        add_user(gw, "doc-a", "clinician", SITE_A)
        yield Site(
            gw,
            laptop,
            other,
            bearer(gw, gw.session(laptop.creds), laptop.device_id, "aud-a"),
            bearer(gw, gw.session(other.creds), other.device_id, "adm-b"),
            bearer(gw, gw.session(laptop.creds), laptop.device_id, "doc-a"),
        )


def transport(site: Site, who: Enrolled | None = None) -> Transport:
    creds = (who or site.laptop).creds
    return Transport(transport_config(site.gw.url, site.gw.pki.server_pin, creds))


def search(site: Site, query: AuditQuery, token: str | None = None) -> list[tuple[str, str]]:
    with transport(site) as t:
        found = search_audit(t, token or site.auditor, query)
    assert [audit_event_entry(e) for e in found.events] == found.entries
    return [(e.user_id or "", e.action) for e in found.entries]


def test_all_events_of_the_site_in_time_order(site: Site) -> None:
    with transport(site) as t:
        found = search_audit(t, site.auditor, AuditQuery())
    assert [e.seq for e in found.entries] == [1, 2, 3, 4, 5, 6]
    assert {e.device_id for e in found.entries} == {site.laptop.device_id}  # never site B
    assert not found.truncated
    assert all(e["resourceType"] == "AuditEvent" for e in found.events)


def test_who_opened_patient_x(site: Site) -> None:
    assert search(site, AuditQuery(patient_id="pt000002")) == [
        ("nurse2", "break_glass"),
        ("nurse2", "record_view"),
    ]


def test_all_break_glass_by_user_device_and_action(site: Site) -> None:
    assert search(site, AuditQuery(break_glass=True)) == [
        ("nurse2", "break_glass"),
        ("nurse2", "record_view"),
    ]
    assert search(site, AuditQuery(user_id="nurse1")) == [
        ("nurse1", "record_view"),
        ("nurse1", "record_view"),
        ("nurse1", "login_failed"),
    ]
    assert len(search(site, AuditQuery(device_id=site.laptop.device_id))) == 6
    assert search(site, AuditQuery(device_id=site.other.device_id)) == []
    assert search(site, AuditQuery(action="login_failed")) == [("nurse1", "login_failed")]


def test_date_range_and_out_of_hours(site: Site) -> None:
    day = AFTER_HOURS.date()
    assert len(search(site, AuditQuery(since=day, until=day))) == 6
    assert search(site, AuditQuery(until=day - dt.timedelta(days=1))) == []
    assert search(site, AuditQuery(out_of_hours=True)) == [("nurse3", "record_view")]
    assert out_of_hours(dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC))  # a Saturday
    assert not out_of_hours(dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC))
    with pytest.raises(AuditClientError) as caught:
        AuditQuery(since=day, until=day - dt.timedelta(days=1)).params()
    assert caught.value.reason == "bad_query"


def test_paging_follows_next_links_and_stops_at_the_cap(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_client, "PAGE_SIZE", 2)
    with transport(site) as t:
        found = search_audit(t, site.auditor, AuditQuery())
        assert [e.seq for e in found.entries] == [1, 2, 3, 4, 5, 6]
        assert t.counters.requests >= 3
        monkeypatch.setattr(audit_client, "MAX_RESULTS", 3)
        capped = search_audit(t, site.auditor, AuditQuery())
    assert [e.seq for e in capped.entries] == [1, 2, 3] and capped.truncated


def test_admin_of_another_site_sees_only_that_site(site: Site) -> None:
    with transport(site, site.other) as t:
        found = search_audit(t, site.admin_b, AuditQuery())
        rows = chain_status(t, site.admin_b)
    assert {e.device_id for e in found.entries} == {site.other.device_id}
    assert [r["device_id"] for r in rows] == [site.other.device_id]


def test_chain_status_per_device(site: Site) -> None:
    with transport(site) as t:
        rows = chain_status(t, site.auditor)
    (row,) = rows
    assert row["device_id"] == site.laptop.device_id
    assert row["last_seq"] == 6 and row["alerts"] == 0 and row["latest_alert"] is None
    assert row["last_receipt_at"]


def test_csv_download_is_the_gateways_formula_safe_csv(site: Site) -> None:
    with transport(site) as t:
        raw = download_csv(t, site.auditor, AuditQuery(patient_id="pt000002"))
        with pytest.raises(AuditClientError) as caught:
            download_csv(t, site.auditor, AuditQuery(out_of_hours=True))
    assert caught.value.reason == "bad_query"
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
    assert rows[0][:3] == ["seq", "ts", "device_id"]
    assert [r[5] for r in rows[1:]] == ["break_glass", "record_view"]


def test_a_clinician_token_is_refused_and_bad_tokens_too(site: Site) -> None:
    with transport(site) as t:
        with pytest.raises(AuditClientError) as caught:
            search_audit(t, site.clinician, AuditQuery())
        assert caught.value.reason == "role_forbidden"
        with pytest.raises(AuditClientError) as caught:
            chain_status(t, "not-a-token")
        assert caught.value.reason == "bearer_invalid"
    # a token bound to another device's certificate is useless on this one
    with transport(site) as t:
        with pytest.raises(AuditClientError) as caught:
            search_audit(t, site.admin_b, AuditQuery())
    assert caught.value.reason == "bearer_invalid"


def test_an_auditor_token_never_reads_fhir(site: Site) -> None:
    """Auditors see audit trails, not clinical content: /fhir refuses their token."""
    headers = {"Authorization": f"Bearer {site.auditor}"}
    with transport(site) as t:
        for path in ("fhir/Patient", "fhir/Patient?_count=1", "fhir/_history"):
            answer = t.get(path, headers=headers)
            assert answer.status == 403, path
            assert b"role_forbidden" in answer.body
            assert b"pt0000" not in answer.body
    with transport(site, site.other) as t:
        admin = t.get("fhir/Patient", headers={"Authorization": f"Bearer {site.admin_b}"})
    assert admin.status == 403 and b"role_forbidden" in admin.body


# -- strictness: what a hostile or broken server could send -----------------------------------


def _one_event(site: Site) -> dict[str, Any]:
    with transport(site) as t:
        found = search_audit(t, site.auditor, AuditQuery(action="break_glass"))
    (event,) = found.events
    assert to_audit_event(found.entries[0]) == event
    return event


def test_NW3_an_audit_event_with_anything_added_or_changed_is_refused(site: Site) -> None:
    event = _one_event(site)
    audit_event_entry(event)
    for edit in (
        lambda e: e.update(text={"div": "<div>clinical note</div>"}),
        lambda e: e["purposeOfEvent"][0].update(text="edited reason"),
        lambda e: e.update(recorded="2020-01-01T00:00:00+00:00"),
        lambda e: e["extension"][0]["extension"].pop(),
        lambda e: e.update(resourceType="Patient"),
    ):
        bad = copy.deepcopy(event)
        edit(bad)
        with pytest.raises(AuditClientError) as caught:
            audit_event_entry(bad)
        assert caught.value.reason == "bad_answer"


def test_NW3_chain_status_rows_are_checked_strictly() -> None:
    good = {
        "device_id": "dev-1",
        "last_seq": 3,
        "head_hash": "ab" * 32,
        "last_receipt_at": None,
        "alerts": 1,
        "latest_alert": {"raised_at": "2026-11-20T09:00:00Z", "first_bad_seq": 2, "reason": "gap"},
    }
    assert parse_chains({"chains": [good]}) == [good]
    for bad in (
        [],
        {"chains": {}},
        {"chains": [good], "more": 1},
        {"chains": [{**good, "patient": "pt1"}]},
        {"chains": [{**good, "last_seq": -1}]},
        {"chains": [{**good, "alerts": True}]},
        {"chains": [{**good, "device_id": ""}]},
        {"chains": [{**good, "latest_alert": {"reason": "x"}}]},
    ):
        with pytest.raises(AuditClientError) as caught:
            parse_chains(bad)
        assert caught.value.reason == "bad_answer"


def test_query_values_are_bounded_and_described_without_content() -> None:
    with pytest.raises(AuditClientError):
        AuditQuery(patient_id="x" * 300).params()
    with pytest.raises(AuditClientError):
        AuditQuery(user_id="  ").params()
    query = AuditQuery(patient_id="pt1", since=dt.date(2026, 11, 1), break_glass=True)
    assert query.describe() == {"patient_id": "pt1", "since": "2026-11-01", "break_glass": "yes"}
    with pytest.raises(AuditClientError):
        AuditQuery(device_id="dev\x00").describe()
    assert ("purpose", "BTG") in query.params()
