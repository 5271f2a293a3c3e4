"""The admin's view of the laptop in the core, without Qt: the users are read through a
role-checked, audited Session call; the certificate's expiry and the storage used are facts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from client.core.device import TLS_CERT
from client.core.device_admin import certificate_expiry, device_facts, storage_used
from client.core.session import NotAllowed, Session
from client.core.vault import database_path
from sync.protocol.audit.entry import AuditEntry
from tests.support.certificates import certificate_pem
from tests.support.device import CLINICIAN, T0, provision

ADMIN = ("it.admin", "admin passphrase!")


def _entries(session: Session) -> list[AuditEntry]:
    with session._act() as conn:  # raw read: the clinician may not list the audit log
        return session._audit.entries(conn)


def test_a_clinician_may_not_list_the_device_users_and_the_refusal_is_audited(
    tmp_path: Path,
) -> None:
    td = provision(tmp_path / "d")
    session = Session.login(td.device, *CLINICIAN)
    with pytest.raises(NotAllowed):
        session.device_users()
    with pytest.raises(NotAllowed):
        device_facts(session)  # the panel's facts go through the same check
    reads = [e for e in _entries(session) if e.action == "users_read"]
    assert [e.outcome for e in reads] == ["denied", "denied"]
    assert all(e.user_id == CLINICIAN[0] for e in reads)
    session.lock()


def test_the_admins_read_of_the_users_is_audited_in_the_chain(tmp_path: Path) -> None:
    td = provision(tmp_path / "d", role="admin", user=ADMIN)
    session = Session.login(td.device, *ADMIN)
    session.add_user("ig.sam", "auditor", "tardis blue box 1963")
    assert dict(session.device_users()) == {"it.admin": "admin", "ig.sam": "auditor"}
    reads = [e for e in _entries(session) if e.action == "users_read"]
    assert len(reads) == 1
    assert reads[0].outcome == "success" and reads[0].user_id == ADMIN[0]
    assert dict(reads[0].detail) == {"users": 2}
    session.lock()


def test_device_facts_name_the_certificate_state_storage_and_users(tmp_path: Path) -> None:
    td = provision(tmp_path / "d", role="admin", user=ADMIN)
    session = Session.login(td.device, *ADMIN)
    missing = device_facts(session)
    assert missing.certificate_state == "missing" and missing.certificate_expires_at is None
    assert missing.users == (("it.admin", "admin"),) and missing.device_id == "dev-test-0001"
    assert missing.storage_bytes >= database_path(td.data_dir).stat().st_size > 0
    not_after = (T0 + dt.timedelta(days=90)).replace(microsecond=0)
    (td.data_dir / TLS_CERT).write_bytes(certificate_pem(not_after))
    valid = device_facts(session)
    assert (valid.certificate_state, valid.certificate_expires_at) == ("valid", not_after)
    td.clocks.advance(dt.timedelta(days=91))
    assert device_facts(session).certificate_state == "expired"
    assert len([e for e in _entries(session) if e.action == "users_read"]) == 3
    session.lock()


def test_an_unreadable_certificate_and_a_vanishing_file_are_states_not_errors(
    tmp_path: Path,
) -> None:
    assert certificate_expiry(tmp_path / "absent.crt") == ("missing", None)
    junk = tmp_path / "junk.crt"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n")
    assert certificate_expiry(junk) == ("unreadable", None)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "data" / "link").symlink_to(tmp_path / "data" / "a.bin")
    assert storage_used(tmp_path / "data") == 1000  # the symlink is not counted twice
