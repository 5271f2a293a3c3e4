"""UI-4: every sync failure a person sees is one plain sentence and what to do; the reason code
stays in the ``sync`` audit entry and in ``gatehouse device sync --json``.

The refusal test is real end to end: a laptop provisioned against a real gateway, then a
man-in-the-middle TLS server (a certificate from another CA, the kind an OS-trusted CA would
issue; or a server that only speaks TLS 1.2) takes the gateway's address and port.
"""

from __future__ import annotations

import ast
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.cli import describe_sync, sync_report
from client.core.device import Device
from client.core.provisioning import add_user_online
from client.core.session import Session
from client.core.sync_failures import SYNC_FAILURES, sync_failure_sentence
from client.core.sync_runner import run_sync
from client.ui.sync_panel import SyncOutcome, describe_connection, describe_outcome
from client.ui.sync_panel import failure_sentence as panel_sentence
from sync.device.engine import FATAL_REASONS, SyncResult
from sync.gateway.errors import MESSAGES as GATEWAY_CODES
from tests.support.tls_server import RawTlsServer, server_context
from tests.support.transport_pki import issue_certificate
from tests.support.ui_gateway import NURSE, LiveGateway, provision_for_tests, start_live_gateway

ROOT = Path(__file__).resolve().parents[2]
RAISING = ("SyncError", "TransportError", "ReplicaError", "OutboxStateError", "Cancelled")
SOURCES = [
    *sorted((ROOT / "sync" / "device").glob("*.py")),
    ROOT / "client" / "core" / "replica.py",
    ROOT / "client" / "core" / "outbox.py",
    ROOT / "client" / "core" / "conflicts.py",
]
# What a reason code looks like in text: snake_case, http_<status>, or the protocol's name.
CODE_LIKE = re.compile(r"\b[a-z]+_[a-z0-9_]+\b|\bhttp\b|\btls\b", re.IGNORECASE)
WHAT_TO_DO = re.compile(r"call IT|try again|sync again|return it|sign in|try another", re.I)


def sync_reason_codes() -> set[str]:
    """Every literal reason a sync can end with, read from the code that raises it."""
    codes = set(FATAL_REASONS) | {"cancelled"}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in RAISING
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                codes.add(node.args[0].value)
    return codes


def test_ui4_every_sync_reason_code_has_a_plain_sentence_with_what_to_do() -> None:
    codes = sync_reason_codes()
    assert {"tls", "pin_mismatch", "bad_response", "wiped", "not_pending"} <= codes
    missing = sorted(codes - set(SYNC_FAILURES))
    assert missing == [], f"no sentence for {missing}"
    # the gateway's refusal codes a control step passes on, and codes nobody listed yet
    passed_on = set(GATEWAY_CODES) | {"http_500", "http_404", "brand_new_code", ""}
    for code in sorted(codes | set(SYNC_FAILURES) | passed_on):
        sentence = sync_failure_sentence(code)
        assert sentence[:1].isupper() and sentence.endswith("."), code
        assert WHAT_TO_DO.search(sentence), f"{code}: says nothing about what to do"
        assert CODE_LIKE.search(sentence) is None, f"{code}: a code leaks: {sentence}"
        outcome = SyncOutcome(SyncResult(error=code or None), None, dt.datetime.now(dt.UTC))
        for text in (describe_outcome(outcome), describe_connection(outcome)):
            assert CODE_LIKE.search(text) is None, f"{code}: {text}"


@dataclass
class Laptop:
    live: LiveGateway
    device: Device
    port: int


@pytest.fixture(scope="module")
def laptop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Laptop]:
    folder = tmp_path_factory.mktemp("ui4")
    live = start_live_gateway(folder, patients=4)
    try:
        device = provision_for_tests(folder / "device", live.bundle(folder / "b.json").read_bytes())
        add_user_online(device, *NURSE)
        nurse = Session.login(device, *NURSE)
        try:
            assert run_sync(nurse).error is None
        finally:
            nurse.lock()
    finally:
        live.stop()  # from here on, whatever answers on the gateway's port is not the gateway
    yield Laptop(live, device, int(live.url.rsplit(":", 1)[1].strip("/")))


def _impostor(folder: Path, port: int, *, tls12_only: bool) -> RawTlsServer:
    ca = issue_certificate(folder, "os-trusted-ca", "Trusted Root CA", None, ca=True)
    cert, _, _ = issue_certificate(folder, "mitm", "gateway", (ca[1], ca[2]), server=True)
    context = server_context(cert.cert, cert.key, None, tls12_only=tls12_only)
    return RawTlsServer(context, lambda *_: (200, {}, b"{}"), port=port)


@pytest.mark.parametrize("tls12_only", [False, True], ids=["mitm-tls13", "tls12-server"])
def test_ui4_a_mitm_refusal_is_a_sentence_and_the_code_stays_in_audit_and_json(
    laptop: Laptop, tmp_path: Path, tls12_only: bool
) -> None:
    nurse = Session.login(laptop.device, *NURSE)
    try:
        for server in _impostor(tmp_path, laptop.port, tls12_only=tls12_only).serve():
            result = run_sync(nurse)
            assert server.requests == [] and bytes(server.received) == b""
        with nurse._act() as conn:  # raw read: the clinician role may not list the audit
            entries = nurse._audit.entries(conn)
    finally:
        nurse.lock()
    assert result.error in {"tls", "pin_mismatch"}
    reason = result.error

    line = describe_sync(result)  # what `gatehouse device sync` prints
    assert line.startswith("Sync stopped. ") and sync_failure_sentence(reason) in line
    assert "call IT" in line and "Nothing you saved is lost" in line
    assert CODE_LIKE.search(line) is None, line
    report = sync_report(result)  # `gatehouse device sync --json`
    assert (report["ok"], report["reason"]) == (False, reason)
    assert report["message"] == sync_failure_sentence(reason)

    outcome = SyncOutcome(result, None, dt.datetime.now(dt.UTC))
    for text in (describe_outcome(outcome), panel_sentence(outcome), describe_connection(outcome)):
        assert CODE_LIKE.search(text) is None, text
    assert sync_failure_sentence(reason) in describe_outcome(outcome)

    last_sync = [e for e in entries if e.action == "sync"][-1]
    assert (last_sync.outcome, last_sync.detail.get("reason")) == ("failure", reason)
