"""One upstream test's world: its records on a real FHIR server shared by the test module
(sekmet-fhir or Medplum), a real gateway configured for that server, and the real laptops
that sync with the gateway.

Each world's ids start with ``<prefix><n>-`` (n counts worlds in this process), so tests that
share one server never see each other's records."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any, Protocol

from sync.gateway.store.sql import SqlStore
from sync.gateway.upstream.passes import run_pass
from tests.support.gateway import SITE_A, SITE_B, Gateway, observation
from tests.support.sync import DeviceVault, device_view, sync_once, transport_config
from tests.support.tls import PkiFiles
from tests.support.upstream import configure_with_certificate, gateway_data

_worlds = itertools.count()


class FhirServer(Protocol):
    """What a world needs of the upstream server the suite started."""

    @property
    def pki(self) -> PkiFiles: ...

    @property
    def base(self) -> str: ...

    def put(self, resource: dict[str, Any]) -> Any: ...


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UpstreamWorld:
    """Records put on ``server`` under this world's ids; the gateway ``gw``, linked to it,
    holding sites A and B; laptops made on first use, one per site."""

    def __init__(self, tmp: Path, server: FhirServer, gw: Gateway, prefix: str) -> None:
        self.n = next(_worlds)
        self.prefix = f"{prefix}{self.n}-"
        self.tmp, self.server, self.gw = tmp, server, gw
        assert isinstance(gw.store, SqlStore)
        self.store: SqlStore = gw.store
        self.data = gateway_data(tmp)
        configure_with_certificate(self.data, server.pki, server.base)
        for site in (SITE_A, SITE_B):
            gw.store.add_site(site, site, now())
        self.vaults: dict[str, Any] = {}

    def id(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def group(self, name: str, members: list[dict[str, Any]]) -> None:
        self.server.put(
            {
                "resourceType": "Group",
                "id": self.id(name),
                "type": "person",
                "actual": True,
                "member": members,
            }
        )

    def member(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"entity": {"reference": f"Patient/{self.id(name)}"}, **extra}

    def observation(self, name: str, of: str, value: float = 70.0) -> None:
        self.server.put(observation(self.id(name), self.id(of), value))

    def sync(self, *, reconcile: bool | None = True) -> dict[str, int]:
        return run_pass(self.data, self.store, reconcile=reconcile).counts

    def laptop(self, site: str) -> dict[tuple[str, str], str]:
        """A real laptop of ``site`` syncs with the gateway; what its vault then holds."""
        if site not in self.vaults:
            device_id = f"dev-{site}-{self.prefix.rstrip('-')}"
            creds = self.gw.pki.device(device_id, site)
            self.gw.store.set_device(device_id, site, "active")
            device = DeviceVault.create(self.tmp / f"{device_id}.db", device_id)
            config = transport_config(self.gw.url, self.gw.pki.server_pin, creds)
            self.vaults[site] = (device.open(), config)
        vault, config = self.vaults[site]
        result = sync_once(vault, config, site=site)
        assert result.ok, result
        return device_view(vault.connection)

    def held(self, site: str) -> set[tuple[str, str]]:
        """(type, short name) of this world's records a laptop of ``site`` holds."""
        return {
            (t, i.removeprefix(self.prefix))
            for t, i in self.laptop(site)
            if i.startswith(self.prefix)
        }
