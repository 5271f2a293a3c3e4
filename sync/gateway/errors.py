"""Control-plane errors: one exception, one JSON shape, a stable reason code.

Invariants: every refusal of ``/device`` and ``/audit`` leaves as
``{"error": "<reason>", "message": "<sentence>"}`` with a 4xx status (plus documented extra
members such as ``first_bad_seq``); the sentence never echoes request content, passwords,
tokens or record data.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

JSON = "application/json"

MESSAGES: dict[str, str] = {
    "certificate_required": "This route needs a device certificate.",
    "device_revoked": "This device has been revoked.",
    "device_wiped": "This device has been wiped.",
    "unknown_device": "This device is not enrolled.",
    "device_site_mismatch": "This device's certificate does not match its enrolment.",
    "token_unknown": "The enrolment token is not valid.",
    "token_expired": "The enrolment token has expired.",
    "token_used": "The enrolment token has already been used.",
    "csr_invalid": "The certificate request is not acceptable.",
    "login_failed": "The user name or password is wrong.",
    "login_throttled": "Too many failed sign-ins: try again later.",
    "user_revoked": "This user's access has been withdrawn.",
    "wrong_site": "This user does not belong to this device's site.",
    "escrow_mismatch": "The escrow blob does not belong to this device.",
    "bearer_required": "This route needs a signed-in user's token.",
    "bearer_invalid": "The sign-in token is not valid or has expired.",
    "role_forbidden": "This user's role may not use this route.",
    "chain_broken": "The uploaded audit chain does not continue the stored one.",
    "audit_bundle_invalid": "The upload is not an audit export Bundle.",
    "command_unknown": "No such pending command for this device.",
    "bad_request": "The request is not valid.",
    "body_too_large": "The request body is too large.",
    "not_found": "No such route.",
    "method_not_allowed": "This method is not allowed here.",
    "internal_error": "The gateway could not complete the request.",
}


class ControlError(Exception):
    """A refused control-plane request; ``reason`` is the stable code."""

    def __init__(self, status: int, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.extra = extra


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type=JSON, headers=headers)


def error_body(code: str, /, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": MESSAGES.get(code, "The request was refused."), **extra}


def control_error_response(error: ControlError) -> Response:
    headers = None
    retry = error.extra.get("retry_after")
    if isinstance(retry, int):
        headers = {"Retry-After": str(retry)}
    return json_response(error_body(error.reason, **error.extra), error.status, headers)
