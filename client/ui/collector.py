"""Python's cyclic garbage collector runs on the GUI thread only (as Anki's client does).

The collector runs on whichever thread happens to allocate when its threshold is reached: a
sync worker's, or, in tests, the in-process gateway's. A cycle it frees there may hold the
Python wrapper of a Qt object, whose C++ object is then deleted on the wrong thread. The
suite crashed so (a segmentation fault while "Garbage-collecting" on the gateway's thread,
during a first online sign-in on the executor's worker).

Invariants:
- While ``GuiThreadCollector`` runs, automatic collection is off and a timer on the thread
  that owns the collector (the GUI thread) collects the young generations every
  ``INTERVAL_MS`` (under a millisecond) and the whole heap every ``FULL_EVERY`` ticks (40-50 ms
  with the client's 53k tracked objects: once a minute rather than every two seconds, so
  typing does not stall on it every two seconds). Reference counting still frees everything
  outside a cycle at once, on any thread.
- ``stop`` collects once more on this thread and turns automatic collection back on.
"""

from __future__ import annotations

import gc

from client.ui.qt import QObject, QTimer

INTERVAL_MS = 2_000
FULL_EVERY = 30  # ticks: the whole heap once a minute


class GuiThreadCollector(QObject):
    """Cyclic garbage collected on this object's thread only (module docstring)."""

    def __init__(
        self,
        parent: QObject | None = None,
        interval_ms: int = INTERVAL_MS,
        full_every: int = FULL_EVERY,
    ) -> None:
        super().__init__(parent)
        self._full_every = full_every
        self._ticks = 0
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.collect)

    def start(self) -> None:
        gc.disable()
        self._timer.start()

    def collect(self) -> None:
        self._ticks += 1
        gc.collect(2 if self._ticks % self._full_every == 0 else 1)

    def stop(self) -> None:
        self._timer.stop()
        gc.collect()
        gc.enable()
