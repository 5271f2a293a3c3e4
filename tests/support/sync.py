"""Shared helpers for the sync crash, convergence and benchmark code: a real gateway, a real
SQLCipher vault driven through ``VaultReplica``, a real engine over real mutual TLS.

What these helpers promise the tests built on them:
- ``DeviceVault`` is a real vault (SQLCipher, raw 256-bit key, the product's migrations, the
  audit chain started with a known k0) without the key-slot/login layer, so a child process
  can open it with the key alone and a round of the crash harness costs milliseconds.
- ``sync_once`` runs the product's engine without control steps (the control plane is tested
  elsewhere) and then ``sync_finished``, exactly like ``client.core.sync_runner`` does.
- ``device_view`` / ``server_view`` are the two sides' truths, compared by (type, id) →
  versionId; ``server_client_ids`` counts device-made resources on the server by client
  identifier, the exactly-once measure of CR-1/CR-2.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from client.core import consultation
from client.core.audit_log import AuditLog
from client.core.consultation import Vital
from client.core.records import CLIENT_ID_SYSTEM, client_id_of
from client.core.replica import VaultReplica
from client.core.schema import MIGRATIONS
from client.core.vault import Vault
from policy.schema import RESOURCE_TYPES
from sync.device.engine import SyncEngine, SyncResult
from sync.device.transport import Transport, TransportConfig
from sync.gateway.seed.generator import generate
from sync.gateway.store.base import SearchQuery, Store
from sync.protocol.audit.chain import verify
from tests.support.tls import DeviceCredentials

SITE = "hmp-brixton"
OTHER_SITE = "hmp-pentonville"
DEVICE_ID = "dev-sync"
USER = "nurse.sync"
TYPES = RESOURCE_TYPES  # what a device syncs under the default policy


# Every vital sign: with its Encounter and note, a consultation of 10 entries (issue 13).
FULL_VITALS = [
    Vital("systolic", 128),
    Vital("diastolic", 82),
    Vital("heart_rate", 71),
    Vital("respiratory_rate", 14),
    Vital("temperature", 36.8),
    Vital("spo2", 98),
    Vital("weight", 80),
    Vital("height", 180),
    Vital("bmi", 24.7),
]


def seed_resources(patients: int, seed: int, sites: int = 2) -> list[dict[str, Any]]:
    """The deterministic synthetic data, Organizations left out (the store has no use)."""
    return [
        r
        for r in generate(sites=sites, patients=patients, seed=seed)
        if r["resourceType"] != "Organization"
    ]


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class DeviceVault:
    """A device's vault file, its key and its audit chain's k0 (all it takes to reopen it)."""

    path: Path
    dek: bytes
    k0: bytes
    device_id: str = DEVICE_ID
    written: list[str] = field(default_factory=list)  # client ids of committed local creates

    @classmethod
    def create(cls, path: Path, device_id: str = DEVICE_ID) -> DeviceVault:
        dev = cls(path, secrets.token_bytes(32), secrets.token_bytes(32), device_id)
        with Vault.open(path, dev.dek, MIGRATIONS) as vault, vault.transaction() as conn:
            AuditLog().initialise(conn, device_id, dev.k0)
        return dev

    def open(self) -> Vault:
        return Vault.open(self.path, self.dek, MIGRATIONS)


def replica_settings(site: str = SITE) -> dict[str, Any]:
    """The keyword arguments of the sync tests' ``VaultReplica``: USER, a clinician of one site,
    on the wall clock."""
    return {"user_id": USER, "role": "clinician", "site_scope": (site,), "clock": now_utc}


def replica_for(vault: Vault, site: str = SITE) -> VaultReplica:
    return VaultReplica(lambda: vault.connection, AuditLog(), **replica_settings(site))


def transport_config(
    url: str, pin_b64: str, creds: DeviceCredentials | tuple[Path, Path], **extra: Any
) -> TransportConfig:
    """Pinned mutual TLS to ``url``; ``creds`` is a test device or (cert file, key file)."""
    cert, key = creds if isinstance(creds, tuple) else (creds.cert_path, creds.key_path)
    return TransportConfig(
        gateway_url=url.rstrip("/") + "/",
        allowed_hosts=["127.0.0.1"],
        spki_pins=(base64.b64decode(pin_b64),),
        client_cert_file=cert,
        client_key_file=key,
        **extra,
    )


def sync_once(
    vault: Vault,
    config: TransportConfig,
    *,
    page_size: int = 50,
    push_batch: int = 50,
    types: Sequence[str] = TYPES,
    sleep: Any = None,
    replica: VaultReplica | None = None,
    site: str = SITE,
    fhir_base: str = "fhir",
    reconcile_every: dt.timedelta | None = None,
    transport_class: type[Transport] = Transport,
) -> SyncResult:
    """One whole sync (push, pull) and its ``sync_finished``, as the product runs it;
    ``reconcile_every`` (default: the product's) set to zero reconciles every type;
    ``transport_class`` may be a subclass of the product's transport that records traffic."""
    replica = replica or replica_for(vault, site)
    kwargs = {} if sleep is None else {"sleep": sleep}
    engine_kwargs: dict[str, Any] = {}
    if reconcile_every is not None:
        engine_kwargs["reconcile_every"] = reconcile_every
    with transport_class(config, **kwargs) as transport:
        result = SyncEngine(
            transport,
            replica,
            resource_types=types,
            page_size=page_size,
            push_batch=push_batch,
            fhir_base=fhir_base,
            **engine_kwargs,
        ).run()
    replica.sync_finished(result.summary())
    return result


def write_consultations(
    vault: Vault, patient_ids: Sequence[str], count: int, tag: str, site: str = SITE
) -> list[str]:
    """Write ``count`` consultations (round-robin over patients) with their ``note_written``
    audit entries, each in its own transaction as the session does; returns the client ids of
    every resource created."""
    made: list[str] = []
    audit = AuditLog()
    for i in range(count):
        pid = patient_ids[i % len(patient_ids)]
        with vault.transaction() as conn:
            now = now_utc()
            result = consultation.write_consultation(
                conn,
                patient_id=pid,
                author_user_id=USER,
                site=site,
                vitals=[Vital("heart_rate", 60 + i % 40)],
                note_text=f"note {tag}-{i}",
                plan_text="review",
                now=now,
            )
            audit.append(
                conn,
                ts=now,
                action="note_written",
                outcome="success",
                user_id=USER,
                role="clinician",
                patient_id=pid,
                detail={"encounter": result.encounter_id},
            )
        made += [result.encounter_id, *result.observation_ids]
        made += [result.note_id] if result.note_id else []
    return made


def device_view(conn: Any, types: Iterable[str] = TYPES) -> dict[tuple[str, str], str]:
    """(type, id) → versionId of every server version the device holds (local edits left out)."""
    wanted = tuple(types)
    rows = conn.execute(
        "SELECT type, id, version_id FROM resources WHERE version_id != 'local'"
    ).fetchall()
    return {(t, i): v for t, i, v in rows if t in wanted}


def device_client_ids(conn: Any) -> Counter[str]:
    """How many stored resources carry each client identifier (local or server copy)."""
    rows = conn.execute("SELECT client_id FROM resources WHERE client_id IS NOT NULL").fetchall()
    return Counter(str(r[0]) for r in rows)


def server_resources(store: Store, site: str, types: Iterable[str] = TYPES) -> list[Any]:
    """Every live resource of ``site`` on the server (paged by change sequence)."""
    found: list[Any] = []
    for rtype in types:
        after = 0
        while True:
            page = store.search(SearchQuery(rtype=rtype, site=site, count=500, after_seq=after))
            found += page
            if len(page) < 500:
                break
            after = page[-1].seq
    return found


def server_view(
    store: Store, site: str = SITE, types: Iterable[str] = TYPES
) -> dict[tuple[str, str], str]:
    return {(r.rtype, r.rid): str(r.version_id) for r in server_resources(store, site, types)}


def server_client_ids(store: Store, sites: Iterable[str] = (SITE, OTHER_SITE)) -> Counter[str]:
    """How many live server resources carry each client identifier, over ``sites``."""
    counts: Counter[str] = Counter()
    for site in sites:
        for stored in server_resources(store, site):
            cid = client_id_of(orjson.loads(stored.body))
            if cid is not None:
                counts[cid] += 1
    return counts


def vault_health(conn: Any, device: DeviceVault) -> tuple[bool, str]:
    """SQLite and SQLCipher integrity, and the audit chain verified WITH its MACs (k0)."""
    if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
        return False, "integrity_check"
    if conn.execute("PRAGMA cipher_integrity_check").fetchall():
        return False, "cipher_integrity_check"
    entries = AuditLog().entries(conn)
    report = verify(entries, device_id=device.device_id, initial_key=device.k0)
    if not report.ok:
        return False, f"audit chain: {report.sentence}"
    if not report.macs_checked or report.entries_checked != len(entries):
        return False, "audit chain checked without MACs"
    return True, "ok"


def new_observation(patient_id: str, value: float) -> dict[str, Any]:
    """A server-side Observation (another clinician's work arriving through the gateway)."""
    return {
        "resourceType": "Observation",
        "id": f"srv-{uuid.uuid4().hex[:20]}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2026-11-20T10:00:00+00:00",
        "valueQuantity": {
            "value": value,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


def client_identifier(resource: dict[str, Any]) -> str | None:
    for ident in resource.get("identifier", []):
        if ident.get("system") == CLIENT_ID_SYSTEM:
            return str(ident.get("value"))
    return None
