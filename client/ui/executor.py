"""Work off the GUI thread, results back on it (CONVENTIONS.md §2; Anki's CollectionOp).

Guarantees:
- Every call submitted to one ``Executor`` runs on ONE worker thread, in submission order, so
  the SQLCipher connection it owns is never used from two threads.
- Success and failure callbacks run on the thread that owns the executor (the GUI thread),
  delivered through a queued Qt signal; widgets are never touched from the worker.
- A failure callback receives the exception object; nothing is swallowed silently — without a
  failure callback the executor's ``failed`` signal carries it to the one error boundary.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from client.ui.qt import QObject, Qt, Signal

Callback = Callable[[Any], None]


class Executor(QObject):
    """A single-worker executor whose results arrive as Qt signals on the owner's thread."""

    _done = Signal(object, object, object, object)  # success cb, failure cb, result, error
    failed = Signal(object)  # an exception nobody handled: goes to the error boundary
    busy_changed = Signal(bool)

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending = 0
        self._done.connect(self._deliver, Qt.ConnectionType.QueuedConnection)

    def submit(
        self,
        work: Callable[[], Any],
        on_success: Callback | None = None,
        on_failure: Callback | None = None,
    ) -> concurrent.futures.Future[Any]:
        """Run ``work()`` on the worker; call back on this object's thread."""
        self._pending += 1
        if self._pending == 1:
            self.busy_changed.emit(True)

        def run() -> Any:
            try:
                result = work()
            except BaseException as error:  # delivered, never lost
                self._done.emit(on_success, on_failure, None, error)
                raise
            self._done.emit(on_success, on_failure, result, None)
            return result

        return self._pool.submit(run)

    def _deliver(
        self,
        on_success: Callback | None,
        on_failure: Callback | None,
        result: Any,
        error: BaseException | None,
    ) -> None:
        self._pending -= 1
        if self._pending == 0:
            self.busy_changed.emit(False)
        if error is not None:
            if on_failure is not None:
                on_failure(error)
            else:
                self.failed.emit(error)
        elif on_success is not None:
            on_success(result)

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
