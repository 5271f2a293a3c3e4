"""The gateway's errors: one base exception, one stable reason code, one sentence per code.

Invariants:
- Every error the gateway raises on purpose is a ``GatewayError`` (``StoreError``,
  ``ControlError``, ``ResourceError``, ``PkiError``, ``PolicyPublishError``, ``DataDirError``,
  ``FhirError`` and the admin CLI's refusals) and carries ``reason``, a stable code that logs,
  tests and scripts may key off. A command-line entry point catches this one type and prints
  ``refusal(err)``: one plain sentence with the code, never a traceback.
- Every refusal of ``/device`` and ``/audit`` is a ``ControlError`` and leaves as
  ``{"error": "<reason>", "message": "<sentence>"}`` with a 4xx status (plus documented extra
  members such as ``first_bad_seq``; see ``api.responses``); the sentence never echoes request
  content, passwords, tokens or record data.
- This module is plain Python (no web framework), so the store and the CLI may import it.
"""

from __future__ import annotations

from typing import Any

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
    "report_refused": "The wipe report is not valid for any enrolled device.",
    "bad_request": "The request is not valid.",
    "body_too_large": "The request body is too large.",
    "not_found": "No such route.",
    "method_not_allowed": "This method is not allowed here.",
    "internal_error": "The gateway could not complete the request.",
    "gateway_busy": "The gateway is serving as many syncs as it can: try again shortly.",
}

# Sentences for the reasons an operator meets at the command line (``refusal``); a reason
# without one is still printed, after a general sentence.
OPERATOR_MESSAGES: dict[str, str] = {
    "database_busy": "The database is busy (another writer held it too long): try again.",
    "database_unavailable": "The database cannot be reached or opened.",
    "database_error": "The database refused the operation.",
    "bad_database_url": "The database URL is malformed.",
    "unsupported_database_url": "Only postgresql:// database URLs are supported.",
    "password_in_database_url": (
        "The database URL carries a password: put it in ~/.pgpass or PGPASSFILE instead."
    ),
    "closed": "The store was already closed.",
    "store_too_new": (
        "The database was written by a later version of the gateway: run that version (or"
        " later), or restore the backup taken before the upgrade."
    ),
    "bad_workers": "The number of workers and the pool size must be at least 1.",
    "workers_need_postgresql": (
        "More than one worker needs a PostgreSQL database (--database postgresql://…)."
    ),
    "pool_exceeds_max_connections": (
        "Workers x pool size exceed the database's max_connections less its reserve:"
        " use fewer workers, a smaller --pool-size, or raise max_connections."
    ),
    "not_initialised": "The data folder is not initialised: run `init --data DIR` first.",
    "already_initialised": "The data folder is already initialised; it is left untouched.",
    "bad_key_file": "A key file in the data folder is unreadable.",
    "unknown_site": "No such site.",
    "site_exists": "That site already exists.",
    "bad_site": "A site name is lower-case letters, digits and dashes.",
    "unknown_user": "No such user.",
    "user_exists": "That user already exists.",
    "bad_user_id": "That user name is not allowed.",
    "bad_role": "That role does not exist.",
    "bad_password": "That password is not acceptable.",
    "passwords_differ": "The two passwords differ.",
    "password_too_short": "The password is too short.",
    "bad_ttl": "A lifetime is a number and a unit, such as 30m, 1h or 2d.",
    "bad_date": "A date is an ISO 8601 date or time.",
    "bad_seed_arguments": "The seed sizes are out of range.",
    "not_a_public_key": "The file is not a PEM public key.",
    "not_ed25519": "A policy trust key must be Ed25519.",
    "policy_version_exists": "That policy version is already published for this site.",
    "device_exists": "That device is already enrolled.",
    "malformed": "The policy envelope is malformed.",
    # the upstream FHIR server (sync.gateway.upstream)
    "not_configured": "No upstream is configured: run `upstream set` first.",
    "bad_configuration": "The stored upstream configuration is unreadable: run `upstream set`.",
    "bad_base_url": "The upstream base URL must be https://host[:port][/path], no credentials.",
    "bad_token_url": "The token URL must be https://host[:port][/path], no credentials.",
    "bad_bulk_origin": "A Bulk Data file origin is https://host[:port] only, another host than"
    " the base URL's.",
    "ca_required": "Give the upstream's CA with --ca: no other trust store is used.",
    "bad_ca_file": "The CA file holds no PEM certificate.",
    "bad_poll": "The poll interval is out of range (5 to 86400 seconds).",
    "certificate_and_key_together": "Give the client certificate and its key together.",
    "bad_client_certificate": "The client certificate and key cannot be loaded as a pair.",
    "token_settings_together": "Give --token-url, --client-id and --jwk together.",
    "upstream_unauthenticated": "Give a client certificate, a token setup, or both.",
    "bad_client_id": "The client id is not acceptable.",
    "unreadable_file": "A file named on the command line cannot be read.",
    "bad_jwk": "The signing key is not a private JWK.",
    "weak_jwk": "The RSA signing key is shorter than 2048 bits.",
    "unsupported_jwk": "The signing key must be RS384 (RSA) or ES384 (EC P-384).",
    "upstream_tls": "The secure connection to the upstream failed (certificate, CA, TLS version).",
    "upstream_unreachable": "The upstream cannot be reached.",
    "upstream_unavailable": "The upstream answered that it is unavailable (HTTP 5xx, 429 or"
    " 408): the next pass tries again.",
    "upstream_timeout": "The upstream did not answer in time.",
    "upstream_redirect": "The upstream answered with a redirect, which is never followed.",
    "upstream_too_large": "The upstream's answer is larger than allowed.",
    "origin_refused": "The upstream pointed to another server, which is never contacted.",
    "token_refused": "The token server refused the gateway's credentials: check client id and key.",
    "upstream_unauthorised": "The upstream refused the gateway's credentials (HTTP 401): check"
    " the client certificate or token setup; the notes wait.",
    "no_capability_statement": "The upstream's metadata is not a readable CapabilityStatement.",
    "bad_upstream_id": "An upstream Group or Organization id is letters, digits, '-' and '.'.",
    "bad_quarantine_row": "Name one quarantine row as TYPE/ID, as `upstream status` lists it,"
    " or use --all.",
    "bad_link": "A site links to an upstream group or organization.",
    "unknown_group": "The upstream has no such Group: check `site link`.",
    "unknown_organization": "The upstream Organization id is not valid: check `site link`.",
    "search_refused": "The upstream refused a search or read the import needs.",
    "keyset_stuck": "Too many upstream records share one lastUpdated instant to page safely.",
    "upstream_refused": "The upstream refused the note: see its reason, then `upstream retry`.",
    "upstream_conflict": "The record changed upstream since the gateway last saw it.",
    "no_client_identifier": "The record carries no Gatehouse client identifier to file it once.",
    "if_match_not_offered": "The upstream cannot take a safe edit (no If-Match): held for IT.",
    "waiting_for_reference": "Waiting for a record it refers to, to be filed first.",
    "refers_to_deleted": "The note refers to a record deleted since (here or upstream): correct"
    " it on a laptop, or file it by hand.",
    "refers_to_unfiled": "The note refers to a gateway record the upstream never received (not"
    " a laptop's): file that record by hand first, then `upstream retry`.",
    "version_missing": "The gateway no longer holds this version.",
    "upstream_busy": "Another gateway process is running the upstream pass: it goes on there.",
    "export_refused": "The upstream refused to start a Bulk Data export: the site is searched.",
    "export_gone": "The upstream no longer has the export job or its file: the next pass asks.",
    "export_failed": "The upstream's export job failed or its answer is not valid: see the detail.",
    "export_timeout": (
        "The upstream's export job is still running after the wait allowed: the next pass polls "
        "the same job."
    ),
    "history_refused": "The upstream refused a _history read the import needs.",
    "history_too_long": (
        "Too many upstream changes to read in one pass: the mark stays and the next pass goes on."
    ),
    "upstream_lease_lost": (
        "Another gateway process took the upstream pass over after this one stalled: it goes on "
        "there."
    ),
    "patient_not_filed": "Patient details are never filed upstream by the gateway: IT does.",
    "depends_on_held": "It refers to a record that is held: retry that one first.",
    "upstream_duplicates": "The upstream holds two records with this client identifier.",
    "upstream_answer_unreadable": "The upstream's answer named no record id.",
    "membership_emptied": (
        "A linked site's upstream Group or Organization now has no patients: nothing was "
        "removed; check the link with IT."
    ),
}


class GatewayError(Exception):
    """The base of every error the gateway raises on purpose; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(reason if message is None else message)
        self.reason = reason


def sentence(reason: str) -> str:
    """The plain sentence for ``reason`` (a general one where there is none)."""
    return OPERATOR_MESSAGES.get(reason) or MESSAGES.get(reason) or "The gateway refused this."


def refusal(error: GatewayError) -> str:
    """One line for an operator: the sentence, then the reason code in brackets."""
    return f"refused: {sentence(error.reason)} ({error.reason})"


class ControlError(GatewayError):
    """A refused control-plane request; ``reason`` is the stable code."""

    def __init__(self, status: int, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.extra = extra


def error_body(code: str, /, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": MESSAGES.get(code, "The request was refused."), **extra}
