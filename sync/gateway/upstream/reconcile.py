"""The reconciliation by id lists (issue 14): what the upstream holds for a linked site's
patients, compared by id and version with what the gateway holds, so that deletions and
anything the incremental passes missed are caught without downloading every record again.

Per type, for the patients already held here (``load`` reads patients new to the gateway whole):
1. **List**: ``[type]?patient=…&_elements=id,meta`` (``patient=`` in chunks, ``_lastUpdated``
   keyset paging like every search): each entry's id and ``meta.versionId``.
2. **Compare**: an entry at the version held here, for a patient whose site has not changed,
   is ``unchanged`` and never written again; a note filed from here is compared under its
   upstream id. Everything else (new here, another version, a site that changed, an entry
   without ``versionId``) is fetched.
3. **Fetch** whole by ``_id`` (``FETCH_CHUNK`` ids per search, without ``_elements``) and hand
   it to the writer: strict validation, quarantine, batched writes, exactly as any import.
4. The ids seen are returned; the caller deletes here what a linked site holds and the
   listing no longer has (deleted upstream, or now a record of a patient of no linked site).

Invariants:
- **A listed entry is never written.** Only a whole resource fetched by ``_id`` goes through
  the writer. A server that honours ``_elements`` (sekmet-fhir) returns subsets that are only
  compared; one that ignores it (Medplum 4.5.2 returns whole resources) leaves the pass just
  as correct: it downloads more (the listing is whole, and a changed record is downloaded
  twice). Such entries are counted as ``reconcile_filter_ignored`` (``upstream status``).
  A server's ``SUBSETTED`` tag is not relied upon: some servers omit it.
- A listing or fetch that fails raises ``UpstreamError`` before the caller deletes anything:
  a deletion follows only a listing that completed for every chunk of that type.
- ``newest`` (the caller's high-water mark of the type) follows the ``lastUpdated`` of every
  entry listed or fetched, as a whole search would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sync.gateway.upstream.connection import UpstreamConnection
from sync.gateway.upstream.search import keyset_search
from sync.gateway.upstream.writer import ImportWriter, offer_page
from sync.protocol.fhir.paging import last_updated

PATIENT_CHUNK = 50  # patients per listing (``patient=Patient/a,Patient/b,…``), as ``load``
FETCH_CHUNK = 100  # ids per whole fetch (``_id=a,b,…``): about 4 KB of query string
LIST_ELEMENTS = "id,meta"
LIST_COUNT = 1_000  # entries per listing page (about 400 bytes each); a server that caps
# ``_count`` lower is read on past its short page as long as it sends a ``next`` link (search)
_LISTED_KEYS = frozenset({"resourceType", "id", "meta"})


def chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _newer(newest: list[Any], resource: dict[str, Any]) -> None:
    stamp = last_updated(resource)
    if stamp is not None and (newest[0] is None or stamp > newest[0]):
        newest[0] = stamp


def _held_as(
    held: dict[str, tuple[str, str]],
    owner: dict[str, str],
    site_of: dict[str, str],
    rid: str,
    version: Any,
) -> bool:
    """Whether ``rid`` is held here at ``version``, for the site its patient is at now."""
    patient = owner.get(rid)
    return (
        isinstance(version, str)
        and patient in site_of
        and held.get(rid) == (version, site_of[str(patient)])
    )


def _to_fetch(
    connection: UpstreamConnection,
    writer: ImportWriter,
    rtype: str,
    patients: Sequence[str],
    site_of: dict[str, str],
    newest: list[Any],
    seen: set[str],
) -> list[str]:
    """List ``rtype`` of ``patients``; add the unchanged to ``seen``; return the ids to fetch."""
    if not patients:  # e.g. every site was loaded by $export: nothing to list or compare
        return []
    writer.flush()  # the held versions and owners below are what the store holds
    held = writer.held(rtype)
    owner = {rid: row.patient_id for rid, row in writer.store.imported(rtype).items()}
    filed = writer.filed(rtype)
    fetch: dict[str, None] = {}
    for chunk in chunks(sorted(patients), PATIENT_CHUNK):
        params = {"patient": ",".join(f"Patient/{p}" for p in chunk), "_elements": LIST_ELEMENTS}
        for page in keyset_search(connection, rtype, params, count=LIST_COUNT):
            for entry in page:
                writer.counts["reconcile_listed"] += 1
                if set(entry) - _LISTED_KEYS:
                    writer.counts["reconcile_filter_ignored"] += 1
                _newer(newest, entry)
                rid = str(entry.get("id"))
                meta = entry.get("meta")
                version = meta.get("versionId") if isinstance(meta, dict) else None
                mine = filed.get(rid)
                if (
                    mine is not None
                    and version == mine.upstream_version
                    and _held_as(held, owner, site_of, mine.rid, version)
                ):  # a note filed from here, held at its patient's site
                    writer.counts["own_filed"] += 1
                    seen.add(mine.rid)
                elif mine is None and _held_as(held, owner, site_of, rid, version):
                    writer.counts["unchanged"] += 1
                    seen.add(rid)
                else:
                    fetch[rid] = None
    return list(fetch)


def reconcile_type(
    connection: UpstreamConnection,
    writer: ImportWriter,
    rtype: str,
    patients: Sequence[str],
    site_of: dict[str, str],
    newest: list[Any],
) -> set[str]:
    """The ids (as held here) of every ``rtype`` the upstream has for ``patients``; the new and
    changed ones fetched whole and offered to the writer (module docstring)."""
    seen: set[str] = set()
    fetch = _to_fetch(connection, writer, rtype, patients, site_of, newest, seen)
    for chunk in chunks(fetch, FETCH_CHUNK):
        for page in keyset_search(connection, rtype, {"_id": ",".join(chunk)}):
            writer.counts["reconcile_fetched"] += len(page)
            seen |= offer_page(writer, page, site_of, newest)
    writer.flush()
    return seen
