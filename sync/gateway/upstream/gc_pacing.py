"""Python's cyclic garbage collector, paced for an import pass.

An import allocates a few dozen container objects a resource (its parsed JSON, the rows
written for it) and frees nearly all of them by reference counting as soon as the batch is
written. At the collector's default pace (a young collection every 700 net allocations, an
older one every tenth of those) the collector walked the pending batch and everything else
still young over and over: about 40% of the import's time (``bench_upstream --export``, 104k
resources: the pass's reading and writing took 17.3 s at the default pace, 10.1 s paced).

Invariants:
- Inside ``paced_for_import`` the collector's thresholds are ``IMPORT_THRESHOLDS``: it still
  runs, every 100,000 net allocations instead of every 700, so a reference cycle made
  meanwhile (by this thread or any other) is still collected; it is never disabled.
- The thresholds the process had are restored when the last pass inside leaves, however it
  left (an exception included). Passes in several threads at once share the one raised
  setting; the first in saves the process's, the last out restores them.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

IMPORT_THRESHOLDS = (100_000, 50, 50)

_lock = threading.Lock()
_inside = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def paced_for_import() -> Iterator[None]:
    """Run the body with the collector at the import's pace (module docstring)."""
    global _inside, _saved
    with _lock:
        if _inside == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(*IMPORT_THRESHOLDS)
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
