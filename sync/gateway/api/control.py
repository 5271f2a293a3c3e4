"""The control plane at ``/device`` (docs/control-plane.md): enrol, renew, login, policy,
commands, time, audit upload.

Invariants:
- Only ``POST /device/enrol`` runs without a device identity (it needs a one-time token);
  every other route reads the device id and site from ``scope["gatehouse.device"]``, which
  only the authentication middleware sets from a verified, active certificate — never from
  the body. Mounted without that layer, these routes fail closed (401).
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
from sync.gateway.pki import DeviceIdentity
from sync.gateway.signing import command_receipt, signed_command, signed_time
from sync.gateway.store.base import Store, fhir_instant
from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_AUDIT_BODY_BYTES = 32 * 1024 * 1024
MAX_JSON_DEPTH = 16
MAX_AUDIT_JSON_DEPTH = 12
MAX_JSON_ITEMS = 2_000_000
NONCE_BYTES = 16
MAX_REPORT_BYTES = 16 * 1024


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
    policy: users.LoginPolicy = request.app.state.login_policy
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


async def trusted_time(request: Request) -> Response:
    identity = identity_of(request)
    body = await read_object(request)
    nonce = body.get("nonce")
    if not isinstance(nonce, str) or len(nonce) > 64:
        raise ControlError(400, "bad_request")
    try:
        raw = base64.b64decode(nonce, validate=True)
    except (binascii.Error, ValueError):
        raise ControlError(400, "bad_request") from None
    if len(raw) != NONCE_BYTES:
        raise ControlError(400, "bad_request")
    key = authority_of(request).receipt_key
    return json_response(signed_time(key, nonce, identity.device_id, now_of(request)))


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
    ]
