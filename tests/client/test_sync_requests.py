"""Issue 15 item 3: what a sync costs in requests, through the product (a provisioned laptop, its
real sync runner, the real gateway over mutual TLS).

- a sync with nothing new costs 3 requests: the control exchange (time, audit backlog,
  commands, policy), one data-plane batch (metadata and every type's history page), and the
  upload of the sync's own audit entry (it was 13);
- a change on the server still arrives in those 3, and a queued lock still locks;
- a gateway without the exchange or the read batch (an older one) is still synced completely,
  with the separate requests.

The requests are counted by wrapping the product transport's one send method (observation
only: every request still goes over the wire).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.core.device_keyring import InMemoryKeyring
from client.core.provisioning import add_user_online
from client.core.session import Session
from client.core.sync_runner import run_sync
from sync.device import transport as transport_module
from sync.gateway.api import audit as control_app
from sync.gateway.api import transaction
from sync.gateway.store.base import CommandRecord
from tests.support.gateway import observation
from tests.support.laptop import NURSE, laptop_gateway, provision_laptop
from tests.support.sync import device_view, server_view

Sent = tuple[str, str, int]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Sent]]:
    """Every request the laptop sends: (method, path, status)."""
    log: list[Sent] = []
    send_once = transport_module.Transport._send_once

    def recording(self: transport_module.Transport, method: str, url: str, *args: object) -> object:
        response = send_once(self, method, url, *args)  # type: ignore[arg-type]
        log.append((method, url.split("/", 3)[-1].split("?")[0], response.status))
        return response

    monkeypatch.setattr(transport_module.Transport, "_send_once", recording)
    yield log


def _signed_in(tmp_path: Path, gw: object) -> Session:
    device = provision_laptop(gw, tmp_path / "laptop", InMemoryKeyring())  # type: ignore[arg-type]
    assert add_user_online(device, *NURSE) == "clinician"
    return Session.login(device, *NURSE)


def test_issue15_a_sync_with_nothing_new_costs_three_requests(
    tmp_path: Path, sent: list[Sent]
) -> None:
    with laptop_gateway(tmp_path / "gw") as gw:
        session = _signed_in(tmp_path, gw)
        assert run_sync(session).ok
        session.open_chart(session.caseload()[0].id)  # audit entries to upload
        sent.clear()
        quiet = run_sync(session)
        assert quiet.ok, (quiet.error, quiet.failed_phases)
        assert [(m, p) for m, p, _ in sent] == [
            ("POST", "device/exchange"),
            ("POST", "fhir"),
            ("POST", "device/audit"),
        ]
        assert quiet.control["audit_uploaded"] >= 2  # the chart opening, then this sync
        assert quiet.control["time"] and quiet.control["policy"] == "current"
        assert quiet.server is not None and quiet.server["missing"] == []

        # A change on the server and a lock from IT: still three requests, both acted on.
        some = session.caseload()[0].id
        gw.load(observation(f"new-{uuid.uuid4().hex[:8]}", some, 77.0))
        gw.store.add_command(
            CommandRecord(
                str(uuid.uuid4()),
                session.device.profile.device_id,
                "lock",
                None,
                dt.datetime.now(dt.UTC),
                "pending",
            )
        )
        sent.clear()
        busy = run_sync(session)
        assert busy.ok and busy.pulled == 1
        assert busy.control["commands"] == ["lock"] and busy.control["lock_requested"]
        paths = [p for _, p, _ in sent]
        # + the lock's receipt, and the lock's own audit entry goes up before the sync's
        assert len(paths) == 5 and paths[1].endswith("/receipt")
        assert [paths[0], *paths[2:]] == ["device/exchange", "fhir", "device/audit", "device/audit"]
        assert device_view(session.connection()) == server_view(gw.store, "hmp-brixton")


def test_issue15_a_gateway_without_the_exchange_or_read_batches_is_still_synced(
    tmp_path: Path, sent: list[Sent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older gateway: /device/exchange is not a route (404) and a batch of GETs is refused
    (400, as a write-only batch parser refuses a GET entry). The laptop falls back to the
    separate requests and syncs completely."""
    monkeypatch.setattr(control_app, "exchange_routes", lambda: [])
    monkeypatch.setattr(transaction, "read_urls", lambda _bundle: None)
    with laptop_gateway(tmp_path / "gw") as gw:
        session = _signed_in(tmp_path, gw)
        assert run_sync(session).ok
        some = session.caseload()[0].id
        gw.load(observation(f"new-{uuid.uuid4().hex[:8]}", some, 77.0))
        sent.clear()
        result = run_sync(session)
        assert result.ok, (result.error, result.failed_phases)
        assert result.pulled == 1 and result.control["time"]
        statuses = {p: s for _, p, s in sent}
        assert statuses["device/exchange"] == 404 and statuses["fhir"] == 400
        assert {"device/time", "device/commands", "device/policy", "fhir/metadata"} <= set(statuses)
        assert device_view(session.connection()) == server_view(gw.store, "hmp-brixton")
