"""Audit exports in the core, without Qt: one writer for the laptop's chain and the gateway's
results; nothing is written unless the act was allowed and audited; files are private."""

from __future__ import annotations

import csv
import datetime as dt
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.core.accounts import LoginRefused
from client.core.audit_export import WORD_COLUMNS, export_gateway_results, export_local
from client.core.session import NotAllowed, Session
from sync.protocol.audit.audit_event import CSV_HEADER, entries_from_bundle
from sync.protocol.audit.chain import verify
from tests.support.device import CLINICIAN, DEVICE_ID, ProvisionedDevice, provision

AUDITOR = ("ig.sam", "auditor passphrase")


@pytest.fixture
def td(tmp_path: Path) -> ProvisionedDevice:
    return provision(tmp_path / "d", role="auditor", user=AUDITOR)


@pytest.fixture
def auditor(td: ProvisionedDevice) -> Iterator[Session]:
    session = Session.login(td.device, *AUDITOR)
    yield session
    session.lock()


def test_the_laptops_chain_exports_as_a_verifiable_private_bundle_and_csv(
    auditor: Session, tmp_path: Path
) -> None:
    out_json, out_csv = tmp_path / "audit.json", tmp_path / "audit.csv"
    written = export_local(auditor, out_json, "json")
    assert stat.S_IMODE(out_json.stat().st_mode) == 0o600
    entries = entries_from_bundle(json.loads(out_json.read_bytes()))
    assert len(entries) == written
    assert verify(entries, device_id=DEVICE_ID, initial_key=None).ok
    assert entries[-1].action == "export" and entries[-1].user_id == AUDITOR[0]  # audited first
    export_local(auditor, out_csv, "csv")
    assert stat.S_IMODE(out_csv.stat().st_mode) == 0o600
    rows = list(csv.reader(out_csv.read_text(encoding="utf-8").splitlines()))
    assert tuple(rows[0]) == (*CSV_HEADER, *WORD_COLUMNS)  # the codes, then the same in words
    assert len(rows) == written + 2  # header, one more export


def test_a_clinician_or_an_unknown_format_writes_nothing(auditor: Session, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        export_local(auditor, tmp_path / "a.xml", "xml")
    assert not (tmp_path / "a.xml").exists()
    assert "export" not in [e.action for e in auditor.audit_entries()]
    td = provision(tmp_path / "c")
    clinician = Session.login(td.device, *CLINICIAN)
    with pytest.raises(NotAllowed):
        export_local(clinician, tmp_path / "c.json", "json")
    assert not (tmp_path / "c.json").exists()
    clinician.lock()


def test_gateway_results_need_the_password_again_and_are_audited_either_way(
    td: ProvisionedDevice, auditor: Session, tmp_path: Path
) -> None:
    shown = auditor.audit_entries()  # stands in for results the gateway returned
    refused = tmp_path / "no.csv"
    with pytest.raises(LoginRefused):
        export_gateway_results(auditor, "not the password", shown, refused, "csv")
    assert not refused.exists()
    td.clocks.advance(dt.timedelta(seconds=5))  # past the throttle the wrong password caused
    out = tmp_path / "results.json"
    assert export_gateway_results(auditor, AUDITOR[1], shown, out, "json") == len(shown)
    assert entries_from_bundle(json.loads(out.read_bytes())) == shown
    exports = [e for e in auditor.audit_entries() if e.action == "export"]
    assert [e.outcome for e in exports] == ["denied", "success"]
    assert exports[-1].detail["events"] == len(shown)
