"""The gateway tests' fixture: a real gateway on 127.0.0.1 (see tests/support/gateway.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import Gateway, running_gateway


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(tmp_path) as gw:
        yield gw
