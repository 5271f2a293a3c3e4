"""The control plane at ``/device`` (docs/control-plane.md): enrol, renew, login, policy,
commands, time, audit upload.

Invariants:
- Only ``POST /device/enrol`` (it needs a one-time token) and ``POST /device/wipe-report`` (it
  needs a signature by the device's wipe-report key, WP-3) run without a device identity;
  every other route reads the device id and site from ``scope["gatehouse.device"]``, which
  only the authentication middleware sets from a verified, active certificate — never from
  the body. Mounted without that layer, these routes fail closed (401).
- A wipe report can only mark its device ``wiped`` and complete that device's pending wipe
  command; every refusal (malformed, unknown device, device without a report key, bad
  signature) is the same ``403 report_refused``, so the route tells a prober nothing.
- Bodies are bounded (``MAX_BODY_BYTES``; ``MAX_AUDIT_BODY_BYTES`` for audit uploads) and parsed
  strictly (``sync.protocol.fhir.bounded_json``); every refusal is ``ControlError`` → JSON error.
- Blocking work (Argon2id, database, chain verification) runs in the thread pool.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sync.gateway import enrolment, policies, users
from sync.gateway.api.fhir import DEVICE_SCOPE_KEY
from sync.gateway.api.responses import json_response
from sync.gateway.audit_ingest import ingest
from sync.gateway.authority import GatewayAuthority
from sync.gateway.errors import ControlError, error_body
from sync.gateway.login_throttle import LoginPolicy
from sync.gateway.pki import DeviceIdentity
from sync.gateway.signing import command_receipt, signed_command, signed_time, wipe_report_ack
from sync.gateway.store.base import Store, WipeReportRecord, fhir_instant
from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded
from sync.protocol.wipe_report import (
    WipeReport,
    WipeReportRefused,
    parse_report,
    public_key_from_text,
    verify_report,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_AUDIT_BODY_BYTES = 32 * 1024 * 1024
MAX_JSON_DEPTH = 16
MAX_AUDIT_JSON_DEPTH = 12
MAX_JSON_ITEMS = 2_000_000
NONCE_BYTES = 16
MAX_REPORT_BYTES = 16 * 1024
MAX_WIPE_REPORT_BYTES = 2 * 1024  # a wipe report is a few hundred bytes
# Verified against when a device has no key, so a refusal costs the same either way.
_NO_KEY = "UvlD7h0s3HZYMBN9zcejcFUgWC7gwZGpWL+wLh5f+kk="  # its private key was discarded
WIPE_CAUSE_WORDS = {
    "too_many_failed_logins": "too many failed sign-ins",
    "offline_too_long": "offline longer than the policy allows",
    "remote_wipe": "IT's remote wipe command",
    "admin_wipe": "an administrator on the laptop",
    "requested": "a request on the laptop",
}


def identity_of(request: Request) -> DeviceIdentity:
    identity = request.scope.get(DEVICE_SCOPE_KEY)
    if not isinstance(identity, DeviceIdentity):
        raise ControlError(401, "certificate_required")
    return identity


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def authority_of(request: Request) -> GatewayAuthority:
    authority: GatewayAuthority = request.app.state.authority
    return authority


def now_of(request: Request) -> dt.datetime:
    clock: Callable[[], dt.datetime] = request.app.state.clock
    return clock()


async def read_json(
    request: Request, limit: int = MAX_BODY_BYTES, depth: int = MAX_JSON_DEPTH
) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ControlError(413, "body_too_large")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ControlError(413, "body_too_large")
        chunks.append(chunk)
    try:
        return loads_bounded(
            b"".join(chunks), max_bytes=limit, max_depth=depth, max_items=MAX_JSON_ITEMS
        )
    except BoundedJsonError as err:
        if err.reason == "too_large":
            raise ControlError(413, "body_too_large") from None
        raise ControlError(400, "bad_request") from None


async def read_object(request: Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ControlError(400, "bad_request")
    return body


# -- enrolment ---------------------------------------------------------------------------------


async def enrol(request: Request) -> Response:
    body = await read_object(request)
    store, authority, now = store_of(request), authority_of(request), now_of(request)
    done = await run_in_threadpool(
        lambda: enrolment.enrol(
            store,
            authority,
            token=body.get("token"),
            csr_pem=body.get("csr"),
            audit_k0=body.get("audit_k0"),
            now=now,
            wipe_report_key=body.get("wipe_report_key"),
        )
    )
    policy = await run_in_threadpool(policies.latest_for_device, store, done.site, done.device_id)
    return json_response(
        {
            "device_id": done.device_id,
            "site": done.site,
            "certificate": done.certificate_pem,
            "ca_certificate": authority.ca_pem,
            "escrow_public_key": authority.escrow_public_b64,
            "receipt_public_key": authority.receipt_public_pem,
            "policy": policy,
            "server_time": fhir_instant(now),
        }
    )


async def renew(request: Request) -> Response:
    identity = identity_of(request)
    body = await read_object(request)
    store, authority, now = store_of(request), authority_of(request), now_of(request)
    pem = await run_in_threadpool(
        lambda: enrolment.renew(store, authority, identity, csr_pem=body.get("csr"), now=now)
    )
    return json_response({"certificate": pem})


# -- login -------------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    identity = identity_of(request)
    body = await read_object(request)
    store, authority, now = store_of(request), authority_of(request), now_of(request)
    policy: LoginPolicy = request.app.state.login_policy
    result = await run_in_threadpool(
        lambda: users.login(store, authority, policy, identity, body, now=now)
    )
    return json_response(
        {
            "user_id": result.user_id,
            "role": result.role,
            "site": result.site,
            "token": result.token,
            "expires_at": fhir_instant(result.expires_at),
            "dek": base64.b64encode(result.dek).decode("ascii"),
        },
        headers={"Cache-Control": "no-store"},
    )


# -- policy, commands, time --------------------------------------------------------------------


async def policy(request: Request) -> Response:
    identity = identity_of(request)
    envelope = await run_in_threadpool(
        policies.latest_for_device, store_of(request), identity.site, identity.device_id
    )
    return json_response({"policy": envelope})


async def commands(request: Request) -> Response:
    identity = identity_of(request)
    pending = await run_in_threadpool(store_of(request).pending_commands, identity.device_id)
    key = authority_of(request).receipt_key
    return json_response({"commands": [signed_command(key, c) for c in pending]})


async def command_receipt_route(request: Request) -> Response:
    identity = identity_of(request)
    command_id = request.path_params["command_id"]
    body = await read_object(request)
    status = body.get("status")
    report = body.get("report", {})
    if status not in ("done", "failed") or not isinstance(report, dict):
        raise ControlError(400, "bad_request")
    report_bytes = orjson.dumps(report)
    if len(report_bytes) > MAX_REPORT_BYTES:
        raise ControlError(413, "body_too_large")
    store, now = store_of(request), now_of(request)
    command = await run_in_threadpool(store.command, command_id)
    if command is None or command.device_id != identity.device_id:
        raise ControlError(404, "command_unknown")
    if command.status != "pending" and command.receipt is not None:
        return json_response({"receipt": orjson.loads(command.receipt)["receipt"]})
    receipt = command_receipt(authority_of(request).receipt_key, command, status, now)
    stored = orjson.dumps({"receipt": receipt, "report": report}).decode("utf-8")
    if not await run_in_threadpool(store.complete_command, command_id, status, stored, now):
        raise ControlError(404, "command_unknown")
    log.info("command receipt stored: kind=%s status=%s", command.kind, status)
    return json_response({"receipt": receipt})


def checked_nonce(nonce: Any) -> str:
    """A device's time nonce: base64 of exactly ``NONCE_BYTES`` bytes, else 400."""
    if not isinstance(nonce, str) or len(nonce) > 64:
        raise ControlError(400, "bad_request")
    try:
        raw = base64.b64decode(nonce, validate=True)
    except (binascii.Error, ValueError):
        raise ControlError(400, "bad_request") from None
    if len(raw) != NONCE_BYTES:
        raise ControlError(400, "bad_request")
    return nonce


async def trusted_time(request: Request) -> Response:
    identity = identity_of(request)
    body = await read_object(request)
    nonce = checked_nonce(body.get("nonce"))
    key = authority_of(request).receipt_key
    return json_response(signed_time(key, nonce, identity.device_id, now_of(request)))


# -- wipe reports (WP-3) -----------------------------------------------------------------------


def _record_wipe_report(
    store: Store, authority: GatewayAuthority, report: WipeReport, signature: str, now: dt.datetime
) -> str:
    """Verify against the device's registered key, then record (one transaction)."""
    registered = store.wipe_report_key(report.device_id)
    try:
        verify_report(public_key_from_text(registered or _NO_KEY), report, signature)
    except WipeReportRefused:
        raise ControlError(403, "report_refused") from None
    if registered is None:
        raise ControlError(403, "report_refused")
    receipt = None
    if report.command_id is not None:
        command = store.command(report.command_id)
        if (
            command is not None
            and command.device_id == report.device_id
            and command.kind == "wipe"
            and command.status == "pending"
        ):
            signed = command_receipt(authority.receipt_key, command, "done", now)
            via = {"via": "wipe_report", "report_id": report.report_id, "cause": report.cause}
            receipt = orjson.dumps({"receipt": signed, "report": via}).decode("utf-8")
    wiped_at = dt.datetime.fromisoformat(report.wiped_at)
    record = WipeReportRecord(
        device_id=report.device_id,
        report_id=report.report_id,
        cause=report.cause,
        wiped_at=wiped_at,
        command_id=report.command_id,
        statement=orjson.dumps({"report": report.fields(), "signature": signature}).decode(),
    )
    sentence = (
        f"The laptop reported that it was wiped because of {WIPE_CAUSE_WORDS[report.cause]}, "
        f"at {fhir_instant(wiped_at)} by its own clock."
    )
    outcome = store.record_wipe_report(
        record, now=now, command_receipt=receipt, alert_sentence=sentence
    )
    log.info("wipe report: cause=%s outcome=%s", report.cause, outcome)
    return outcome


async def wipe_report(request: Request) -> Response:
    body = await read_json(request, MAX_WIPE_REPORT_BYTES, 4)
    try:
        report, signature = parse_report(body)
    except WipeReportRefused:
        raise ControlError(403, "report_refused") from None
    store, authority, now = store_of(request), authority_of(request), now_of(request)
    outcome = await run_in_threadpool(_record_wipe_report, store, authority, report, signature, now)
    ack = wipe_report_ack(authority.receipt_key, report.device_id, report.report_id, outcome, now)
    return json_response({"ack": ack})


# -- audit upload ------------------------------------------------------------------------------


async def audit_upload(request: Request) -> Response:
    identity = identity_of(request)
    bundle = await read_json(request, MAX_AUDIT_BODY_BYTES, MAX_AUDIT_JSON_DEPTH)
    store, authority, now = store_of(request), authority_of(request), now_of(request)
    result = await run_in_threadpool(
        lambda: ingest(
            store, authority.receipt_key, device_id=identity.device_id, bundle=bundle, now=now
        )
    )
    if result.broken is not None:
        body = error_body(
            "chain_broken",
            first_bad_seq=result.broken.first_bad_seq,
            reason=result.broken.reason,
            detail=result.broken.sentence,
            receipt=result.receipt,
        )
        return json_response(body, 409)
    return json_response(result.receipt)


def device_routes() -> Sequence[Route]:
    return [
        Route("/device/enrol", enrol, methods=["POST"]),
        Route("/device/renew", renew, methods=["POST"]),
        Route("/device/login", login, methods=["POST"]),
        Route("/device/policy", policy, methods=["GET"]),
        Route("/device/commands", commands, methods=["GET"]),
        Route("/device/commands/{command_id}/receipt", command_receipt_route, methods=["POST"]),
        Route("/device/time", trusted_time, methods=["POST"]),
        Route("/device/audit", audit_upload, methods=["POST"]),
        Route("/device/wipe-report", wipe_report, methods=["POST"]),
    ]
