"""Work off the GUI thread, results back on it (CONVENTIONS.md §2; Anki's CollectionOp).

Guarantees:
- Every call submitted to one ``Executor`` runs on ONE worker thread, in submission order, so
  the SQLCipher connection it owns is never used from two threads.
- Success and failure callbacks run on the thread that owns the executor (the GUI thread),
  delivered through a queued Qt signal; widgets are never touched from the worker.
- A failure callback receives the exception object; nothing is swallowed silently — without a
  failure callback the executor's ``failed`` signal carries it to the one error boundary.
- The worker never holds the last reference to a callback or to the work closure (which may
  reach a widget): callbacks stay in a registry on the owner's thread, and the work closure
  travels back with its result, so Qt objects are never destroyed on the worker (a crash).
- The slot that receives the worker's signal is declared with ``@Slot`` (PySide6 6.8 and
  later can crash delivering a cross-thread signal to an undeclared slot: PYSIDE-3124).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from client.ui.qt import QObject, Qt, Signal, Slot

Callback = Callable[[Any], None]


class Executor(QObject):
    """A single-worker executor whose results arrive as Qt signals on the owner's thread."""

    _done = Signal(int, object, object, object)  # token, work closure, result, error
    failed = Signal(object)  # an exception nobody handled: goes to the error boundary
    busy_changed = Signal(bool)

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending = 0
        self._next_token = 0
        self._callbacks: dict[int, tuple[Callback | None, Callback | None]] = {}
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
        token = self._next_token
        self._next_token += 1
        self._callbacks[token] = (on_success, on_failure)
        box = [work]
        done = self._done
        del work, on_success, on_failure  # from here only the box and the registry hold them

        def run() -> Any:
            fn = box.pop()
            try:
                result = fn()
            except BaseException as error:  # delivered, never lost
                error = error.with_traceback(None)  # its frames could hold widgets
                done.emit(token, fn, None, error)
                del fn
                raise error from None
            done.emit(token, fn, result, None)
            del fn
            return result

        return self._pool.submit(run)

    @Slot(int, object, object, object)
    def _deliver(self, token: int, _work: object, result: Any, error: BaseException | None) -> None:
        on_success, on_failure = self._callbacks.pop(token, (None, None))
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
