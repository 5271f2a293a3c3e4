"""A recorded "no known allergy" is shown as such: never as an allergy, never as "nothing"."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from client.core import records
from client.core.chart import Chart, open_chart
from tests.support.fhir import allergy, open_db, patient

SCOPE = ("hmp-brixton",)  # the device's sites, for chart completeness (UI-5)


def _nka(rid: str, pid: str) -> dict[str, object]:
    resource = allergy(rid, pid, "No known allergy", criticality="low")
    resource["code"] = {
        "coding": [{"system": "http://snomed.info/sct", "code": "716186003"}],
        "text": "No known allergy",
    }
    resource.pop("reaction")
    return resource


def _chart(tmp_path: Path, *resources: dict[str, object]) -> Chart:
    conn = open_db(tmp_path / "v.db")
    conn.execute("BEGIN")
    records.apply_resources(conn, [patient("p1", "Okafor", ["Grace"]), *resources])
    conn.execute("COMMIT")
    return open_chart(conn, "p1", today=dt.date(2026, 11, 22), site_scope=SCOPE)


def test_no_known_allergy_is_not_listed_as_an_allergy(tmp_path: Path) -> None:
    chart = _chart(tmp_path, _nka("a1", "p1"))
    assert chart.allergies == ()
    assert chart.no_known_allergies is True


def test_a_real_allergy_outranks_an_older_no_known_allergy_record(tmp_path: Path) -> None:
    chart = _chart(tmp_path, _nka("a1", "p1"), allergy("a2", "p1", "Penicillin"))
    assert [a.substance for a in chart.allergies] == ["Penicillin"]
    assert chart.no_known_allergies is False


def test_nothing_recorded_is_not_no_known_allergies(tmp_path: Path) -> None:
    chart = _chart(tmp_path)
    assert chart.allergies == () and chart.no_known_allergies is False
