"""The sync engine: push the outbox, then pull every resource type's changes (DESIGN.md §Sync).

The protocol decides; the transport moves bytes (CONVENTIONS.md §3). The engine talks to the
local store only through ``sync.device.replica.Replica`` and never imports the client. The push
is ``sync.device.push``, the pull (with its read-ahead and cursors) ``sync.device.pull``; this
module orders the phases and reports.

Guarantees:
- Control steps before (time, audit, commands), then the data plane's ``metadata`` (what the
  server offers, in ``result.server``), then push before pull, so a clinician's notes
  go up before anything comes down, then control steps after (policy, audit).
- Each phase runs on its own: a failing push, pull or policy step is recorded and the others
  still run. Only a connection-level failure (``FATAL_REASONS``: pin, TLS, network) or a wipe
  ends the whole sync early; cancellation ends it between phases, pages and batches (never in
  the middle of a replica transaction).
- ``run`` never raises for sync failures: the first failure's reason is ``result.error``.
- Progress (phase, items, bytes) is reported through a callback on the caller's thread.
- The data plane is addressed through ``fhir_base``: ``fhir`` under the gateway URL by
  default, or any absolute URL with a path (``…/fhir/R4``) on the origin of
  ``data_transport`` (the control transport unless the data plane is another origin; each
  transport is pinned and bound to its one origin).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence

from sync.device.capabilities import profile_of, read_server_profile
from sync.device.first_pages import (
    METADATA,
    history_cursors,
    read_in_one_batch,
    relative_to_base,
)
from sync.device.outcome import (
    CONNECTION_REASONS,
    Cancelled,
    Progress,
    SyncError,
    SyncResult,
    raise_if_cancelled,
)
from sync.device.pull import DEFAULT_FHIR_BASE, PAGE_SIZE, HistoryPull
from sync.device.push import PUSH_BATCH, OutboxPush
from sync.device.reconcile import RECONCILE_INTERVAL
from sync.device.replica import Replica, ReplicaError
from sync.device.transport import Response, Transport, TransportError
from sync.protocol.fhir.capability import ServerProfile

# The engine's public API: its callers (the client, the control steps) import these from here.
__all__ = [
    "FATAL_REASONS",
    "Cancelled",
    "ControlStep",
    "Progress",
    "SyncEngine",
    "SyncError",
    "SyncResult",
]

log = logging.getLogger(__name__)

# Failures after which nothing else can work in this sync: the connection itself is refused
# or gone, or the device has just been wiped.
FATAL_REASONS = CONNECTION_REASONS | {"wiped", "vault_locked"}

ControlStep = Callable[[Transport, SyncResult], None]


class SyncEngine:
    """One whole sync over one transport connection."""

    def __init__(
        self,
        transport: Transport,
        replica: Replica,
        *,
        resource_types: Sequence[str],
        page_size: int = PAGE_SIZE,
        push_batch: int = PUSH_BATCH,
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
        control_before: Sequence[tuple[str, ControlStep]] = (),
        control_after: Sequence[tuple[str, ControlStep]] = (),
        fhir_base: str = DEFAULT_FHIR_BASE,
        data_transport: Transport | None = None,
        reconcile_every: dt.timedelta = RECONCILE_INTERVAL,
    ) -> None:
        self._transport = transport
        self._data = data_transport or transport
        self._replica = replica
        self._types = tuple(resource_types)
        self._page_size = page_size
        self._push_batch = push_batch
        self._progress = progress or (lambda _: None)
        self._cancel = cancel or threading.Event()
        self._before = tuple(control_before)
        self._after = tuple(control_after)
        self._fhir_base = fhir_base
        self._reconcile_every = reconcile_every
        self._profile: ServerProfile | None = None
        self._metadata_deferred = False  # to be read in the pull's batch (read_metadata)
        self.result = SyncResult()

    # -- running -------------------------------------------------------------------------------

    def run(self) -> SyncResult:
        """Control steps before (time, audit, commands), push, pull, control steps after
        (policy, audit). Never raises for sync failures: see ``result.error``.

        Each phase runs on its own: a failing push, pull or policy step is recorded and the
        others still run, so a remote wipe or lock can never be starved by a broken page or a
        poison note. Only a connection-level failure (pin, TLS, network) or a wipe ends the
        whole sync early; cancellation ends it between phases and pages.
        """
        started = time.monotonic()
        phases: list[tuple[str, Callable[[], None]]] = [
            (name, self._control_phase(name, step)) for name, step in self._before
        ]
        phases += [("metadata", self.read_metadata), ("push", self.push), ("pull", self.pull)]
        phases += [(name, self._control_phase(name, step)) for name, step in self._after]
        try:
            for name, phase in phases:
                raise_if_cancelled(self._cancel)
                try:
                    phase()
                except (SyncError, TransportError, ReplicaError) as error:
                    reason = error.reason
                    if isinstance(error, Cancelled):
                        raise
                    self.result.failed_phases[name] = reason
                    self.result.error = self.result.error or reason
                    log.warning("sync phase %s failed: %s", name, reason)
                    if reason in FATAL_REASONS:
                        break
        except Cancelled as cancelled:
            self.result.error = cancelled.reason
        finally:
            transports = {id(t): t for t in (self._transport, self._data)}.values()
            self.result.requests = sum(t.counters.requests for t in transports)
            self.result.bytes_received = sum(t.counters.bytes_received for t in transports)
            self.result.bytes_sent = sum(t.counters.bytes_sent for t in transports)
            self.result.duration_s = time.monotonic() - started
            self._report("done", "", self.result.pulled + self.result.pushed)
        return self.result

    def _control_phase(self, name: str, step: ControlStep) -> Callable[[], None]:
        def run_step() -> None:
            self._report("control", name, 0)
            step(self._transport, self.result)

        return run_step

    def _report(self, phase: str, detail: str, items: int) -> None:
        received = self._transport.counters.bytes_received
        if self._data is not self._transport:
            received += self._data.counters.bytes_received
        self._progress(Progress(phase, detail, items, received))

    # -- the two directions --------------------------------------------------------------------

    def read_metadata(self) -> None:
        """The data plane's CapabilityStatement, read before the push (``result.server``);
        a server that does not describe itself leaves it None and the engine probes.

        With nothing to push and every type resumed by ``_history``, the statement is not
        needed before the pull: it is read in the pull's one batch instead (``pull``)."""
        if not self._replica.list_outbox(1) and self._all_resumed_by_history():
            self._metadata_deferred = True
            return
        self._set_profile(read_server_profile(self._data, self._fhir_base))

    def _set_profile(self, profile: ServerProfile | None) -> None:
        self._profile = profile
        if profile is not None:
            self.result.server = profile.to_json(self._types)

    def _all_resumed_by_history(self) -> bool:
        return len(history_cursors(self._replica, self._types)) == len(self._types)

    def push(self) -> None:
        """Send the outbox (``sync.device.push``). A note saved since ``read_metadata`` found
        nothing to push is sent knowing what the server offers: the statement is read now."""
        if self._metadata_deferred and self._replica.list_outbox(1):
            self._metadata_deferred = False
            self._set_profile(read_server_profile(self._data, self._fhir_base))
        OutboxPush(
            self._data,
            self._replica,
            self.result,
            batch=self._push_batch,
            report=lambda items: self._report("push", "", items),
            cancel=self._cancel,
            fhir_base=self._fhir_base,
            profile=self._profile,
        ).run()

    def pull(self) -> None:
        """Pull every resource type's changes (``sync.device.pull``): the first page of every
        type resumed by ``_history`` (and a deferred ``metadata``) in one batch first."""
        first_pages = self._batched_first_pages()
        HistoryPull(
            self._data,
            self._replica,
            self.result,
            resource_types=self._types,
            page_size=self._page_size,
            report=lambda resource_type, items: self._report("pull", resource_type, items),
            cancel=self._cancel,
            fhir_base=self._fhir_base,
            profile=self._profile,
            reconcile_every=self._reconcile_every,
            first_pages=first_pages,
        ).run()
        if self._metadata_deferred and self._profile is None:
            self._metadata_deferred = False
            self._set_profile(read_server_profile(self._data, self._fhir_base))

    def _batched_first_pages(self) -> dict[str, Response]:
        """One batch of GETs: the deferred metadata and each history cursor's page
        (``sync.device.first_pages``); {} when there is nothing worth batching or the server
        did not answer the batch (every type is then read on its own, as before)."""
        if self._profile is not None and not self._profile.batch:
            return {}
        cursors = history_cursors(self._replica, self._types)
        relative = {
            kind: url
            for kind, cursor in cursors.items()
            if (url := relative_to_base(cursor, self._fhir_base)) is not None
        }
        wanted = ([METADATA] if self._metadata_deferred else []) + list(relative.values())
        if len(wanted) < 2:
            return {}
        pages = read_in_one_batch(self._data, self._fhir_base, wanted)
        if pages is None:
            return {}
        if self._metadata_deferred:
            metadata, pages = pages[0], pages[1:]
            if metadata is not None:
                self._metadata_deferred = False
                self._set_profile(profile_of(metadata))
        return {kind: page for kind, page in zip(relative, pages, strict=True) if page is not None}
