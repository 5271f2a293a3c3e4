"""The gateway's storage interface: FHIR resources, their history, a change sequence, devices.

Invariants every backend guarantees:
- Resources are versioned: every write adds an immutable row to the history; ``versionId``
  counts 1, 2, 3 per resource; a delete is a version too (``deleted``).
- The site of a Patient is its ``managingOrganization``; the site of a clinical resource is the
  site of its patient, always (a transfer re-sites the patient's resources in the same
  transaction).
- **Change sequence.** Every committed change gets a ``seq``, unique and increasing, and every
  change feed is per site (``history``, ``search`` and their cursors all name one site). Within
  a site, seq order is commit order: a reader who has seen everything of site S up to seq N
  and asks for ``seq > N`` can never miss a change to S committed concurrently. Within a site,
  ``lastUpdated`` never goes backwards in seq order (``max(clock, previous + 1 µs)``).
  (A transfer's moved clinical resources keep their own ``lastUpdated`` in the new site's feed.)
  SQLite (``store.sqlite``): ``BEGIN IMMEDIATE`` serialises all writers, seqs come from one
  counter row, so seq order is commit order for the whole store and ``lastUpdated`` is
  store-wide monotonic. PostgreSQL (``store.pg_write``): no store-wide lock; a write
  transaction locks each site it touches (its ``site_clocks`` row) before reading that site's
  rows and keeps it until COMMIT, and takes its seqs from a SEQUENCE only after every site lock
  it needs is held, so writers of one site commit in seq order while writers of different
  sites run in parallel. (A SEQUENCE alone would not do: its values are handed out at nextval,
  not at commit, so a reader could see seq 11 committed before seq 10.) Seqs may have gaps.
- **Site stays.** Every Patient write that gives the patient a site it did not have (a create,
  a transfer, a re-creation after a delete) opens a stay ``(site, from)`` at the write's
  ``lastUpdated``, and closes the patient's open stay at the same instant; a delete closes it.
  So at any moment a patient has at most one open stay, and ``site_stays`` answers "was this
  patient at site S at time T?" for a note written offline before a transfer reached the
  device.
- Each change is recorded per site: ``put`` (a version enters or changes in the site's feed),
  ``delete`` (deleted), ``leave`` (moved to another site: the old site's feed shows a deletion,
  the new site's feed shows a ``put`` of the current version).
- Both backends are ``store.sql.SqlStore``: one portable definition of every query, over a
  backend's connections, with the differences named in its ``store.tables.Dialect``.
- Control plane (``ControlStore``, SQL in ``store.device_tables``, ``user_tables``,
  ``command_tables``, ``audit_tables``): an enrolment token is consumed by
  one conditional UPDATE (``used_us IS NULL AND expires_us > now``), so of two concurrent uses
  exactly one wins; an audit chain advances by compare-and-set on (seq, head), so two
  concurrent uploads for one device can never both extend it from the same state.

Length: the whole interface both backends implement (its records, ``WriteTx``, ``Store`` and
``ControlStore``), each method's docstring one of its invariants; it stays one file so that
an implementer reads every promise in one place (its only code: the time conversions both
backends share).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sync.gateway.errors import GatewayError

if TYPE_CHECKING:
    from sync.gateway.store.serialised import Serialised

ChangeOp = Literal["put", "delete", "leave"]
DeviceStatus = Literal["active", "revoked", "wiped"]
DEVICE_STATUSES: tuple[DeviceStatus, ...] = ("active", "revoked", "wiped")
Role = Literal["clinician", "auditor", "admin"]
ROLES: tuple[Role, ...] = ("clinician", "auditor", "admin")
UserStatus = Literal["active", "revoked"]
CommandKind = Literal["wipe", "lock", "revoke_user"]
COMMAND_KINDS: tuple[CommandKind, ...] = ("wipe", "lock", "revoke_user")
CommandStatus = Literal["pending", "done", "failed"]
MAX_PAGE = 500  # the largest page any query returns


class StoreError(GatewayError):
    """The store refused or could not do something; ``reason`` is a stable code.

    A refusal of the caller's data (``unknown_patient``, ``token_used``, …) is a StoreError; a
    failure of the database itself is a ``DatabaseFailure``.
    """


class DatabaseFailure(StoreError):
    """The database could not do what was asked — not a refusal of the request: reason
    ``database_busy`` (a lock or connection wait timed out), ``database_unavailable`` (it cannot
    be reached, opened or written), ``bad_database_url`` or ``database_error``. A driver error
    becomes one when it leaves the store (a store method or a ``write()`` block; see
    ``store.tables.Dialect``), never inside a ``WriteTx``, where it stays the driver's own.

    ``conflict``: the database rolled the transaction back to break a deadlock or a
    serialisation conflict with another transaction (reason ``database_busy``); nothing of it
    was committed, and running it again at once usually succeeds (``store.conflicts``)."""

    def __init__(self, reason: str, message: str | None = None, *, conflict: bool = False):
        super().__init__(reason, message)
        self.conflict = conflict


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_us(moment: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime (the stored form of time)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


def fhir_instant(moment: dt.datetime) -> str:
    """FHIR instant in UTC with microseconds: ``2026-11-22T20:30:35.123456+00:00``."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class StoredResource:
    """One version of a resource. ``body`` is its JSON with ``id`` and ``meta`` filled."""

    rtype: str
    rid: str
    version_id: int
    last_updated: dt.datetime
    site: str
    patient_id: str | None
    deleted: bool
    seq: int
    body: bytes


@dataclass(frozen=True)
class SiteStay:
    """A patient was managed by ``site`` from ``start`` until ``end`` (None: still there)."""

    site: str
    start: dt.datetime
    end: dt.datetime | None

    def covers(self, moment: dt.datetime) -> bool:
        return self.start <= moment and (self.end is None or moment < self.end)


@dataclass(frozen=True)
class BreakGlassUse:
    """A verified ``break_glass`` entry of a device's audit chain: ``user_id`` opened the
    patient's record at ``at``; ``expires_at`` is what the device's grant said (None: not
    stated)."""

    user_id: str | None
    at: dt.datetime
    expires_at: dt.datetime | None


@dataclass(frozen=True)
class Change:
    """One row of a site's change feed; ``body`` is None for ``delete`` and ``leave``."""

    seq: int
    rtype: str
    rid: str
    version_id: int
    op: ChangeOp
    last_updated: dt.datetime
    body: bytes | None


@dataclass(frozen=True)
class SearchQuery:
    rtype: str
    site: str
    count: int
    after_seq: int = 0
    last_updated: tuple[tuple[str, int], ...] = ()  # (gt|ge|lt|le, microseconds)
    patient_id: str | None = None
    identifier: tuple[str | None, str] | None = None  # (system or None for any, value)
    name: str | None = None  # normalised words, each must prefix-match a name word


@dataclass(frozen=True)
class HistoryQuery:
    site: str
    count: int
    rtype: str | None = None
    after_seq: int = 0
    since_us: int | None = None


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    site: str
    status: DeviceStatus


@dataclass(frozen=True)
class DeviceAdmission:
    """What admitting a request needs to know about its device, read in one query: its
    register entry and the serial (hex) of its current certificate (None: not enrolled here)."""

    site: str
    status: DeviceStatus
    cert_serial: str | None


@dataclass(frozen=True)
class SiteRecord:
    site: str
    name: str
    created_at: dt.datetime


@dataclass(frozen=True)
class EnrolTokenRecord:
    """A one-time enrolment token; only its SHA-256 (hex) is stored."""

    token_hash: str
    site: str
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None
    device_id: str | None


@dataclass(frozen=True)
class EnrolledDevice:
    """Everything ``device list`` shows about one device."""

    device_id: str
    site: str
    status: DeviceStatus
    enrolled_at: dt.datetime | None
    cert_serial: str | None  # hex
    cert_not_after: dt.datetime | None
    last_seen: dt.datetime | None
    audit_seq: int
    audit_head: str | None
    wipe_cause: str | None = None  # from the laptop's own wipe report (WP-3)
    wiped_at: dt.datetime | None = None  # as the laptop's clock said


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    site: str
    role: Role
    password_hash: str  # an argon2-cffi PHC string ($argon2id$...)
    status: UserStatus
    created_at: dt.datetime


@dataclass(frozen=True)
class LoginSpread:
    """Failed sign-ins spread out: across devices for one user, across users on one device."""

    devices_for_user: int
    users_on_device: int


@dataclass(frozen=True)
class SessionRecord:
    """A bearer token (stored as its SHA-256) bound to the device certificate that got it."""

    token_hash: str
    user_id: str
    role: Role
    site: str
    device_id: str
    cert_serial: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class PolicyRecord:
    site: str
    version: int
    devices: tuple[str, ...] | None
    envelope: str  # the JWS JSON exactly as published (ASCII)
    published_at: dt.datetime


@dataclass(frozen=True)
class CommandRecord:
    command_id: str
    device_id: str
    kind: CommandKind
    user_id: str | None
    issued_at: dt.datetime
    status: CommandStatus
    receipt: str | None = None  # signed receipt JSON once the device answered
    completed_at: dt.datetime | None = None


@dataclass(frozen=True)
class WipeReportRecord:
    """A laptop's signed report that it was wiped (WP-3), as verified by the gateway."""

    device_id: str
    report_id: str
    cause: str
    wiped_at: dt.datetime
    command_id: str | None
    statement: str  # the report and its signature, JSON, as received


WipeReportOutcome = Literal["recorded", "duplicate", "already_reported"]


@dataclass(frozen=True)
class AuditChainRecord:
    """Where the gateway's copy of a device's chain stands (``key`` is k for entry seq+1)."""

    device_id: str
    site: str
    k0: bytes
    seq: int
    head_hash: str
    key: bytes
    receipt: str | None  # the receipt JSON issued for (seq, head_hash), if any
    alerts: int

    def __repr__(self) -> str:  # never print key material
        return f"AuditChainRecord({self.device_id!r}, seq={self.seq}, keys=<hidden>)"


@dataclass(frozen=True)
class AuditRow:
    """One stored audit entry with its queryable columns; canonical + mac rebuild it."""

    device_id: str
    site: str
    seq: int
    ts: dt.datetime
    user_id: str | None
    role: str | None
    action: str
    fhir_action: str
    outcome: str
    patient_id: str | None
    purpose: str | None
    entry_hash: str
    canonical: str
    mac: str


@dataclass(frozen=True)
class AuditAlert:
    alert_id: str
    device_id: str
    site: str
    raised_at: dt.datetime
    first_bad_seq: int | None
    reason: str
    sentence: str


@dataclass(frozen=True)
class AuditQuery:
    """Filters of an audit search (None = any); results ordered by (ts, device, seq)."""

    count: int
    offset: int = 0
    site: str | None = None
    patient_id: str | None = None
    user_id: str | None = None
    device_id: str | None = None
    since: dt.datetime | None = None  # inclusive
    until: dt.datetime | None = None  # inclusive
    action: str | None = None  # the Gatehouse action code (AuditEvent.subtype)
    fhir_action: str | None = None  # C R U D E
    purpose: str | None = None
    break_glass: bool = False  # purpose BTG or action break_glass


class WriteTx(Protocol):
    """Operations inside one atomic write transaction (all or nothing).

    ``put`` and ``delete`` return the version written; its ``seq`` is 0 where the backend
    assigns seqs only when the transaction's writes reach the database (PostgreSQL): read the
    resource again for its seq.
    """

    def prefetch(self, keys: Sequence[tuple[str, str]], *, sites: Sequence[str] = ()) -> None:
        """A hint, never required: the transaction is about to read or write these
        (type, id) (and patients its clinical resources name), and to write at ``sites``; a
        backend may read them all in one round trip, and take the locks of every site among
        them in one go, in one order (no deadlock with another transaction doing the same)."""
        ...

    def flush(self) -> None:
        """Send the writes made so far to the database (they get their seqs), so a statement
        of the same transaction that reads the tables sees them; a no-op where writes are not
        buffered (SQLite)."""
        ...

    def current(self, rtype: str, rid: str) -> StoredResource | None: ...

    def find_by_identifier(
        self, rtype: str, site: str | None, system: str, value: str
    ) -> list[StoredResource]:
        """Live resources of ``rtype`` with the identifier, in ``site`` (None: in any site)."""
        ...

    def find_by_identifiers(
        self, site: str, wanted: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], list[StoredResource]]:
        """For each (type, system, value) of ``wanted``: the live resources of that type with
        the identifier, in ANY site (the caller filters), read after every earlier commit
        that wrote to ``site``. One round trip on PostgreSQL."""
        ...

    def patient_site(self, patient_id: str) -> str | None:
        """The site of a live (not deleted) patient, else None."""
        ...

    def site_stays(self, patient_id: str) -> list[SiteStay]:
        """Every stay of the patient at a site, oldest first (empty: never known)."""
        ...

    def break_glass_uses(self, device_id: str, patient_id: str) -> list[BreakGlassUse]:
        """The successful break-glass accesses to the patient in the device's uploaded (and
        verified) audit chain, oldest first."""
        ...

    def put(
        self, rtype: str, rid: str, resource: dict[str, Any] | Serialised
    ) -> StoredResource: ...

    def put_many(
        self,
        items: Sequence[tuple[str, str, dict[str, Any] | Serialised]],
        *,
        checked: bool = False,
        sites: Sequence[str] = (),
    ) -> list[StoredResource]:
        """``put`` of each (type, id, resource) in turn, with the same results and errors; a
        backend may write them with fewer statements (an import's or a seed's batch).
        ``checked``: the caller has just passed each of these very dicts through
        ``resources.check_resource`` for its type; a backend may skip checking them again.
        ``sites``: the sites they are expected to be written at (a hint, as ``prefetch``'s).
        A ``Serialised`` resource is written as the dict it serialises."""
        ...

    def delete(self, rtype: str, rid: str) -> StoredResource: ...


class ControlStore(Protocol):
    """Control-plane tables (sites, enrolment, users, sessions, policies, commands, audit)."""

    # sites
    def add_site(self, site: str, name: str, now: dt.datetime) -> bool: ...
    def sites(self) -> list[SiteRecord]: ...

    # enrolment and devices
    def add_enrol_token(
        self, token_hash: str, site: str, *, now: dt.datetime, expires_at: dt.datetime
    ) -> None: ...
    def enrol_token(self, token_hash: str) -> EnrolTokenRecord | None: ...
    def enrol_device(
        self,
        token_hash: str,
        *,
        now: dt.datetime,
        device_id: str,
        cert_serial: str,
        cert_not_after: dt.datetime,
        audit_k0: bytes,
        wipe_report_key: str | None = None,
    ) -> str:
        """Consume the token and register the device atomically; return its site.

        ``wipe_report_key`` (base64 raw Ed25519) is stored with the device in the same
        transaction: the only key whose wipe reports the gateway will accept for it.
        Raises ``StoreError`` ``token_unknown`` / ``token_expired`` / ``token_used``.
        """
        ...

    def renew_device_cert(
        self, device_id: str, cert_serial: str, cert_not_after: dt.datetime
    ) -> None: ...
    def current_cert_serial(self, device_id: str) -> str | None: ...
    def device_admission(self, device_id: str) -> DeviceAdmission | None:
        """The device's site, status and current certificate serial in one query (None: no
        such device)."""
        ...

    def device_changes(self) -> int:
        """A counter every store of this process moves on each write it makes to a device's
        status, site or certificate (not shared between processes): what a cache of device
        states in this process compares to know that it may be stale."""
        ...

    def touch_device(self, device_id: str, now: dt.datetime) -> None:
        """Record the device's last contact (only ever moves forward). One statement, no
        writer lock: it reads nothing it depends on."""
        ...

    def enrolled_devices(self, site: str | None = None) -> list[EnrolledDevice]: ...

    # wipe reports (WP-3)
    def wipe_report_key(self, device_id: str) -> str | None:
        """The device's registered wipe-report public key (base64), or None."""
        ...

    def record_wipe_report(
        self,
        report: WipeReportRecord,
        *,
        now: dt.datetime,
        command_receipt: str | None,
        alert_sentence: str,
    ) -> WipeReportOutcome:
        """In one transaction: keep the report (the first one only), mark the device
        ``wiped`` (never the other way), raise a ``device_wiped`` alert for the security team
        with ``alert_sentence`` and, when ``report.command_id`` names a pending wipe command of
        this device and ``command_receipt`` is given, complete it as done.
        ``duplicate``: this very report was already kept; ``already_reported``: another one
        was (nothing changes either way)."""
        ...

    # users and sessions
    def add_user(self, user: UserRecord) -> None: ...
    def user(self, user_id: str) -> UserRecord | None: ...
    def set_user_status(self, user_id: str, status: UserStatus) -> bool: ...
    def login_gate(
        self,
        user_id: str,
        device_id: str,
        now: dt.datetime,
        *,
        since: dt.datetime,
        decide: Callable[[Sequence[dt.datetime], Sequence[dt.datetime]], dt.datetime | None],
    ) -> dt.datetime | None:
        """In ONE write transaction: forget this device's failed sign-ins before ``since``,
        call ``decide(failures of (user, device), failures on the device)`` (times since
        ``since``, oldest first) and, when it returns None, count this attempt (at ``now``)
        before its password is checked. Returns what ``decide`` returned: the moment the
        attempt would be allowed, or None (allowed, and counted)."""
        ...

    def forget_login_failures(self, user_id: str, device_id: str) -> None:
        """A successful sign-in: the failures of this user ON THIS DEVICE are forgotten."""
        ...

    def login_spread(self, user_id: str, device_id: str, since: dt.datetime) -> LoginSpread:
        """How many devices failed for this user, and how many users failed on this device,
        since ``since``."""
        ...

    def add_session(self, session: SessionRecord) -> None: ...
    def session(self, token_hash: str) -> SessionRecord | None: ...

    # policies
    def add_policy(self, policy: PolicyRecord) -> None: ...
    def policies(self, site: str) -> list[PolicyRecord]:
        """The site's policies, highest version first."""
        ...

    # commands
    def add_command(self, command: CommandRecord) -> None: ...
    def command(self, command_id: str) -> CommandRecord | None: ...
    def pending_commands(self, device_id: str) -> list[CommandRecord]: ...
    def complete_command(
        self, command_id: str, status: CommandStatus, receipt: str, now: dt.datetime
    ) -> bool:
        """Record the device's receipt once (False if not pending); a done wipe marks the
        device ``wiped`` in the same transaction."""
        ...

    # audit
    def audit_chain(self, device_id: str) -> AuditChainRecord | None: ...
    def audit_chains(self, site: str | None = None) -> list[AuditChainRecord]: ...
    def audit_entry_hash(self, device_id: str, seq: int) -> str | None: ...
    def audit_append(
        self,
        device_id: str,
        *,
        expect_seq: int,
        expect_head: str,
        new_seq: int,
        new_head: str,
        new_key: bytes,
        receipt: str,
        rows: Sequence[AuditRow],
    ) -> bool:
        """Store ``rows`` and move the chain state, only if it still is (expect_seq,
        expect_head); False (nothing written) when another writer moved it first."""
        ...

    def add_audit_alert(self, alert: AuditAlert) -> None: ...
    def add_audit_alert_once(self, alert: AuditAlert) -> bool:
        """Store ``alert`` unless one with its ``alert_id`` exists; True when stored."""
        ...

    def audit_alerts(self, device_id: str | None = None) -> list[AuditAlert]: ...
    def search_audit(self, query: AuditQuery) -> list[AuditRow]: ...


class Store(ControlStore, Protocol):
    """A gateway storage backend. Every method is safe to call from any thread."""

    def write(self) -> AbstractContextManager[WriteTx]: ...

    def read(self, rtype: str, rid: str) -> StoredResource | None: ...

    def vread(self, rtype: str, rid: str, version_id: int) -> StoredResource | None: ...

    def search(self, query: SearchQuery) -> list[StoredResource]: ...

    def history(self, query: HistoryQuery) -> list[Change]: ...

    def head_seq(self) -> int: ...

    def device(self, device_id: str) -> DeviceRecord | None: ...

    def set_device(self, device_id: str, site: str, status: DeviceStatus) -> None: ...

    def close(self) -> None: ...
