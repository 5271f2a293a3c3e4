"""FHIR responses and errors: every error leaves the gateway as an OperationOutcome.

Invariants: an error response carries a stable ``reason`` code (in ``issue.details.text``) and
never echoes request content, resource text or anything from another site; success responses
are ``application/fhir+json`` with ``ETag``/``Last-Modified`` when they are one version.
"""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime
from typing import Any

import orjson
from starlette.responses import Response

from sync.gateway.errors import GatewayError
from sync.gateway.store.base import StoredResource

FHIR_JSON = "application/fhir+json"

_STATUS_TEXT = {
    200: "200 OK",
    201: "201 Created",
    204: "204 No Content",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    409: "409 Conflict",
    410: "410 Gone",
    412: "412 Precondition Failed",
    413: "413 Payload Too Large",
    415: "415 Unsupported Media Type",
    422: "422 Unprocessable Entity",
    428: "428 Precondition Required",
}


def status_text(status: int) -> str:
    return _STATUS_TEXT.get(status, str(status))


class FhirError(GatewayError):
    """A request refused with ``status``; ``code`` is the FHIR issue type, ``reason`` ours."""

    def __init__(
        self,
        status: int,
        code: str,
        reason: str,
        *,
        current: StoredResource | None = None,
        diagnostics: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.current = current  # for 412: the version the client must merge with
        self.diagnostics = diagnostics  # codes and instants only, never request content


def etag(version_id: int) -> str:
    return f'W/"{version_id}"'


def operation_outcome(error: FhirError) -> dict[str, Any]:
    outcome: dict[str, Any] = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": error.code,
                "details": {"text": error.reason},
            }
        ],
    }
    if error.diagnostics is not None:
        outcome["issue"][0]["diagnostics"] = error.diagnostics
    if error.current is not None and not error.current.deleted:
        # The current version travels with a 412 so the client can show the conflict.
        outcome["contained"] = [orjson.Fragment(error.current.body)]
        outcome["issue"][0]["diagnostics"] = f"current version {etag(error.current.version_id)}"
    return outcome


def fhir_response(
    content: dict[str, Any] | bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = content if isinstance(content, bytes) else orjson.dumps(content)
    return Response(body, status_code=status, media_type=FHIR_JSON, headers=headers)


def error_response(error: FhirError) -> Response:
    headers = {}
    if error.current is not None:
        headers["ETag"] = etag(error.current.version_id)
    return fhir_response(operation_outcome(error), error.status, headers)


def version_headers(resource: StoredResource) -> dict[str, str]:
    return {
        "ETag": etag(resource.version_id),
        "Last-Modified": format_datetime(resource.last_updated.astimezone(dt.UTC), usegmt=True),
    }
