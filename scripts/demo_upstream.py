"""``make demo``'s upstream (issue 14): the health board's record system, played by Medplum.

When Node and the pinned Medplum packages are installed (``make medplum``), the demo starts
Medplum's FHIR router (in memory, TLS 1.3, client certificates; ``tests/support/
medplum_server.py``), loads the synthetic prisons' patients and records into it with one
``Group`` per prison, and points the gateway at it (``upstream set``, ``site link --group``,
one ``upstream sync``): the laptop's patients then come from upstream, and the demo's note is
filed back into it and shown "Filed in the health record". Without Node or Medplum the demo
seeds the gateway directly, as before, and ``summary.json`` says why (``upstream.used``).

The gateway operator's steps in upstream mode work from the gateway folder alone (the frozen
client's hook is a separate process): ``demo-upstream.json`` there names Medplum's base URL and
the demo seeder's certificate (demo only; a real gateway never holds the board's admin keys).
- ``transfer_patient``: the patient leaves one prison's Group for the other's upstream; the
  gateway's next poll makes it a transfer; the call waits until the gateway holds it there.
- ``wait_filed``: waits until the gateway's upstream outbox has filed everything queued.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

DEMO_UPSTREAM_FILE = "demo-upstream.json"
POLL_S = 5  # the gateway's upstream poll (the smallest it takes)
FILED_TIMEOUT_S = 180.0
TRANSFER_TIMEOUT_S = 120.0
SEED_BATCH = 100  # resources per FHIR batch while loading Medplum


def group_id(site: str) -> str:
    return f"demo-{site}"


def _group(site: str, members: Sequence[str]) -> dict[str, Any]:
    return {
        "resourceType": "Group",
        "id": group_id(site),
        "type": "person",
        "actual": True,
        "name": f"Patients of {site}",
        "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in members],
    }


def _url(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def _load(server: Any, resources: Sequence[dict[str, Any]]) -> None:
    """PUT every resource (with its id) in FHIR batches: what a board's migration would do."""
    http = server.session()
    for start in range(0, len(resources), SEED_BATCH):
        chunk = resources[start : start + SEED_BATCH]
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"resource": r, "request": {"method": "PUT", "url": _url(r)}} for r in chunk],
        }
        response = http.post(
            server.base,
            data=json.dumps(bundle),
            headers={"Content-Type": "application/fhir+json"},
            timeout=120,
        )
        response.raise_for_status()
        statuses = [e.get("response", {}).get("status", "") for e in response.json()["entry"]]
        if not all(s.startswith(("200", "201")) for s in statuses):
            raise SystemExit("demo: Medplum refused part of the synthetic data")


@contextlib.contextmanager
def running_upstream(
    out: Path,
    gw: Path,
    sites: Sequence[str],
    patients: int,
    run: Callable[[Sequence[Any]], str],
    step: Callable[[str], None],
    gateway: Path,
) -> Iterator[dict[str, Any]]:
    """Medplum with the demo's data, the gateway pointed at it; yields what ``summary.json``
    says (``used`` False with ``why`` when Node or Medplum is missing: the caller seeds the
    gateway instead)."""
    try:
        from tests.support.medplum_server import MedplumMissing, running_medplum
    except ImportError as error:  # a tree without the test helpers
        yield {"used": False, "why": f"the Medplum helper is not available ({error})"}
        return
    try:
        medplum = running_medplum(out / "medplum")
        server = medplum.__enter__()
    except (MedplumMissing, RuntimeError) as missing:
        yield {"used": False, "why": str(missing)}
        return
    try:
        yield _set_up(server, out, gw, sites, patients, run, step, gateway)
    finally:
        medplum.__exit__(None, None, None)
        step("upstream (Medplum) stopped")


def _set_up(
    server: Any,
    out: Path,
    gw: Path,
    sites: Sequence[str],
    patients: int,
    run: Callable[[Sequence[Any]], str],
    step: Callable[[str], None],
    gateway: Path,
) -> dict[str, Any]:
    from sync.gateway.seed.generator import generate

    step(f"upstream: Medplum's FHIR router at {server.base} (in memory, TLS 1.3)")
    resources = [
        r
        for r in generate(sites=len(sites), patients=patients, seed=1)
        if r["resourceType"] != "Organization"
    ]
    members: dict[str, list[str]] = {site: [] for site in sites}
    for r in resources:
        if r["resourceType"] == "Patient":
            site = r["managingOrganization"]["reference"].split("/", 1)[1]
            members[site].append(r["id"])
    started = time.monotonic()
    _load(server, resources)
    for site in sites:
        server.put(_group(site, members[site]))
    loaded_s = round(time.monotonic() - started, 1)
    step(f"upstream: the board's record holds {len(resources)} resources ({loaded_s} s)")
    creds = server.pki.device("gateway-upstream", "upstream")
    step("pointing the gateway at the upstream and linking each prison to its Group")
    run([gateway, "seed", "--data", gw, "--sites", str(len(sites)), "--patients", "0"])
    run(
        [
            gateway, "upstream", "set", "--data", gw, "--base", server.base,
            "--ca", server.pki.ca_path, "--cert", creds.cert_path, "--key", creds.key_path,
            "--poll", str(POLL_S),
        ]
    )  # fmt: skip
    for site in sites:
        run([gateway, "site", "link", "--data", gw, site, "--group", group_id(site)])
    step("upstream sync: the first import (records in)")
    started = time.monotonic()
    run([gateway, "upstream", "sync", "--data", gw])
    import_s = round(time.monotonic() - started, 1)
    seeder = server.seeder
    (gw / DEMO_UPSTREAM_FILE).write_text(
        json.dumps(
            {
                "base": server.base,
                "ca": str(server.pki.ca_path),
                "cert": str(seeder.cert_path),
                "key": str(seeder.key_path),
            }
        )
    )
    return {
        "used": True,
        "server": "Medplum FHIR router (in memory), tests/support/medplum",
        "base": server.base,
        "resources": len(resources),
        "patients": {site: len(members[site]) for site in sites},
        "load_seconds": loaded_s,
        "import_seconds": import_s,
        "poll_seconds": POLL_S,
    }


# -- the gateway operator's steps (also from the frozen client's hook process) -----------------


def configured(gw: Path) -> dict[str, str] | None:
    path = gw / DEMO_UPSTREAM_FILE
    if not path.exists():
        return None
    value: dict[str, str] = json.loads(path.read_text())
    return value


def _session(conf: dict[str, str]) -> Any:
    import requests

    http = requests.Session()
    http.verify = conf["ca"]
    http.cert = (conf["cert"], conf["key"])
    http.trust_env = False
    return http


def _store(gw: Path) -> Any:
    from sync.gateway import datadir
    from sync.gateway.store.sqlite import SqliteStore

    return SqliteStore(gw / datadir.DATABASE)


def transfer_upstream(gw: Path, conf: dict[str, str], patient_id: str, site: str) -> None:
    """Move ``patient_id`` into ``site``'s Group upstream (out of every other demo Group), then
    wait for the gateway's poll to make it a transfer."""
    http = _session(conf)
    base = conf["base"].rstrip("/")
    found = http.get(f"{base}/Group", params={"member": f"Patient/{patient_id}"}, timeout=30)
    found.raise_for_status()
    for entry in found.json().get("entry", []):
        group = entry["resource"]
        leaving = f"Patient/{patient_id}"
        kept = [m for m in group.get("member", []) if m["entity"]["reference"] != leaving]
        group["member"] = kept
        http.put(f"{base}/Group/{group['id']}", json=group, timeout=30).raise_for_status()
    target = http.get(f"{base}/Group/{group_id(site)}", timeout=30)
    target.raise_for_status()
    group = target.json()
    group.setdefault("member", []).append({"entity": {"reference": f"Patient/{patient_id}"}})
    http.put(f"{base}/Group/{group['id']}", json=group, timeout=30).raise_for_status()
    deadline = time.monotonic() + TRANSFER_TIMEOUT_S
    while time.monotonic() < deadline:
        store = _store(gw)
        try:
            current = store.read("Patient", patient_id)
        finally:
            store.close()
        body = json.loads(current.body) if current is not None else {}
        if body.get("managingOrganization", {}).get("reference") == f"Organization/{site}":
            return
        time.sleep(0.5)
    raise SystemExit("demo: the gateway did not take the upstream transfer in time")


def wait_filed(gw: Path, timeout: float = FILED_TIMEOUT_S) -> dict[str, int]:
    """Wait until nothing is pending in the gateway's upstream outbox; its counts by state."""
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        store = _store(gw)
        try:
            counts = store.outbox_counts()
        finally:
            store.close()
        if counts.get("filed") and not counts.get("pending"):
            return counts
        time.sleep(0.5)
    return counts
