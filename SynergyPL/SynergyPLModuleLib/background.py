"""Running server calls off the GUI thread and reporting back on it.

A :class:`BackgroundCall` has a ``work`` function, run on a worker thread, which may only talk to the network
and to numpy (never to MRML or Qt, which are not thread-safe), and ``on_done`` / ``on_error`` /
``on_progress`` callbacks, which :meth:`BackgroundRunner.poll` calls on the thread that polls: in Slicer a
``QTimer`` on the GUI thread, in tests a loop (:meth:`BackgroundRunner.wait`). So the GUI never waits for the
network, and every MRML update happens on the GUI thread.

Cancelling sets the task's :class:`threading.Event`; long work (training) checks
:attr:`CallContext.cancelled` between steps and asks the server to stop.

Child processes for worker threads (the volume transfers of :mod:`SynergyPLLib.client.helper`) are
started and reaped by :class:`ProcessLauncher` inside :meth:`BackgroundRunner.poll`, on the GUI thread: in
Slicer a worker thread gets the GIL only when the GUI thread runs Python, so a worker that had to start,
feed and watch a process itself would advance one step per timer tick. The worker only waits.
"""

from __future__ import annotations

import itertools
import logging
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .signals import Signal

_log = logging.getLogger(__name__)

# How often the panel's QTimer calls BackgroundRunner.poll while work runs: each tick is also when worker
# threads get the GIL inside Slicer, so it bounds how fast they advance.
POLL_INTERVAL_MS = 20
HANDOVER_SECONDS = 0.02  # longest the GUI thread waits for a worker to take a finished process's answer


class CallCancelled(Exception):
    """Raised inside ``work`` (by :meth:`CallContext.check_cancelled`) when the user cancelled."""


@dataclass
class BackgroundCall:
    """One piece of background work and what to do with its outcome on the GUI thread."""

    name: str
    work: Callable[[CallContext], Any]
    on_done: Callable[[Any], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    on_progress: Callable[[Any], None] | None = None
    on_finally: Callable[[], None] | None = None


@dataclass
class CallContext:
    """Handed to ``work``: progress reporting and the cancel flag."""

    task_id: int
    _queue: queue.Queue
    cancel_event: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`CallCancelled` if the user cancelled."""
        if self.cancel_event.is_set():
            raise CallCancelled("cancelled")

    def report(self, progress: Any) -> None:
        """Send ``progress`` to the task's ``on_progress`` (called later, on the polling thread)."""
        self._queue.put((self.task_id, "progress", progress))

    def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; returns True early if cancelled."""
        return self.cancel_event.wait(seconds)


@dataclass
class CallHandle:
    """What :meth:`BackgroundRunner.submit` returns: the task's id, state and outcome."""

    task: BackgroundCall
    context: CallContext
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


@dataclass
class _ProcessRequest:
    argv: list
    env: dict
    stdin: bytes
    done: threading.Event = field(default_factory=threading.Event)
    resumed: threading.Event = field(default_factory=threading.Event)
    popen: subprocess.Popen | None = None
    returncode: int | None = None
    stdout: bytes = b""
    error: OSError | None = None
    prepare_only: bool = False  # start a process ahead, run nothing

    @property
    def key(self) -> tuple:
        return tuple(self.argv), tuple(sorted(self.env.items()))


class ProcessLauncher:
    """Runs child processes for worker threads, started, fed and reaped by :meth:`poll` on the polling
    thread.

    ``run(argv, env, stdin)`` (a worker thread) blocks, without the GIL, until the process ended and
    returns ``(exit code, stdout bytes)``; called on the polling thread itself it runs the process
    directly. The child gets ``stdin`` and end-of-file; its stdout must stay small (one JSON line): it
    is read once the child has exited. :meth:`prepare` (and the end of each run) starts one process
    with that command line ahead, waiting on stdin, so the next run does not pay the interpreter's
    start-up; it is started after a run ended, never beside a running transfer.
    """

    def __init__(self, keep_ready: bool = True) -> None:
        self._pending: queue.Queue = queue.Queue()
        self._running: list[_ProcessRequest] = []
        self._ready: dict[tuple, subprocess.Popen] = {}
        self.keep_ready = keep_ready
        self._poll_thread: int | None = None

    def run(self, argv: list, env: dict, stdin: bytes = b"") -> tuple[int, bytes]:
        if threading.get_ident() in (self._poll_thread, threading.main_thread().ident):
            done = subprocess.run(argv, env=env, input=stdin, stdout=subprocess.PIPE, check=False)
            return done.returncode, done.stdout
        request = _ProcessRequest(list(argv), dict(env), bytes(stdin))
        self._pending.put(request)
        request.done.wait()
        request.resumed.set()
        if request.error is not None:
            raise request.error
        return int(request.returncode), request.stdout

    def prepare(self, argv: list, env: dict) -> None:
        """Have a process for this command line started ahead (at the next :meth:`poll`); any thread."""
        if self.keep_ready:
            self._pending.put(_ProcessRequest(list(argv), dict(env), b"", prepare_only=True))

    @staticmethod
    def _spawn(argv: list, env: dict) -> subprocess.Popen:
        return subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _start(self, request: _ProcessRequest) -> None:
        ready = self._ready.pop(request.key, None)
        candidates = [ready] if ready is not None and ready.poll() is None else []
        candidates.append(None)  # a fresh process
        for last, popen in enumerate(candidates, start=1 - len(candidates)):
            try:
                popen = popen or self._spawn(request.argv, request.env)
                popen.stdin.write(request.stdin)
                popen.stdin.close()
            except OSError as exc:  # BrokenPipeError: the one started ahead had died
                if popen is not None:
                    popen.kill()
                    popen.wait()
                if last == 0 or not isinstance(exc, BrokenPipeError):
                    request.error = exc
                    request.done.set()
                    return
                continue
            request.popen = popen
            self._running.append(request)
            return

    def _make_ready(self, request: _ProcessRequest) -> None:
        """One process started ahead, for the latest command line."""
        current = self._ready.get(request.key)
        if not self.keep_ready or (current is not None and current.poll() is None):
            return
        for key, stale in list(self._ready.items()):
            stale.kill()
            stale.wait()
            del self._ready[key]
        try:
            self._ready[request.key] = self._spawn(request.argv, request.env)
        except OSError:
            pass

    def poll(self) -> None:
        """Start what workers asked for; finish what has exited. Never blocks."""
        self._poll_thread = threading.get_ident()
        while True:
            try:
                request = self._pending.get_nowait()
            except queue.Empty:
                break
            if request.prepare_only:
                if not self._running:
                    self._make_ready(request)
                continue
            self._start(request)
        finished = []
        for request in list(self._running):
            code = request.popen.poll()
            if code is None:
                continue
            self._running.remove(request)
            request.returncode, request.stdout = code, request.popen.stdout.read()
            request.popen.stdout.close()
            request.done.set()
            finished.append(request)
        for request in finished:
            # Hand the GIL to the waiting worker now (inside Slicer it would otherwise wait for the next
            # tick): it takes the answer and, mostly, finishes its task before this poll delivers.
            request.resumed.wait(HANDOVER_SECONDS)
        if finished and not self._running:
            self._make_ready(finished[-1])

    @property
    def busy(self) -> bool:
        return bool(self._running) or not self._pending.empty()

    def kill_all(self) -> None:
        """Stop every child (Slicer exits, the module is reloaded); their workers get an error. No
        process is started ahead afterwards."""
        self.keep_ready = False
        for popen in list(self._ready.values()) + [r.popen for r in self._running]:
            popen.kill()
            popen.wait()
        self._ready.clear()
        self.poll()
        while True:
            try:
                request = self._pending.get_nowait()
            except queue.Empty:
                break
            request.error = OSError("cancelled before it started")
            request.done.set()


class BackgroundRunner:
    """Starts each task on its own daemon thread and delivers outcomes through :meth:`poll`.

    Signals (emitted on the polling thread):
    - ``busy_changed(bool)``: True when the first task starts, False when the last one finished.
    - ``unhandled_error(task_name, exception)``: a task failed and had no ``on_error``.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._running: dict[int, CallHandle] = {}
        self.busy_changed = Signal("busy_changed")
        self.unhandled_error = Signal("unhandled_error")
        self.processes = ProcessLauncher()

    # -- submitting -------------------------------------------------------------------------------
    def submit(self, task: BackgroundCall) -> CallHandle:
        """Start ``task.work`` on a new worker thread; callbacks run during later :meth:`poll` calls."""
        task_id = next(self._ids)
        handle = CallHandle(task, CallContext(task_id, self._queue))
        was_idle = not self._running
        self._running[task_id] = handle
        thread = threading.Thread(target=self._run, args=(handle,), name=f"SynergyPL-{task.name}", daemon=True)
        handle.thread = thread
        thread.start()
        if was_idle:
            self.busy_changed.emit(True)
        return handle

    def _run(self, handle: CallHandle) -> None:
        try:
            result = handle.task.work(handle.context)
        except BaseException as exc:  # delivered to the GUI thread, never lost
            self._queue.put((handle.context.task_id, "error", exc))
        else:
            self._queue.put((handle.context.task_id, "done", result))

    # -- delivering -------------------------------------------------------------------------------
    def poll(self, max_items: int = 100) -> int:
        """Deliver queued outcomes and progress to the callbacks; returns how many were delivered.

        Call from the GUI thread (a QTimer); never blocks. Also starts and reaps the worker threads'
        child processes (:class:`ProcessLauncher`).
        """
        self.processes.poll()
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

    def _call(self, handle: CallHandle, callback: Callable | None, *args: Any) -> None:
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

    def running(self) -> list[CallHandle]:
        return list(self._running.values())

    def cancel_all(self) -> None:
        for handle in list(self._running.values()):
            handle.cancel()

    def wait(self, handle: CallHandle | None = None, timeout: float = 60.0, interval: float = 0.02) -> bool:
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
        """Cancel everything, stop child processes, and give worker threads ``timeout`` seconds to notice
        (Slicer exit)."""
        self.cancel_all()
        self.processes.kill_all()
        deadline = time.monotonic() + timeout
        for handle in list(self._running.values()):
            if handle.thread is not None:
                handle.thread.join(max(0.0, deadline - time.monotonic()))
