"""UI tests run on Qt's offscreen platform: no display needed, real widgets. As in the app,
cyclic garbage is collected on the GUI thread only (``client.ui.collector``): these tests
also run the gateway and sync workers on other threads of this process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def gui_thread_collector(qapp: Any) -> Iterator[None]:
    from client.ui.collector import GuiThreadCollector

    collector = GuiThreadCollector(qapp)
    collector.start()
    try:
        yield
    finally:
        collector.stop()
