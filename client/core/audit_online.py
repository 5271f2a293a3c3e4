"""The auditor's online queries, from a signed-in session (AU-4, AU-5).

Guarantees:
- Only an auditor or admin session may ask (``NotAllowed``, audited as refused), checked here
  in the core, not only by which screen is shown.
- Queries re-authenticate at the gateway with the user's password (AU-4): an online sign-in
  over the pinned mutual-TLS transport gives a short-lived token bound to this device's
  certificate. The sign-in's unsealed DEK is dropped at once, never used or kept. The token is
  remembered in memory only, in ``Session.reauth`` (``client.core.audit_reauth``), for
  ``REAUTH_WINDOW_SECONDS``: one password per auditor session of a few minutes, not per
  search. A password typed anyway is checked again (a wrong one is refused as before).
  Lock and sign-out forget it; a token the gateway refuses is forgotten and the
  password is asked again (``password_needed``). It is never stored on disk or logged.
- The gateway must answer for the same user and site as the session, else nothing is shown.
- With every search come the site's notes the gateway holds back from the health record
  (held with the upstream's reason code, or in conflict): ids and codes, no content.
- A patient is asked by name, NHS number or date of birth: resolved to ids through this
  laptop's patient index (``client.core.audit_search``) and sent to the gateway's ``patient``
  filter, one query per id (the gateway takes one); a text that matches nobody here but is a
  valid id is sent as the id (a patient this laptop never held); UK local days are widened
  to UTC days for the gateway and the answer is filtered again by local day here.
- An export of results already shown needs the password again unless it was proved within the
  window, checked on the device (``authorise_export``), and is audited before the file is
  written.
- Each query is audited in the local chain (``audit_query``, or ``export``) with its filters
  (identifiers, days and counts only, no clinical content), whether it succeeded or failed.
- Failures are one ``OnlineAuditError`` (a ``UserFacingError``) with a stable ``reason``;
  transport failures stay ``TransportError``, which the UI already explains.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any, Final, TypeVar

from client.core import accounts, audit_search
from client.core.accounts import LoginRefused
from client.core.audit_reauth import REAUTH_WINDOW_SECONDS
from client.core.errors import UserFacingError
from client.core.provisioning import transport_config
from client.core.records import is_fhir_id
from client.core.session import NotAllowed, Session
from sync.device.audit_queries import (
    AuditClientError,
    AuditQuery,
    SearchResult,
    chain_status,
    notes_not_filed,
)
from sync.device.audit_queries import download_csv as _download_csv
from sync.device.audit_queries import search_audit as _search_audit
from sync.device.enrolment import EnrolmentError, online_login
from sync.device.transport import Transport, TransportError

AUDIT_ROLES = ("auditor", "admin")
MAX_GATEWAY_PATIENTS: Final = 10  # one gateway query each; more means: narrow the patient
TOKEN_REFUSED: Final = frozenset({"bearer_invalid", "bearer_required"})
PASSWORD_NEEDED: Final = (
    f"Type your password: it is asked once every {REAUTH_WINDOW_SECONDS // 60} minutes."
)
T = TypeVar("T")


class OnlineAuditError(UserFacingError):
    """An online audit query was refused or failed; ``reason`` is stable."""


@dataclasses.dataclass(frozen=True)
class OnlineAudit:
    search: SearchResult
    chains: list[dict[str, Any]]
    # The site's notes the gateway holds back from the health record (held, conflict); None
    # when the gateway does not list them (an older gateway).
    not_filed: list[dict[str, Any]] | None = None


def _with_token(
    session: Session,
    password: str | None,
    what: str,
    detail: dict[str, Any],
    work: Callable[..., T],
    *,
    patient_id: str | None = None,
) -> T:
    """Run ``work(transport, token)`` with the remembered gateway token, or sign in again at
    the gateway with ``password`` first; audit it either way."""
    if session.role not in AUDIT_ROLES:
        session.record_event(
            what, "denied", patient_id=patient_id, detail={**detail, "why": "role"}
        )
        raise NotAllowed("query the gateway's audit trail")
    token = None if password else session.reauth.token()  # a typed password is always checked
    if token is None and not password:
        raise OnlineAuditError("password_needed", PASSWORD_NEEDED)
    escrow = session.device.header.escrow_blob()
    if escrow is None:
        raise OnlineAuditError("no_escrow", "This laptop cannot sign in to the gateway.")
    try:
        with Transport(transport_config(session.device)) as transport:
            if token is None:
                login = online_login(transport, session.user_id, str(password), escrow)
                token, user_id, site = login.token, login.user_id, login.site
                del login  # the unsealed DEK goes with it: an audit query never needs it
                if user_id != session.user_id or site != session.device.profile.site:
                    raise OnlineAuditError("wrong_user", "The gateway answered for someone else.")
                session.reauth.remember(token)
            result = work(transport, token)
    except (EnrolmentError, AuditClientError) as error:
        if error.reason in TOKEN_REFUSED:
            session.reauth.forget()
        session.record_event(
            what, "failure", patient_id=patient_id, detail={**detail, "why": error.reason}
        )
        if error.reason in TOKEN_REFUSED and not password:
            raise OnlineAuditError("password_needed", PASSWORD_NEEDED) from error
        raise OnlineAuditError(error.reason, error.message) from error
    except (TransportError, OnlineAuditError) as error:
        session.record_event(
            what, "failure", patient_id=patient_id, detail={**detail, "why": error.reason}
        )
        raise
    session.record_event(what, patient_id=patient_id, detail=detail)
    return result


def query_gateway(
    session: Session,
    password: str | None,
    query: AuditQuery,
    *,
    patient_text: str = "",
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> OnlineAudit:
    """Matching AuditEvents of the site, and every device's chain status.

    ``patient_text`` (a name, NHS number, date of birth or id) is resolved on this laptop and
    replaces ``query.patient_id``; ``since``/``until`` are UK local days and replace the
    query's UTC days. ``password`` may be None within the re-authentication window."""
    wanted = audit_search.AuditFilter(None, since, until)
    if patient_text.strip():
        ids = audit_search.resolve_patients(session, patient_text)
        if not ids and is_fhir_id(patient_text.strip()):
            # A patient this laptop never held (another site's) is still asked for by id.
            ids = frozenset({patient_text.strip()})
        if len(ids) > MAX_GATEWAY_PATIENTS:
            raise audit_search.AuditSearchError(
                "too_many_patients",
                f"{len(ids)} patients match. Add the date of birth or type the NHS number.",
            )
        wanted = audit_search.AuditFilter(ids, since, until)
    if since is not None or until is not None:
        wide_since, wide_until = audit_search.gateway_days(since, until)
        query = dataclasses.replace(query, since=wide_since, until=wide_until)
    asked: list[AuditQuery] = [query]
    if wanted.patient_ids is not None:
        asked = [dataclasses.replace(query, patient_id=p) for p in sorted(wanted.patient_ids)]

    def work(transport: Transport, token: str) -> OnlineAudit:
        results = [_search_audit(transport, token, q) for q in asked]
        chains = chain_status(transport, token)
        try:
            not_filed: list[dict[str, Any]] | None = notes_not_filed(transport, token)
        except AuditClientError as error:
            if error.reason not in ("not_found", "http_404"):
                raise
            not_filed = None
        pairs = [(e, v) for r in results for e, v in zip(r.entries, r.events, strict=True)]
        kept = sorted(
            ((e, v) for e, v in pairs if audit_search.matches(e, wanted)),
            key=lambda pair: (pair[0].ts, pair[0].device_id, pair[0].seq),
        )
        found = SearchResult(
            [v for _e, v in kept], [e for e, _v in kept], any(r.truncated for r in results)
        )
        return OnlineAudit(found, chains, not_filed)

    detail = {"where": "gateway", **query.describe(), **audit_search.describe(wanted, "gateway")}
    if wanted.patient_ids is not None:
        detail.pop("patient_id", None)
        if not asked:  # nobody on this laptop matches: nothing to ask, the search is audited
            session.record_event("audit_query", detail=detail | {"results": 0})
            return OnlineAudit(SearchResult([], [], False), [])
    return _with_token(
        session,
        password,
        "audit_query",
        detail,
        work,
        patient_id=audit_search.only_patient(wanted),
    )


def download_csv(session: Session, password: str, query: AuditQuery) -> bytes:
    """The gateway's CSV of the first 1,000 matches (audited as an export)."""
    detail = {"what": "gateway_audit_csv", **query.describe()}
    return _with_token(
        session, password, "export", detail, lambda t, token: _download_csv(t, token, query)
    )


def authorise_export(session: Session, password: str | None, kind: str, count: int) -> None:
    """Export of results already shown (``json`` or ``csv``): the password again (AU-4) unless
    proved within the re-authentication window, checked and throttled like a login; audited
    either way, before the file is written."""
    detail = {"what": "gateway_audit", "format": kind, "events": count}
    if session.role not in AUDIT_ROLES:
        session.record_event("export", "denied", detail={**detail, "why": "role"})
        raise NotAllowed("export the audit trail")
    if password or not session.reauth.confirmed:  # a typed password is always checked
        if not password:
            raise OnlineAuditError("password_needed", PASSWORD_NEEDED)
        try:
            accounts.reauthenticate(session.device, session.user_id, password)
        except LoginRefused:
            if not session.device.wiped:
                session.record_event(
                    "export", "denied", detail={**detail, "why": "reauthentication"}
                )
            raise
        session.reauth.remember()
    session.record_event("export", detail=detail)
