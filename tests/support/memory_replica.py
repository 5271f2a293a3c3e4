"""A plain in-memory implementation of ``sync.device.replica.Replica`` for engine tests.

It keeps the protocol's invariants (a page and its cursor applied together, dedupe by version)
so the engine is tested against the contract; the encrypted vault's own implementation
(client.core.replica) is tested against the same gateway end to end elsewhere.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sync.device.replica import ApplyStats, OutboxItem, Page, Quarantined, SentItem


def _newer(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """The vault's version rule: numeric versions compare as numbers; other version ids (a
    third-party server's UUIDs) by ``lastUpdated`` when the id differs."""
    new_version, old_version = str(new["meta"]["versionId"]), str(old["meta"]["versionId"])
    if new_version.isdigit() and old_version.isdigit():
        return int(new_version) > int(old_version)
    later = str(new["meta"].get("lastUpdated", "")) > str(old["meta"].get("lastUpdated", ""))
    return new_version != old_version and later


@dataclass
class MemoryReplica:
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    cursors: dict[str, str] = field(default_factory=dict)
    quarantine: list[Quarantined] = field(default_factory=list)
    outbox: dict[int, OutboxItem] = field(default_factory=dict)
    sent: dict[int, tuple[str, str]] = field(default_factory=dict)
    conflicts: dict[int, Mapping[str, Any] | None] = field(default_factory=dict)
    push_errors: dict[int, str] = field(default_factory=dict)
    pages: int = 0
    fail_after_pages: int | None = None  # simulate a crash inside apply_page

    def read_cursor(self, stream: str) -> str | None:
        return self.cursors.get(stream)

    def apply_page(self, page: Page) -> ApplyStats:
        if self.fail_after_pages is not None and self.pages >= self.fail_after_pages:
            raise KeyboardInterrupt("simulated crash before the page commits")
        staged = copy.deepcopy(self.resources)
        applied = skipped = deleted = 0
        for resource in page.resources:
            key = (str(resource["resourceType"]), str(resource["id"]))
            old = staged.get(key)
            if old is not None and not _newer(resource, old):
                skipped += 1
                continue
            staged[key] = dict(resource)
            applied += 1
        for deletion in page.deletions:
            if staged.pop((deletion.resource_type, deletion.resource_id), None) is not None:
                deleted += 1
        self.resources = staged
        self.quarantine.extend(page.quarantined)
        self.cursors[page.stream] = page.next_cursor
        self.pages += 1
        return ApplyStats(applied, skipped, deleted, len(page.quarantined))

    def held_ids(self, resource_type: str) -> Collection[str]:
        return frozenset(
            rid
            for (kind, rid), resource in self.resources.items()
            if kind == resource_type and resource["meta"].get("versionId") != "local"
        )

    def list_outbox(self, limit: int) -> Sequence[OutboxItem]:
        pending = [
            item
            for seq, item in sorted(self.outbox.items())
            if seq not in self.sent and seq not in self.conflicts
        ]
        return pending[:limit]

    def mark_sent(self, seq: int, server_id: str, server_version: str) -> None:
        self.sent[seq] = (server_id, server_version)

    def mark_sent_batch(self, sent: Sequence[SentItem]) -> Mapping[int, str]:
        for item in sent:
            self.mark_sent(item.seq, item.server_id, item.server_version)
        return {}

    def record_conflict(self, seq: int, server_resource: Mapping[str, Any] | None) -> None:
        self.conflicts[seq] = server_resource

    def record_push_error(self, seq: int, reason: str) -> None:
        self.push_errors[seq] = reason

    def of_type(self, resource_type: str) -> list[dict[str, Any]]:
        return [r for (t, _), r in self.resources.items() if t == resource_type]
