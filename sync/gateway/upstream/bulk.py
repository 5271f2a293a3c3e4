"""Bulk Data Access (FHIR Bulk Data IG v2) from the upstream: ``Group/[id]/$export`` kick-off,
status polling, and the NDJSON files read line by line.

Invariants:
- Kick-off asks ``Prefer: respond-async`` and NDJSON; anything but ``202`` with a
  ``Content-Location`` on the upstream's origin is ``export_refused`` (the caller falls back to
  paged search for that pass).
- Polling honours ``Retry-After`` (seconds or an HTTP date), clamped to
  [``MIN_POLL_S``, ``MAX_POLL_S``]; without it the wait doubles from ``MIN_POLL_S``. Past
  ``deadline_s`` the poll stops with ``export_timeout`` (the job is kept by the caller and
  polled again at the next pass, never kicked off twice). A job the upstream no longer knows
  (404/410) is ``export_gone``; a failed job is ``export_failed`` with the upstream's
  diagnostics cut to printable text.
- A file is never held whole: it is read in chunks and split into lines, each line bounded by
  ``MAX_LINE_BYTES`` and parsed through ``bounded_json`` (depth and item bounds), here or in a
  screening worker (``screening``). A line that cannot be read is yielded as such
  (``BadLine``), with its line number and a reason code, and the file goes on: one bad
  resource never stops an import.
- A file is read from the upstream's own origin, or from an origin IT named with
  ``upstream set --bulk-origin`` (a storage host): over its own connection with the same CA,
  TLS rules, client certificate, redirect refusal and bounds. The bearer token goes to such a
  host only when the manifest says ``requiresAccessToken: true`` (Bulk Data: the file server
  then controls access with the same tokens); without it, or false, the host never sees it.
  Any other origin is refused (``origin_refused``).
- The files of one read (``read_ndjson``) are one stream to the screening workers, each item
  tagged with its file: no worker waits for the next file's request while the last lines of
  one are written.
- Nothing here logs or keeps record content.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlencode

from sync.gateway.upstream.config import origin_text
from sync.gateway.upstream.connection import UpstreamConnection
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.screening import Screened, screened
from sync.protocol.fhir.bounded_json import BoundedJsonError, loads_bounded
from sync.protocol.fhir.paging import fhir_instant
from sync.protocol.fhir.validate import parse_instant
from sync.protocol.retry import retry_after_seconds

NDJSON = "application/fhir+ndjson"
FHIR_JSON = "application/fhir+json"
MIN_POLL_S = 0.5
MAX_POLL_S = 60.0
DEADLINE_S = 15 * 60.0  # one pass's wait for a job; the next pass polls the same job again
MAX_LINE_BYTES = 8 * 1024 * 1024  # one resource: far above any record a laptop may hold
MAX_MANIFEST_OUTPUTS = 10_000


@dataclass(frozen=True)
class Output:
    rtype: str
    url: str


@dataclass(frozen=True)
class Manifest:
    transaction_time: dt.datetime
    outputs: tuple[Output, ...]
    errors: int  # error files the upstream listed (OperationOutcomes, not downloaded)
    requires_access_token: bool = False  # the files are read with the bearer token


def kick_off(
    connection: UpstreamConnection,
    group_id: str,
    types: Sequence[str],
    since: dt.datetime | None,
) -> str:
    """Start ``Group/<group_id>/$export``; returns the job's status URL."""
    params = {"_outputFormat": NDJSON, "_type": ",".join(types)}
    if since is not None:
        params["_since"] = fhir_instant(since)
    response = connection.request(
        "GET",
        f"Group/{quote(group_id)}/$export?{urlencode(params)}",
        headers={"Accept": FHIR_JSON, "Prefer": "respond-async"},
    )
    location = response.headers.get("content-location", "")
    if response.status != 202 or not location:
        raise UpstreamError("export_refused", f"HTTP {response.status}")
    return connection.url(location)  # on the upstream's origin, or refused


def _retry_after(value: str, now: float) -> float | None:
    """Seconds a ``Retry-After`` asks for (whole seconds or an HTTP date), or None when it is
    absent or unreadable; never raises, whatever the upstream sent."""
    seconds = retry_after_seconds(value)
    if seconds is not None:
        return float(seconds)
    try:
        moment = email.utils.parsedate_to_datetime(value.strip())
        return moment.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _diagnostics(body: Any) -> str:
    issues = body.get("issue") if isinstance(body, dict) else None
    for item in issues if isinstance(issues, list) else []:
        if isinstance(item, dict) and isinstance(item.get("diagnostics"), str):
            return str(item["diagnostics"])
    return ""


def await_manifest(
    connection: UpstreamConnection,
    status_url: str,
    *,
    deadline_s: float = DEADLINE_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Manifest:
    """Poll the job until its manifest is ready (module docstring for the failures)."""
    give_up = clock() + deadline_s
    backoff = MIN_POLL_S
    while True:
        response = connection.get(status_url, headers={"Accept": FHIR_JSON})
        if response.status == 200:
            return read_manifest(_json(response.body))
        if response.status in (404, 410):
            raise UpstreamError("export_gone", f"HTTP {response.status}")
        if response.status != 202:
            detail = _diagnostics(_json(response.body, strict=False))
            raise UpstreamError("export_failed", f"HTTP {response.status} {detail}".strip())
        asked = _retry_after(response.headers.get("retry-after", ""), time.time())
        wait = backoff if asked is None else asked
        wait = min(max(wait, MIN_POLL_S), MAX_POLL_S)
        backoff = min(backoff * 2, MAX_POLL_S)
        if clock() + wait > give_up:
            raise UpstreamError("export_timeout", f"still running after {deadline_s:.0f} s")
        sleep(wait)


def _json(body: bytes, *, strict: bool = True) -> Any:
    try:
        return loads_bounded(body)
    except BoundedJsonError:
        if strict:
            raise UpstreamError("export_failed", "the manifest is not JSON") from None
        return None


def read_manifest(document: Any) -> Manifest:
    """A complete-status manifest (``export_failed`` when it is not one)."""
    if not isinstance(document, dict):
        raise UpstreamError("export_failed", "the manifest is not an object")
    try:
        moment = parse_instant(str(document.get("transactionTime")))
    except ValueError:
        raise UpstreamError("export_failed", "the manifest has no transactionTime") from None
    outputs = document.get("output")
    if not isinstance(outputs, list) or len(outputs) > MAX_MANIFEST_OUTPUTS:
        raise UpstreamError("export_failed", "the manifest has no output list")
    found = []
    for item in outputs:
        if not isinstance(item, dict):
            continue
        rtype, url = item.get("type"), item.get("url")
        if isinstance(rtype, str) and isinstance(url, str):
            found.append(Output(rtype, url))
    errors = document.get("error")
    return Manifest(
        moment,
        tuple(found),
        len(errors) if isinstance(errors, list) else 0,
        document.get("requiresAccessToken") is True,
    )


def ndjson_lines(
    chunks: Iterator[bytes], max_line: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) of each non-empty line, however the chunks cut it; None for a line
    over ``max_line`` bytes (its bytes are skipped, not kept)."""
    buffer = bytearray()
    number = 0
    oversized = False
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if not oversized:
                    buffer += chunk[start:]
                    if len(buffer) > max_line:
                        oversized = True
                        buffer.clear()
                break
            number += 1
            if oversized:
                yield number, None
            elif not buffer:  # the whole line is in this chunk: one copy, no buffer
                line = chunk[start:end]
                if len(line) > max_line:
                    yield number, None
                elif line and not line.isspace():
                    yield number, line
            else:
                buffer += chunk[start:end]
                if len(buffer) > max_line:
                    yield number, None
                elif buffer.strip():
                    yield number, bytes(buffer)
            buffer.clear()
            oversized = False
            start = end + 1
    if oversized or buffer.strip():
        number += 1
        yield number, None if oversized else bytes(buffer)


def _files_connection(
    connection: UpstreamConnection, url: str, with_token: bool
) -> UpstreamConnection | None:
    """A connection to the file's origin when it is one IT allowed (``--bulk-origin``) other
    than the upstream's own: the same configuration (CA, TLS rules, client certificate) with
    that origin as its only one, the upstream's token source only when ``with_token`` (the
    manifest's ``requiresAccessToken``), the same lease fence and counters. None: the
    upstream's own connection reads it (which refuses any origin not allowed)."""
    try:
        origin = origin_text(url)
    except ValueError:
        return None
    if origin not in connection.config.bulk_origins:
        return None
    files_config = replace(
        connection.config, base=origin, token_url=None, client_id=None, jwk_file=None
    )
    files = UpstreamConnection(files_config)
    files.tokens = connection.tokens if with_token else None
    files.fence = connection.fence
    files.counters = connection.counters
    return files


def read_ndjson(
    connection: UpstreamConnection,
    urls: Sequence[str],
    pool: ProcessPoolExecutor | None = None,
    *,
    with_token: bool = False,
) -> Iterator[tuple[int, Screened]]:
    """Each resource of the NDJSON files at ``urls``, file after file and in file order, or a
    ``BadLine``, with the index in ``urls`` of its file; with ``pool``, parsed and validated
    in its worker (``screening``). The files are one stream of lines to the workers: the next
    file is requested, and its first lines screened, while the caller is still taking the
    last lines of the one before. ``with_token``: the manifest's ``requiresAccessToken`` (the
    upstream's own origin always gets the token)."""
    owners: deque[int] = deque()  # the file of each line handed to ``screened``, in order

    def numbered() -> Iterator[tuple[int, bytes | None]]:
        for index, url in enumerate(urls):
            for item in _file_lines(connection, url, with_token):
                owners.append(index)
                yield item

    for item in screened(numbered(), pool):
        yield owners.popleft(), item  # ``screened`` yields one item per line, in order


def _file_lines(
    connection: UpstreamConnection, url: str, with_token: bool
) -> Iterator[tuple[int, bytes | None]]:
    files = _files_connection(connection, url, with_token)
    try:
        with (files or connection).stream(url, headers={"Accept": NDJSON}) as response:
            if response.status in (404, 410):
                raise UpstreamError("export_gone", f"file HTTP {response.status}")
            if response.status != 200:
                raise UpstreamError("export_failed", f"file HTTP {response.status}")
            yield from ndjson_lines(response.chunks)
    finally:
        if files is not None:
            files.close()
