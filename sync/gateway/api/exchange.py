"""``POST /device/exchange``: the control steps that open a sync, in one request (issue 15 item 3;
docs/control-plane.md §Exchange) — the signed time for the device's nonce, the upload of its
first pending audit batch, its pending commands and the policy for it.

Invariants:
- Each part is answered exactly as its own endpoint answers it (``/device/time``,
  ``/device/audit``, ``/device/commands``, ``/device/policy``): the same signatures, the same
  receipt, the same commands; the device verifies each part as before.
- The parts are independent: a refused audit batch is that part's answer
  (``{"error": reason, "status": status, ...}``, as ``/device/audit`` would say it) and the
  time, commands and policy are still given, so a remote wipe or lock is never held back by an
  audit problem. A malformed request (no valid nonce) is refused whole (400).
- The audit part is optional (a device with nothing pending sends none); ingesting it is
  idempotent exactly as ``/device/audit`` is, so the device may repeat the exchange.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sync.gateway import policies
from sync.gateway.api.control import (
    MAX_AUDIT_BODY_BYTES,
    MAX_AUDIT_JSON_DEPTH,
    authority_of,
    checked_nonce,
    identity_of,
    now_of,
    read_json,
    store_of,
)
from sync.gateway.api.responses import json_response
from sync.gateway.audit_ingest import ingest
from sync.gateway.errors import ControlError, error_body
from sync.gateway.signing import signed_command, signed_time

# The audit part sits one level down ({"audit": Bundle}).
EXCHANGE_JSON_DEPTH = MAX_AUDIT_JSON_DEPTH + 1


async def exchange(request: Request) -> Response:
    identity = identity_of(request)
    body = await read_json(request, MAX_AUDIT_BODY_BYTES, EXCHANGE_JSON_DEPTH)
    if not isinstance(body, dict):
        raise ControlError(400, "bad_request")
    nonce = checked_nonce(body.get("nonce"))
    store, authority, now = store_of(request), authority_of(request), now_of(request)
    answer: dict[str, Any] = {
        "time": signed_time(authority.receipt_key, nonce, identity.device_id, now)
    }
    bundle = body.get("audit")
    if bundle is not None:
        answer["audit"] = await run_in_threadpool(
            _audit_part, store, authority.receipt_key, identity.device_id, bundle, now
        )
    pending = await run_in_threadpool(store.pending_commands, identity.device_id)
    answer["commands"] = [signed_command(authority.receipt_key, c) for c in pending]
    answer["policy"] = await run_in_threadpool(
        policies.latest_for_device, store, identity.site, identity.device_id
    )
    return json_response(answer)


def _audit_part(store: Any, key: Any, device_id: str, bundle: Any, now: Any) -> dict[str, Any]:
    """``/device/audit``'s answer as a part: its receipt, or its refusal with the status."""
    try:
        result = ingest(store, key, device_id=device_id, bundle=bundle, now=now)
    except ControlError as error:
        return {"status": error.status, **error_body(error.reason, **error.extra)}
    if result.broken is not None:
        broken = error_body(
            "chain_broken",
            first_bad_seq=result.broken.first_bad_seq,
            reason=result.broken.reason,
            detail=result.broken.sentence,
            receipt=result.receipt,
        )
        return {"status": 409, **broken}
    return {"status": 200, "receipt": result.receipt}


def exchange_routes() -> list[Route]:
    return [Route("/device/exchange", exchange, methods=["POST"])]
