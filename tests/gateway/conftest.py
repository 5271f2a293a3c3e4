"""The gateway tests' fixtures: a real gateway on 127.0.0.1 (see tests/support/gateway.py), and
the real third-party FHIR servers the upstream tests run against, one per test module
(Medplum, ``make medplum``; sekmet-fhir, ``make sekmet``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import Gateway, running_gateway
from tests.support.medplum_server import MedplumServer, running_medplum
from tests.support.sekmet_server import SekmetServer, running_sekmet


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(tmp_path) as gw:
        yield gw


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway in ``tmp_path / "gw"``: the rest of ``tmp_path`` is the test's (laptops)."""
    with running_gateway(tmp_path / "gw") as gateway:
        yield gateway


@pytest.fixture(scope="module")
def medplum(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedplumServer]:
    with running_medplum(tmp_path_factory.mktemp("medplum")) as server:
        yield server


@pytest.fixture(scope="module")
def sekmet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SekmetServer]:
    with running_sekmet(tmp_path_factory.mktemp("sekmet")) as server:
        yield server
