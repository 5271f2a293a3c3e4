"""Control-plane JSON responses (``/device``, ``/audit``); FHIR's are in ``api.outcome``.

Invariant: a ``ControlError`` leaves as ``errors.error_body`` with its status, plus a
``Retry-After`` header when it carries ``retry_after`` (seconds).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from sync.gateway.errors import ControlError, error_body

JSON = "application/json"


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type=JSON, headers=headers)


def control_error_response(error: ControlError) -> Response:
    headers = None
    retry = error.extra.get("retry_after")
    if isinstance(retry, int):
        headers = {"Retry-After": str(retry)}
    return json_response(error_body(error.reason, **error.extra), error.status, headers)


# A database that is busy or unreachable is the gateway's trouble, not the request's: 503 with
# Retry-After (seconds) so a client backs off and comes back, never a 4xx it would give up on.
RETRY_AFTER_S = 5


def retry_after_headers(seconds: int = RETRY_AFTER_S) -> dict[str, str]:
    return {"Retry-After": str(seconds)}
