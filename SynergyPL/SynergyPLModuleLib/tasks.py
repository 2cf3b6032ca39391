"""Running server calls off the GUI thread and reporting back on it.

A :class:`Task` has a ``work`` function, run on a worker thread, which may only talk to the network
and to numpy (never to MRML or Qt, which are not thread-safe), and ``on_done`` / ``on_error`` /
``on_progress`` callbacks, which :meth:`TaskRunner.poll` calls on the thread that polls: in Slicer a
``QTimer`` on the GUI thread, in tests a loop (:meth:`TaskRunner.wait`). So the GUI never waits for the
network, and every MRML update happens on the GUI thread.

Cancelling sets the task's :class:`threading.Event`; long work (training) checks
:attr:`TaskContext.cancelled` between steps and asks the server to stop.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .signals import Signal

_log = logging.getLogger(__name__)


class TaskCancelled(Exception):
    """Raised inside ``work`` (by :meth:`TaskContext.check_cancelled`) when the user cancelled."""


@dataclass
class Task:
    """One piece of background work and what to do with its outcome on the GUI thread."""

    name: str
    work: Callable[[TaskContext], Any]
    on_done: Callable[[Any], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    on_progress: Callable[[Any], None] | None = None
    on_finally: Callable[[], None] | None = None


@dataclass
class TaskContext:
    """Handed to ``work``: progress reporting and the cancel flag."""

    task_id: int
    _queue: queue.Queue
    cancel_event: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`TaskCancelled` if the user cancelled."""
        if self.cancel_event.is_set():
            raise TaskCancelled("cancelled")

    def report(self, progress: Any) -> None:
        """Send ``progress`` to the task's ``on_progress`` (called later, on the polling thread)."""
        self._queue.put((self.task_id, "progress", progress))

    def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; returns True early if cancelled."""
        return self.cancel_event.wait(seconds)


@dataclass
class TaskHandle:
    """What :meth:`TaskRunner.submit` returns: the task's id, state and outcome."""

    task: Task
    context: TaskContext
    thread: threading.Thread | None = None
    finished: bool = False
    result: Any = None
    error: BaseException | None = None
    started_at: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.task.name

    def cancel(self) -> None:
        self.context.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.context.cancelled


class TaskRunner:
    """Starts each task on its own daemon thread and delivers outcomes through :meth:`poll`.

    Signals (emitted on the polling thread):
    - ``busy_changed(bool)``: True when the first task starts, False when the last one finished.
    - ``unhandled_error(task_name, exception)``: a task failed and had no ``on_error``.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._running: dict[int, TaskHandle] = {}
        self.busy_changed = Signal("busy_changed")
        self.unhandled_error = Signal("unhandled_error")

    # -- submitting -------------------------------------------------------------------------------
    def submit(self, task: Task) -> TaskHandle:
        """Start ``task.work`` on a new worker thread; callbacks run during later :meth:`poll` calls."""
        task_id = next(self._ids)
        handle = TaskHandle(task, TaskContext(task_id, self._queue))
        was_idle = not self._running
        self._running[task_id] = handle
        thread = threading.Thread(target=self._run, args=(handle,), name=f"SynergyPL-{task.name}", daemon=True)
        handle.thread = thread
        thread.start()
        if was_idle:
            self.busy_changed.emit(True)
        return handle

    def _run(self, handle: TaskHandle) -> None:
        try:
            result = handle.task.work(handle.context)
        except BaseException as exc:  # delivered to the GUI thread, never lost
            self._queue.put((handle.context.task_id, "error", exc))
        else:
            self._queue.put((handle.context.task_id, "done", result))

    # -- delivering -------------------------------------------------------------------------------
    def poll(self, max_items: int = 100) -> int:
        """Deliver queued outcomes and progress to the callbacks; returns how many were delivered.

        Call from the GUI thread (a QTimer); never blocks.
        """
        delivered = 0
        while delivered < max_items:
            try:
                task_id, kind, payload = self._queue.get_nowait()
            except queue.Empty:
                break
            delivered += 1
            handle = self._running.get(task_id)
            if handle is None:
                continue
            if kind == "progress":
                self._call(handle, handle.task.on_progress, payload)
                continue
            handle.finished = True
            del self._running[task_id]
            if kind == "done":
                handle.result = payload
                self._call(handle, handle.task.on_done, payload)
            else:
                handle.error = payload
                if handle.task.on_error is not None:
                    self._call(handle, handle.task.on_error, payload)
                else:
                    self.unhandled_error.emit(handle.name, payload)
            self._call(handle, handle.task.on_finally)
            if not self._running:
                self.busy_changed.emit(False)
        return delivered

    def _call(self, handle: TaskHandle, callback: Callable | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as exc:  # a failing callback is reported, and the runner keeps going
            _log.exception("callback of task %s failed", handle.name)
            self.unhandled_error.emit(handle.name, exc)

    # -- state ------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return bool(self._running)

    def running(self) -> list[TaskHandle]:
        return list(self._running.values())

    def cancel_all(self) -> None:
        for handle in list(self._running.values()):
            handle.cancel()

    def wait(self, handle: TaskHandle | None = None, timeout: float = 60.0, interval: float = 0.02) -> bool:
        """Poll until ``handle`` (or every task) finished; True if it did before ``timeout``.

        For tests and scripts without an event loop; the panel uses a QTimer instead.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            done = handle.finished if handle is not None else not self._running
            if done:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Cancel everything and give worker threads ``timeout`` seconds to notice (Slicer exit)."""
        self.cancel_all()
        deadline = time.monotonic() + timeout
        for handle in list(self._running.values()):
            if handle.thread is not None:
                handle.thread.join(max(0.0, deadline - time.monotonic()))
