"""``POST /device/exchange`` (issue 15 item 3): the opening control steps of a sync in one
request — each part as its own endpoint answers it, and the parts independent of each other."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import uuid
from typing import Any

from sync.gateway.signing import verify_command, verify_time
from sync.gateway.store.base import CommandRecord
from tests.support.gateway import Gateway


def _nonce() -> str:
    return base64.b64encode(secrets.token_bytes(16)).decode()


def _queue(gw: Gateway, device_id: str, kind: str) -> str:
    command_id = str(uuid.uuid4())
    gw.store.add_command(
        CommandRecord(command_id, device_id, kind, None, dt.datetime.now(dt.UTC), "pending")  # type: ignore[arg-type]
    )
    return command_id


def _exchange(gateway: Gateway, body: dict[str, Any], session: Any = None) -> Any:
    return (session or gateway.a).post(f"{gateway.url}/device/exchange", json=body, timeout=10)


def test_issue15_the_exchange_answers_time_commands_and_policy_as_their_own_endpoints(
    gateway: Gateway,
) -> None:
    wipe = _queue(gateway, "dev-a", "wipe")
    _queue(gateway, "dev-b", "lock")  # another device's: never in dev-a's answer
    nonce = _nonce()
    answer = _exchange(gateway, {"nonce": nonce})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    public = gateway.authority.receipt_key.public_key()
    assert body["time"]["nonce"] == nonce
    verify_time(public, body["time"], "dev-a")
    (command,) = body["commands"]
    assert (command["id"], command["kind"]) == (wipe, "wipe")
    verify_command(public, command, "dev-a")
    alone = gateway.a.get(f"{gateway.url}/device/commands", timeout=10).json()["commands"]
    assert alone == body["commands"]
    policy = gateway.a.get(f"{gateway.url}/device/policy", timeout=10).json()["policy"]
    assert body["policy"] == policy
    assert "audit" not in body  # nothing was sent, nothing answered


def test_issue15_a_refused_audit_part_does_not_hold_back_a_wipe(gateway: Gateway) -> None:
    """The audit batch is malformed: that part says so (as /device/audit would), and the
    time and the wipe command are still delivered."""
    wipe = _queue(gateway, "dev-a", "wipe")
    nonce = _nonce()
    bad_audit = {"resourceType": "Bundle", "type": "collection", "entry": [{"nope": 1}]}
    answer = _exchange(gateway, {"nonce": nonce, "audit": bad_audit})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    alone = gateway.a.post(f"{gateway.url}/device/audit", json=bad_audit, timeout=10)
    assert body["audit"]["status"] == alone.status_code >= 400
    assert body["audit"]["error"] == alone.json()["error"]
    assert body["time"]["nonce"] == nonce
    assert [c["id"] for c in body["commands"]] == [wipe]


def test_issue15_an_exchange_without_a_valid_nonce_is_refused_whole(gateway: Gateway) -> None:
    for bad in ({}, {"nonce": "short"}, {"nonce": base64.b64encode(b"x" * 8).decode()}, []):
        answer = _exchange(gateway, bad)  # type: ignore[arg-type]
        assert (answer.status_code, answer.json()["error"]) == (400, "bad_request")
