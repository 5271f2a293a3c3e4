"""Auditor queries at ``/audit`` and the control-plane application that serves ``/device`` too.

Invariants:
- Every ``/audit`` route needs a verified device certificate AND a bearer token of an
  ``auditor`` or ``admin`` obtained by that same certificate (``users.authenticate_bearer``);
  a clinician's token is ``role_forbidden``.
- Answers are limited to the user's own site (the site of the session, which is the user's
  and the device's): no parameter widens that.
- Audit answers carry audit entries only — never clinical resources. Unknown parameters are
  refused (400), never ignored; ``_count`` is bounded by ``MAX_COUNT``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sync.gateway.api.control import device_routes, identity_of, now_of, store_of
from sync.gateway.api.exchange import exchange_routes
from sync.gateway.api.responses import (
    control_error_response,
    json_response,
    retry_after_headers,
)
from sync.gateway.authority import GatewayAuthority
from sync.gateway.errors import ControlError, error_body
from sync.gateway.login_throttle import LoginPolicy
from sync.gateway.store.base import (
    AuditQuery,
    AuditRow,
    DatabaseFailure,
    SessionRecord,
    Store,
    fhir_instant,
)
from sync.gateway.store.sql import SqlStore
from sync.gateway.users import authenticate_bearer, default_hasher
from sync.protocol.audit.audit_event import ACTION_SYSTEM, to_audit_event, to_csv_rows
from sync.protocol.audit.entry import AuditEntry, entry_from_canonical

log = logging.getLogger(__name__)

AUDIT_ROLES = frozenset({"auditor", "admin"})
MAX_NOT_FILED = 1000  # notes held or in conflict listed at once (oldest first)
DEFAULT_COUNT = 100
MAX_COUNT = 1000
MAX_OFFSET = 10_000_000
MAX_PARAM_CHARS = 256
SEARCH_PARAMS = frozenset(
    {
        "patient",
        "agent",
        "source",
        "date",
        "subtype",
        "action",
        "purpose",
        "_count",
        "_format",
        "_offset",
    }
)
FHIR_ACTIONS = frozenset({"C", "R", "U", "D", "E"})
ACTION_SYSTEM_PREFIX = ACTION_SYSTEM + "|"


async def auditor_session(request: Request) -> SessionRecord:
    identity = identity_of(request)
    header = request.headers.get("authorization")
    store, now = store_of(request), now_of(request)
    session = await run_in_threadpool(lambda: authenticate_bearer(store, header, identity, now=now))
    if session.role not in AUDIT_ROLES:
        raise ControlError(403, "role_forbidden")
    return session


def _instant(text: str, end_of_day: bool) -> dt.datetime:
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return moment + dt.timedelta(days=1, microseconds=-1) if end_of_day else moment
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ControlError(400, "bad_request") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def build_query(params: Sequence[tuple[str, str]], site: str) -> tuple[AuditQuery, str]:
    """An ``AuditQuery`` for the site from FHIR search parameters, and the output format."""
    fields: dict[str, Any] = {"site": site, "count": DEFAULT_COUNT}
    fmt = "json"
    seen: set[str] = set()
    for key, value in params:
        if key not in SEARCH_PARAMS:
            raise ControlError(400, "unknown_search_parameter")
        if len(value) > MAX_PARAM_CHARS or not value:
            raise ControlError(400, "bad_request")
        if key != "date" and key in seen:
            raise ControlError(400, "repeated_parameter")
        seen.add(key)
        if key == "patient":
            fields["patient_id"] = value.removeprefix("Patient/")
        elif key == "agent":
            fields["user_id"] = value
        elif key == "source":
            fields["device_id"] = value
        elif key == "subtype":
            fields["action"] = value.removeprefix(ACTION_SYSTEM_PREFIX)
        elif key == "action":
            if value not in FHIR_ACTIONS:
                raise ControlError(400, "bad_request")
            fields["fhir_action"] = value
        elif key == "purpose":
            fields["purpose"] = value
        elif key == "date":
            prefix, rest = value[:2], value[2:]
            if prefix in ("ge", "gt"):
                fields["since"] = _instant(rest, end_of_day=False)
            elif prefix in ("le", "lt"):
                fields["until"] = _instant(rest, end_of_day=True)
            elif prefix == "eq" or value[:1].isdigit():
                day = rest if prefix == "eq" else value
                fields["since"] = _instant(day, end_of_day=False)
                fields["until"] = _instant(day, end_of_day=True)
            else:
                raise ControlError(400, "bad_request")
        elif key == "_count":
            if not value.isdigit() or not 1 <= int(value) <= MAX_COUNT:
                raise ControlError(400, "bad_count")
            fields["count"] = int(value)
        elif key == "_offset":
            if not value.isdigit() or int(value) > MAX_OFFSET:
                raise ControlError(400, "bad_request")
            fields["offset"] = int(value)
        elif key == "_format":
            if value not in ("csv", "text/csv", "json", "application/fhir+json"):
                raise ControlError(400, "unsupported_format")
            fmt = "csv" if "csv" in value else "json"
    return AuditQuery(**fields), fmt


def entry_of(row: AuditRow) -> AuditEntry:
    return entry_from_canonical(row.canonical, row.mac)


def csv_text(rows: Sequence[AuditRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for line in to_csv_rows([entry_of(r) for r in rows]):
        writer.writerow(line)
    return buffer.getvalue()


def searchset(rows: Sequence[AuditRow], self_url: str, next_url: str | None) -> dict[str, Any]:
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {
                "fullUrl": f"urn:gatehouse:audit:{r.device_id}:{r.seq}",
                "resource": to_audit_event(entry_of(r)),
            }
            for r in rows
        ],
    }


async def search_audit_events(request: Request) -> Response:
    session = await auditor_session(request)
    params = list(request.query_params.multi_items())
    query, fmt = build_query(params, session.site)
    rows = await run_in_threadpool(store_of(request).search_audit, query)
    log.info("audit search by an auditor: %d rows", len(rows))
    if fmt == "csv":
        return Response(csv_text(rows), media_type="text/csv; charset=utf-8")
    base = str(request.url).split("?", 1)[0]
    next_url = None
    if len(rows) == query.count:
        following = [(k, v) for k, v in params if k != "_offset"]
        following.append(("_offset", str(query.offset + query.count)))
        next_url = f"{base}?{urlencode(following)}"
    return json_response(searchset(rows, str(request.url), next_url))


async def chains(request: Request) -> Response:
    session = await auditor_session(request)
    store = store_of(request)
    records = await run_in_threadpool(store.audit_chains, session.site)
    alerts = await run_in_threadpool(store.audit_alerts)
    out = []
    for chain in records:
        mine = [a for a in alerts if a.device_id == chain.device_id]
        latest = mine[-1] if mine else None
        out.append(
            {
                "device_id": chain.device_id,
                "last_seq": chain.seq,
                "head_hash": chain.head_hash,
                "last_receipt_at": _receipt_time(chain.receipt),
                "alerts": len(mine),
                "latest_alert": None
                if latest is None
                else {
                    "raised_at": fhir_instant(latest.raised_at),
                    "first_bad_seq": latest.first_bad_seq,
                    "reason": latest.reason,
                },
            }
        )
    return json_response({"chains": out})


async def notes_not_filed(request: Request) -> Response:
    """The site's notes the upstream refused (``held``, with its reason code) or that met an
    upstream change (``conflict``): what the auditor sees beside ``upstream status``. Ids,
    codes and times only, no record content."""
    session = await auditor_session(request)
    store = store_of(request)
    if not isinstance(store, SqlStore):  # pragma: no cover - every store is one today
        return json_response({"notes": []})
    rows = await run_in_threadpool(store.outbox_not_filed_at, session.site, MAX_NOT_FILED)
    notes = [
        {
            "type": row.item.rtype,
            "id": row.item.rid,
            "version": row.item.version_id,
            "state": row.item.state,
            "reason": row.item.reason,
            "since": None if row.since is None else fhir_instant(row.since),
            "patient_id": row.patient_id,
        }
        for row in rows
    ]
    return json_response({"notes": notes})


def _receipt_time(receipt: str | None) -> str | None:
    if receipt is None:
        return None
    value = orjson.loads(receipt).get("issued_at")
    return value if isinstance(value, str) else None


# -- the application ---------------------------------------------------------------------------


async def _control_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ControlError)
    return control_error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return json_response(error_body(reason), exc.status_code)


async def _database_failure(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DatabaseFailure)
    log.warning("database failure: %s", exc.reason)
    return json_response(error_body(exc.reason), 503, retry_after_headers())


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("control plane error: %s", type(exc).__name__)
    return json_response(error_body("internal_error"), 500)


def audit_routes() -> Sequence[Route]:
    return [
        Route("/audit/AuditEvent", search_audit_events, methods=["GET"]),
        Route("/audit/chains", chains, methods=["GET"]),
        Route("/audit/notes-not-filed", notes_not_filed, methods=["GET"]),
    ]


def create_control_app(
    store: Store,
    authority: GatewayAuthority,
    *,
    clock: Callable[[], dt.datetime],
    login_policy: LoginPolicy | None = None,
) -> Starlette:
    """``/device`` and ``/audit`` (behind the device authentication middleware)."""
    app = Starlette(
        routes=[*device_routes(), *exchange_routes(), *audit_routes()],
        exception_handlers={
            ControlError: _control_error,
            DatabaseFailure: _database_failure,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.store = store
    app.state.authority = authority
    app.state.clock = clock
    app.state.login_policy = login_policy or LoginPolicy(hasher=default_hasher())
    return app
