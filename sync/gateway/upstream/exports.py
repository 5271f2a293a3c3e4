"""A linked site's records by Bulk Data ``Group/[id]/$export`` (initial load, reconciliation,
and ``_since`` increments where the upstream has no ``_history``).

Invariants:
- **Membership still decides scope.** The export is only a transport: a resource is written
  only when its patient is a current member of the site (``membership``: ``inactive`` and
  ended ``period`` members have left, whatever the upstream's export includes), and its
  Patient is held here. The Patient file is read first, so no record ever arrives before its
  patient.
- **Resumable, exactly once.** The job's status URL is saved (``upstream_marks``,
  ``export-job:<group>``) before it is polled: a pass killed while polling or reading polls the
  same job again (a new one only when the upstream no longer knows it). Files are re-read
  from the start; every version already held is "unchanged" (``writer``), so nothing reaches a
  site's feed twice. The job is forgotten, and the group's mark (``export:<group>``, the
  manifest's ``transactionTime``) set, only after every file was read and written.
- Every line goes through the writer (strict validation, quarantine with a reason); an
  unreadable line is quarantined as ``<type>/ndjson-line-<n>`` with its reason code, and the
  rest of the file goes on.
- A file is streamed (``bulk.read_ndjson``): memory does not grow with its size. The record
  files are one stream, after every Patient file is written: the next file is already being
  read and screened while the last lines of one are written.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from sync.gateway.store.upstream_tables import SiteLink
from sync.gateway.upstream import bulk
from sync.gateway.upstream.connection import UpstreamConnection
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.screening import BadLine, ReadyLine, screening_pool
from sync.gateway.upstream.writer import ImportWriter, patient_of
from sync.protocol.fhir.paging import fhir_instant
from sync.protocol.fhir.validate import parse_instant
from sync.protocol.fhir.vocabulary import CLINICAL_TYPES, PATIENT

EXPORT_TYPES: tuple[str, ...] = (PATIENT, *CLINICAL_TYPES)


@dataclass
class ExportResult:
    transaction_time: dt.datetime
    patients: set[str] = field(default_factory=set)  # members the export returned
    seen: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # type → ids


def job_stream(group: str) -> str:
    return f"export-job:{group}"


def done_stream(group: str) -> str:
    return f"export:{group}"


def last_export(writer: ImportWriter, group: str) -> dt.datetime | None:
    """The ``transactionTime`` of the group's last complete export (None: never)."""
    text = writer.store.upstream_mark(done_stream(group))
    try:
        return None if not text else parse_instant(text)
    except ValueError:
        return None


def _saved_job(writer: ImportWriter, group: str) -> dict[str, str] | None:
    text = writer.store.upstream_mark(job_stream(group))
    try:
        job = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        return None
    return job if isinstance(job, dict) and isinstance(job.get("url"), str) else None


def _save(writer: ImportWriter, stream: str, value: str) -> None:
    with writer.store.write():
        writer.store.set_mark_in_tx(stream, value, writer.now)


def _job(
    connection: UpstreamConnection,
    writer: ImportWriter,
    group: str,
    types: tuple[str, ...],
    since: dt.datetime | None,
) -> tuple[str, bool]:
    """The status URL of the job to read (a saved one when it covers what is asked), and
    whether it was resumed."""
    wanted = "" if since is None else fhir_instant(since)
    saved = _saved_job(writer, group)
    covers = saved is not None and saved.get("since", "") in ("", wanted)
    if saved is not None and covers and saved.get("types", "") == ",".join(types):
        return saved["url"], True
    url = bulk.kick_off(connection, group, types, since)
    job = {"url": url, "since": wanted, "types": ",".join(types)}
    _save(writer, job_stream(group), orjson.dumps(job).decode())
    return url, False


def export_group(
    connection: UpstreamConnection,
    writer: ImportWriter,
    link: SiteLink,
    site_of: dict[str, str],
    *,
    types: tuple[str, ...] = EXPORT_TYPES,
    since: dt.datetime | None = None,
    deadline_s: float = bulk.DEADLINE_S,
    sleep: Callable[[float], None] | None = None,
) -> ExportResult:
    """Import ``link``'s group by ``$export`` (module docstring); raises ``UpstreamError``."""
    url, resumed = _job(connection, writer, link.ref, types, since)
    pause = sleep or time.sleep
    try:
        manifest = bulk.await_manifest(connection, url, deadline_s=deadline_s, sleep=pause)
    except UpstreamError as gone:
        if gone.reason != "export_gone" or not resumed:
            raise
        _save(writer, job_stream(link.ref), "")  # the upstream forgot it: start again, once
        url, _ = _job(connection, writer, link.ref, types, since)
        manifest = bulk.await_manifest(connection, url, deadline_s=deadline_s, sleep=pause)
    writer.counts["export_resumed"] += int(resumed)
    writer.counts["export_errors"] += manifest.errors
    result = ExportResult(manifest.transaction_time)
    members = {p for p, s in site_of.items() if s == link.site}
    if PATIENT not in types:  # an increment of records only: the patients held here
        result.patients = members & set(writer.held(PATIENT))
    outputs = [o for o in manifest.outputs if o.rtype in types]
    patient_files = [o for o in outputs if o.rtype == PATIENT]
    record_files = sorted(
        (o for o in outputs if o.rtype != PATIENT), key=lambda o: types.index(o.rtype)
    )
    if patient_files:
        _read_files(connection, writer, manifest, patient_files, link.site, members, result)
    if record_files:
        writer.flush()
        held = writer.held(PATIENT)
        result.patients = {p for p in result.patients if p in held}
        _read_files(connection, writer, manifest, record_files, link.site, members, result)
    writer.flush()
    writer.counts["export_files"] += len(outputs)
    _save(writer, done_stream(link.ref), fhir_instant(manifest.transaction_time))
    _save(writer, job_stream(link.ref), "")
    return result


def _read_files(
    connection: UpstreamConnection,
    writer: ImportWriter,
    manifest: bulk.Manifest,
    outputs: list[bulk.Output],
    site: str,
    members: set[str],
    result: ExportResult,
) -> None:
    """Every line of ``outputs``, read as one stream (``bulk.read_ndjson``), through the
    writer (module docstring)."""
    urls = [output.url for output in outputs]
    with_token = manifest.requires_access_token
    lines = bulk.read_ndjson(connection, urls, screening_pool(), with_token=with_token)
    for index, line in lines:
        if isinstance(line, BadLine):
            rtype = outputs[index].rtype
            writer.quarantine_id(rtype, f"ndjson-line-{line.number}", line.reason)
            continue
        if isinstance(line, ReadyLine):  # a clinical resource, validated and serialised
            serialised = line.serialised
            rtype, patient = serialised.rtype, serialised.patient
            if rtype not in EXPORT_TYPES:
                writer.counts["export_other_types"] += 1
            elif patient not in result.patients:
                writer.counts["export_not_member"] += 1
            else:
                held_as = writer.offer_ready(line, site, patient)
                result.seen[rtype].add(held_as or writer.held_id(rtype, line.rid))
            continue
        item, depth, validated = line.resource, line.depth, line.validated
        rtype = str(item["resourceType"])
        if rtype not in EXPORT_TYPES:
            writer.counts["export_other_types"] += 1
            continue
        if rtype == PATIENT:
            pid = str(item.get("id"))
            if pid not in members:
                writer.counts["export_not_member"] += 1
                continue
            result.patients.add(pid)  # returned upstream (kept as held if this version is bad)
            if writer.offer(item, site, pid, depth=depth, validated=validated) is not None:
                result.seen[PATIENT].add(pid)
            continue
        owner = patient_of(item)
        if owner is None:
            writer.quarantine(item, "missing_patient_reference")
            continue
        if owner not in result.patients:
            writer.counts["export_not_member"] += 1
            continue
        held_as = writer.offer(item, site, owner, depth=depth, validated=validated)
        result.seen[rtype].add(held_as or writer.held_id(rtype, str(item.get("id"))))
