"""A gateway store filing into a real upstream (Medplum), and what laptops push to it: the
shared setup of the notes-out tests (issue 14)."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sync.gateway import datadir
from sync.gateway.api.bundle_entries import parse_bundle
from sync.gateway.api.transaction import Scope, run_transaction
from sync.gateway.store.sql import SqlStore
from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.store.upstream_tables import Filed, OutboxItem
from sync.gateway.upstream.passes import run_pass
from tests.support.gateway import SITE_A, create_entry, observation, patient
from tests.support.medplum_server import MedplumServer
from tests.support.upstream import Relay, configure_with_certificate, gateway_data, running_relay

RUNS = itertools.count()  # a fresh Group and patient per test on the shared Medplum


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def link_patients(store: SqlStore, medplum: MedplumServer, n: int, *patients: str) -> None:
    for pid in patients:
        medplum.put(patient(pid, "x"))
    medplum.put(
        {
            "resourceType": "Group",
            "id": f"n{n}-group",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{p}"}} for p in patients],
        }
    )
    store.add_site(SITE_A, SITE_A, utc_now())
    store.link_site(SITE_A, "group", f"n{n}-group", utc_now())


def upstream_copies(medplum: MedplumServer, client_ids: set[str]) -> Counter[str]:
    """How many upstream resources carry each of ``client_ids`` (the exactly-once measure)."""
    counts = medplum.client_ids(("Encounter", "Observation", "DocumentReference", "Flag"))
    return Counter({cid: counts[cid] for cid in client_ids})


def push_bundle(
    gw_store: SqlStore, entries: list[dict[str, Any]], device: str = "dev-a", site: str = SITE_A
) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    _, parsed = parse_bundle(orjson.dumps(bundle))
    run_transaction(gw_store, parsed, Scope(site, device))


@dataclass
class Linked:
    """A gateway store whose upstream is Medplum behind a relay, with one linked patient."""

    data: Path
    store: SqlStore
    relay: Relay
    pid: str


@contextlib.contextmanager
def linked_through_relay(tmp_path: Path, medplum: MedplumServer) -> Iterator[Linked]:
    n = next(RUNS)
    data = gateway_data(tmp_path)
    store = SqliteStore(data / datadir.DATABASE)
    try:
        with running_relay(medplum.pki, medplum.base, medplum.session()) as relay:
            configure_with_certificate(data, medplum.pki, relay.base)
            link_patients(store, medplum, n, f"n{n}-p")
            run_pass(data, store)
            yield Linked(data, store, relay, f"n{n}-p")
    finally:
        store.close()


def push_new(
    store: SqlStore, pid: str, values: Sequence[float], *, together: bool = False
) -> list[str]:
    """New Observations (no id: the gateway assigns it) pushed as laptops push them, one Bundle
    each (or all in one with ``together``); their client identifiers, in order."""
    entries = [create_entry(observation("new", pid, value)) for value in values]
    for entry in entries:
        entry["resource"].pop("id")
    for bundle in [entries] if together else [[entry] for entry in entries]:
        push_bundle(store, bundle)
    return [str(entry["request"]["ifNoneExist"].split("|")[1]) for entry in entries]


def push_new_observation(store: SqlStore, pid: str, value: float) -> str:
    """A laptop's new note pushed to the gateway; returns its client identifier."""
    return push_new(store, pid, [value])[0]


def edit_observation(store: SqlStore, rid: str, value: float) -> None:
    """A laptop's edit of the gateway's current version (what the clinician saw)."""
    mine = orjson.loads(store.read("Observation", rid).body)  # type: ignore[union-attr]
    mine["valueQuantity"]["value"] = value
    push_bundle(store, [{"resource": mine, "request": {
        "method": "PUT", "url": f"Observation/{rid}",
        "ifMatch": f'W/"{mine["meta"]["versionId"]}"'}}])  # fmt: skip


def filed_note(data: Path, store: SqlStore, pid: str, value: float) -> tuple[OutboxItem, Filed]:
    """A laptop's new Observation, pushed and filed upstream by one pass: its outbox row and
    where it is filed."""
    push_new(store, pid, [value])
    run_pass(data, store, reconcile=False)
    note = store.outbox(("filed",))[-1]
    filed = store.filed("Observation", note.rid)
    assert filed is not None
    return note, filed


def board_edits(
    medplum: MedplumServer, filed: Filed, change: Callable[[dict[str, Any]], None]
) -> None:
    """A clinician at the board edits the filed note (``change`` applied to its JSON)."""
    theirs = medplum.read("Observation", filed.upstream_id)
    assert theirs is not None
    change(theirs)
    medplum.put(theirs)


def valued(value: float) -> Callable[[dict[str, Any]], None]:
    """A ``board_edits`` change: the Observation's value set to ``value``."""

    def change(resource: dict[str, Any]) -> None:
        resource["valueQuantity"]["value"] = value

    return change
