"""The gateway's storage interface: FHIR resources, their history, a change sequence, devices.

Invariants every backend guarantees:
- Resources are versioned: every write adds an immutable row to the history; ``versionId``
  counts 1, 2, 3 per resource; a delete is a version too (``deleted``).
- The site of a Patient is its ``managingOrganization``; the site of a clinical resource is the
  site of its patient, always (a transfer re-sites the patient's resources in the same
  transaction).
- **Change sequence.** Every committed change gets a ``seq`` from ONE counter, incremented inside
  the writing transaction while that transaction holds the writer lock, so seq order is commit
  order: a reader who has seen everything up to seq N and asks for ``seq > N`` can never miss a
  change committed concurrently. ``lastUpdated`` is taken under the same lock and never goes
  backwards (``max(clock, previous + 1 µs)``), so it agrees with seq order.
  SQLite: ``BEGIN IMMEDIATE`` serialises writers. PostgreSQL (later): the counter is one row
  (``change_counter``) updated with ``UPDATE … SET seq = seq + 1`` inside the transaction; the row
  lock is held until COMMIT, so a second writer waits and always receives a larger seq *and*
  commits later. (A plain SEQUENCE would not do: its values are handed out at nextval, not at
  commit, so a reader could see seq 11 committed before seq 10.)
- Each change is recorded per site: ``put`` (a version enters or changes in the site's feed),
  ``delete`` (deleted), ``leave`` (moved to another site: the old site's feed shows a deletion,
  the new site's feed shows a ``put`` of the current version).
- SQL is kept portable (``?`` parameters, no upsert syntax, no RETURNING, integers for time) so
  a PostgreSQL backend is a connection factory plus a placeholder rewrite.
"""

from __future__ import annotations

import datetime as dt
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

ChangeOp = Literal["put", "delete", "leave"]
DeviceStatus = Literal["active", "revoked", "wiped"]
DEVICE_STATUSES: tuple[DeviceStatus, ...] = ("active", "revoked", "wiped")
MAX_PAGE = 500  # the largest page any query returns


class StoreError(Exception):
    """A write the store refuses; ``reason`` is a stable code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def to_us(moment: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime (the stored form of time)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


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


class WriteTx(Protocol):
    """Operations inside one atomic write transaction (all or nothing)."""

    def current(self, rtype: str, rid: str) -> StoredResource | None: ...

    def find_by_identifier(
        self, rtype: str, site: str, system: str, value: str
    ) -> list[StoredResource]: ...

    def patient_site(self, patient_id: str) -> str | None:
        """The site of a live (not deleted) patient, else None."""
        ...

    def put(self, rtype: str, rid: str, resource: dict[str, Any]) -> StoredResource: ...

    def delete(self, rtype: str, rid: str) -> StoredResource: ...


class Store(Protocol):
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
