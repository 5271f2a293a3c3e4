"""Loading resources into the store (seed data, tests, imports from other systems).

Invariants: resources are written in batches, each batch one atomic store transaction; a
resource keeps its ``id`` when it has one (a fresh UUID otherwise); Patients must come before
their clinical resources in the iterable (the store refuses an unknown patient). A Patient
re-loaded with another ``managingOrganization`` is a transfer (see ``store``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sync.gateway.store.base import Store

LOAD_BATCH = 500  # resources per write transaction


def load_resources(
    store: Store, resources: Iterable[dict[str, Any]], *, batch: int = LOAD_BATCH
) -> int:
    """Write every resource (create or new version); return how many were written."""
    written = 0
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        with store.write() as tx:
            for resource in pending:
                rid = resource.get("id") or str(uuid.uuid4())
                tx.put(str(resource.get("resourceType")), str(rid), resource)
        pending.clear()

    for resource in resources:
        pending.append(resource)
        written += 1
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return written
