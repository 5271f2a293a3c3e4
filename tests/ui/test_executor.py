"""The executor runs work on one worker thread and calls back on the GUI thread."""

from __future__ import annotations

import threading
import time

from pytestqt.qtbot import QtBot

from client.ui.executor import Executor
from client.ui.qt import QTimer


def test_work_runs_off_the_gui_thread_and_results_come_back_on_it(qtbot: QtBot) -> None:
    executor = Executor("db")
    gui = threading.get_ident()
    seen: dict[str, int] = {}

    def work() -> int:
        seen["worker"] = threading.get_ident()
        return 42

    results: list[int] = []

    def done(value: int) -> None:
        seen["callback"] = threading.get_ident()
        results.append(value)

    executor.submit(work, done)
    qtbot.waitUntil(lambda: results == [42])
    assert seen["worker"] != gui
    assert seen["callback"] == gui
    executor.shutdown()


def test_calls_run_in_order_on_one_thread(qtbot: QtBot) -> None:
    executor = Executor("db")
    threads: set[int] = set()
    order: list[int] = []

    def work(i: int) -> int:
        threads.add(threading.get_ident())
        time.sleep(0.001)
        return i

    for i in range(20):
        executor.submit(lambda i=i: work(i), order.append)
    qtbot.waitUntil(lambda: len(order) == 20)
    assert order == list(range(20))
    assert len(threads) == 1
    executor.shutdown()


def test_failures_reach_the_failure_callback_or_the_boundary(qtbot: QtBot) -> None:
    executor = Executor("db")
    errors: list[BaseException] = []
    unhandled: list[object] = []
    executor.failed.connect(unhandled.append)

    def boom() -> None:
        raise OSError(28, "No space left on device")

    executor.submit(boom, on_failure=errors.append)
    executor.submit(boom)
    qtbot.waitUntil(lambda: len(errors) == 1 and len(unhandled) == 1)
    assert isinstance(errors[0], OSError)
    assert isinstance(unhandled[0], OSError)
    executor.shutdown()


def test_the_event_loop_keeps_turning_during_long_work(qtbot: QtBot) -> None:
    executor = Executor("sync")
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    finished: list[bool] = []
    executor.submit(lambda: time.sleep(0.6), lambda _: finished.append(True))
    qtbot.waitUntil(lambda: finished == [True], timeout=5000)
    timer.stop()
    assert len(ticks) >= 10  # ~30 expected; the GUI thread was never blocked
    executor.shutdown()
