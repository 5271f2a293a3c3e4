"""The auditor's online queries, from a signed-in session (AU-4, AU-5).

Guarantees:
- Only an auditor or admin session may ask (``NotAllowed``, audited as refused), checked here
  in the core, not only by which screen is shown.
- Every query re-authenticates at the gateway with the user's password (AU-4): a fresh online
  sign-in over the pinned mutual-TLS transport gives a short-lived token bound to this
  device's certificate. The sign-in's unsealed DEK is dropped at once, never used or kept;
  the token lives only for the one call and is never stored or logged.
- The gateway must answer for the same user and site as the session, else nothing is shown.
- An export of results already shown needs the password again, checked on the device
  (``authorise_export``), and is audited before the file is written.
- Each query is audited in the local chain (``audit_query``, or ``export``) with its filters
  (identifiers only, no clinical content), whether it succeeded or failed.
- Failures are one ``OnlineAuditError`` (a ``UserFacingError``) with a stable ``reason``;
  transport failures stay ``TransportError``, which the UI already explains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from client.core import accounts
from client.core.accounts import LoginRefused
from client.core.errors import UserFacingError
from client.core.provisioning import transport_config
from client.core.session import NotAllowed, Session
from sync.device.audit_queries import AuditClientError, AuditQuery, SearchResult, chain_status
from sync.device.audit_queries import download_csv as _download_csv
from sync.device.audit_queries import search_audit as _search_audit
from sync.device.enrolment import EnrolmentError, online_login
from sync.device.transport import Transport, TransportError

AUDIT_ROLES = ("auditor", "admin")
T = TypeVar("T")


class OnlineAuditError(UserFacingError):
    """An online audit query was refused or failed; ``reason`` is stable."""


@dataclasses.dataclass(frozen=True)
class OnlineAudit:
    search: SearchResult
    chains: list[dict[str, Any]]


def _with_token(
    session: Session, password: str, what: str, detail: dict[str, Any], work: Callable[..., T]
) -> T:
    """Sign in again at the gateway, run ``work(transport, token)``, audit it either way."""
    if session.role not in AUDIT_ROLES:
        session.record_event(what, "denied", detail={**detail, "why": "role"})
        raise NotAllowed("query the gateway's audit trail")
    escrow = session.device.header.escrow_blob()
    if escrow is None:
        raise OnlineAuditError("no_escrow", "This laptop cannot sign in to the gateway.")
    try:
        with Transport(transport_config(session.device)) as transport:
            login = online_login(transport, session.user_id, password, escrow)
            token, user_id, site = login.token, login.user_id, login.site
            del login  # the unsealed DEK goes with it: an audit query never needs the vault key
            if user_id != session.user_id or site != session.device.profile.site:
                raise OnlineAuditError("wrong_user", "The gateway answered for someone else.")
            result = work(transport, token)
    except (EnrolmentError, AuditClientError) as error:
        session.record_event(what, "failure", detail={**detail, "why": error.reason})
        raise OnlineAuditError(error.reason, error.message) from error
    except (TransportError, OnlineAuditError) as error:
        session.record_event(what, "failure", detail={**detail, "why": error.reason})
        raise
    session.record_event(what, detail=detail)
    return result


def query_gateway(session: Session, password: str, query: AuditQuery) -> OnlineAudit:
    """Matching AuditEvents of the site, and every device's chain status."""

    def work(transport: Transport, token: str) -> OnlineAudit:
        found = _search_audit(transport, token, query)
        return OnlineAudit(found, chain_status(transport, token))

    detail = {"where": "gateway", **query.describe()}
    return _with_token(session, password, "audit_query", detail, work)


def download_csv(session: Session, password: str, query: AuditQuery) -> bytes:
    """The gateway's CSV of the first 1,000 matches (audited as an export)."""
    detail = {"what": "gateway_audit_csv", **query.describe()}
    return _with_token(
        session, password, "export", detail, lambda t, token: _download_csv(t, token, query)
    )


def authorise_export(session: Session, password: str, kind: str, count: int) -> None:
    """Export of results already shown (``json`` or ``csv``): the password again (AU-4),
    checked and throttled like a login; audited either way, before the file is written."""
    detail = {"what": "gateway_audit", "format": kind, "events": count}
    if session.role not in AUDIT_ROLES:
        session.record_event("export", "denied", detail={**detail, "why": "role"})
        raise NotAllowed("export the audit trail")
    try:
        accounts.reauthenticate(session.device, session.user_id, password)
    except LoginRefused:
        if not session.device.wiped:
            session.record_event("export", "denied", detail={**detail, "why": "reauthentication"})
        raise
    session.record_event("export", detail=detail)
