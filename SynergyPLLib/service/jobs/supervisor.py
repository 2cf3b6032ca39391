"""Worker process supervision (runs inside the API process, in one thread).

Each lane (``train``, ``predict``) has at most one worker process
(``python -m SynergyPLLib.service.jobs.worker``) that claims queued jobs of its kind from the database.
The supervisor starts a worker when its lane has queued jobs, reaps it when it ends (its running jobs
become ``interrupted``), kills one that ignores a cancel past the grace period, and marks running jobs
whose worker is gone as ``interrupted``. It also wakes the waiters (long-poll, SSE) whenever a worker
reports a change.

Talking to a worker: the supervisor writes ``wake`` / ``cancel <job>`` lines on its stdin; the worker
prints one JSON line on stdout whenever a job changes. A worker whose stdin closes (the API process
died) exits at once; on Linux it is also killed by PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from ...common.job_status import JobStatus
from ..settings import ServiceSettings
from ..store.db import Job, now
from ..store.files import empty_dir, remove_partials
from ..store.orphans import remove_orphans
from ..store.workspace import Workspace
from .processes import pid_alive

log = logging.getLogger("synergypl.jobs")


def _is_our_worker(pid: int, root: Path) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"SynergyPLLib.service.jobs.worker" in cmd and str(root).encode() in cmd


class Lane:
    """One worker process slot."""

    def __init__(self, kind: str, idle_seconds: float) -> None:
        self.kind = kind
        self.idle_seconds = idle_seconds
        self.proc: subprocess.Popen | None = None
        self.reader: threading.Thread | None = None
        self.cancel_sent: dict[int, float] = {}
        self._write_lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, line: str) -> bool:
        with self._write_lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return False
            try:
                proc.stdin.write(line + "\n")
                proc.stdin.flush()
                return True
            except (BrokenPipeError, OSError, ValueError):
                return False


class Supervisor:
    """The worker lanes, the thread that keeps them running, and the waiters to wake on a change."""

    def __init__(self, ws: Workspace, settings: ServiceSettings) -> None:
        self.ws = ws
        self.settings = settings
        self.lanes = {"train": Lane("train", settings.train_idle_seconds),
                      "predict": Lane("predict", settings.predict_idle_seconds)}
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._waiters_lock = threading.Lock()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ---- life cycle ------------------------------------------------------------------------------
    def recover(self) -> list[int]:
        """At start: jobs left 'running' by a previous process become 'interrupted'. Returns their ids."""
        with self.ws.db.write_session() as s:
            jobs = list(s.scalars(select(Job).where(Job.status == JobStatus.RUNNING)))
            for job in jobs:
                if job.worker_pid and pid_alive(job.worker_pid) and _is_our_worker(job.worker_pid, self.ws.root):
                    os.kill(job.worker_pid, signal.SIGKILL)  # an orphan of the dead service
                job.status = JobStatus.INTERRUPTED
                job.error = ("the service stopped while this job was running; "
                             + (f"resume it with POST /api/jobs/{job.id}/resume" if job.kind == "train"
                                else "request the prediction again"))
                job.finished_at = job.updated_at = now()
            ids = [j.id for j in jobs]
        remove_partials(self.ws.root / "cases")
        remove_partials(self.ws.root / "models")
        remove_orphans(self.ws)  # label files / prediction folders published but never registered
        for tmp in self.ws.root.glob("models/*/.*.tmp"):  # the engine's atomic torch.save temporaries
            tmp.unlink(missing_ok=True)
        empty_dir(self.ws.tmp)
        if ids:
            log.warning("marked interrupted after restart: jobs %s", ids)
        return ids

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name="synergypl-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising and end the workers (running jobs become 'interrupted')."""
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for lane in self.lanes.values():
            if lane.alive():
                lane.proc.terminate()
        deadline = time.monotonic() + timeout
        for lane in self.lanes.values():
            if lane.proc is not None:
                try:
                    lane.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    lane.proc.kill()
                    lane.proc.wait()
                self._reap(lane)

    # ---- what the queue asks for -----------------------------------------------------------------
    def wake(self, kind: str) -> None:
        """A job of ``kind`` was queued: tell its worker, or start one."""
        if not self.lanes[kind].send("wake"):
            self._kick.set()

    def cancel_running(self, kind: str, job_id: int) -> None:
        """Ask the worker running ``job_id`` to stop (killed if it does not within the grace period)."""
        lane = self.lanes[kind]
        lane.send(f"cancel {job_id}")
        lane.cancel_sent.setdefault(job_id, time.monotonic())

    def add_waiter(self, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._waiters_lock:
            self._waiters.add(waiter)

    def remove_waiter(self, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._waiters_lock:
            self._waiters.discard(waiter)

    def notify(self) -> None:
        """Wake every waiting long-poll and event stream (called from any thread)."""
        with self._waiters_lock:
            waiters = list(self._waiters)
        for loop, changed in waiters:
            try:
                loop.call_soon_threadsafe(changed.set)
            except RuntimeError:  # its event loop has closed
                pass

    # ---- internals -------------------------------------------------------------------------------
    def _has_queued(self, kind: str) -> bool:
        with self.ws.db.Session() as s:
            return s.scalars(select(Job.id).where(Job.kind == kind, Job.status == JobStatus.QUEUED).limit(1)).first() is not None

    def _spawn(self, lane: Lane) -> None:
        log_path = self.ws.logs / f"worker-{lane.kind}.log"
        cmd = [sys.executable, "-m", "SynergyPLLib.service.jobs.worker", "--project", str(self.ws.root),
               "--lane", lane.kind, "--idle-seconds", str(lane.idle_seconds)]
        env = dict(os.environ)
        env["SYNERGYPL_PARENT_PID"] = str(os.getpid())
        with open(log_path, "ab") as err:
            lane.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         text=True, bufsize=1, env=env, close_fds=True)
        lane.cancel_sent.clear()
        lane.reader = threading.Thread(target=self._read_worker, args=(lane.proc,), daemon=True,
                                       name=f"synergypl-{lane.kind}-reader")
        lane.reader.start()
        log.info("started %s worker pid %s", lane.kind, lane.proc.pid)

    def _read_worker(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                try:
                    json.loads(line)
                except ValueError:
                    continue
                self.notify()
        self._kick.set()

    def _reap(self, lane: Lane) -> None:
        """After a worker ended: its running jobs become 'interrupted' (with how it ended)."""
        proc = lane.proc
        if proc is None or proc.poll() is None:
            return
        rc = proc.returncode
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        with self.ws.db.write_session() as s:
            jobs = list(s.scalars(select(Job).where(Job.status == JobStatus.RUNNING, Job.worker_pid == proc.pid)))
            for job in jobs:
                if job.cancel_requested:
                    job.status, job.error = JobStatus.CANCELLED, "cancelled (the worker was stopped)"
                else:
                    job.status = JobStatus.INTERRUPTED
                    job.error = (f"the {lane.kind} worker process (pid {proc.pid}) {how} while running this job"
                                 + (f"; resume it with POST /api/jobs/{job.id}/resume" if job.kind == "train"
                                    else "; request the prediction again"))
                job.finished_at = job.updated_at = now()
        if jobs:
            log.warning("%s worker %s %s; interrupted jobs %s", lane.kind, proc.pid, how, [j.id for j in jobs])
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except Exception:  # noqa: BLE001
                pass
        lane.proc = None
        self.notify()

    def _enforce_cancel(self, lane: Lane) -> None:
        """A running job asked to cancel that has not stopped within the grace period: kill its worker."""
        with self.ws.db.Session() as s:
            rows = list(s.scalars(select(Job).where(Job.kind == lane.kind, Job.status == JobStatus.RUNNING,
                                                    Job.cancel_requested.is_(True))))
        for job in rows:
            first = lane.cancel_sent.setdefault(job.id, time.monotonic())
            if not lane.send(f"cancel {job.id}") or time.monotonic() - first > self.settings.cancel_grace_seconds:
                if lane.alive():
                    log.warning("job %s did not stop after cancel; killing its worker", job.id)
                    lane.proc.kill()
                    lane.proc.wait()

    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                for lane in self.lanes.values():
                    if lane.proc is not None and not lane.alive():
                        self._reap(lane)
                    if lane.alive():
                        self._enforce_cancel(lane)
                    elif self._has_queued(lane.kind) and not self._stop.is_set():
                        self._spawn(lane)
                self._mark_stale()
            except Exception:  # noqa: BLE001 - the supervisor must survive a bad tick
                log.exception("supervisor tick failed")
            self._kick.wait(0.5)
            self._kick.clear()

    def _mark_stale(self) -> None:
        """Running jobs whose worker pid is not one of ours and not alive (e.g. lost track): interrupted."""
        ours = {lane.proc.pid for lane in self.lanes.values() if lane.proc is not None}  # dead ones: _reap
        cutoff = now() - timedelta(seconds=5)
        with self.ws.db.Session() as s:
            rows = list(s.scalars(select(Job).where(Job.status == JobStatus.RUNNING)))
        for job in rows:
            if job.worker_pid in ours or pid_alive(job.worker_pid):
                continue
            if job.started_at and job.started_at > cutoff:
                continue
            with self.ws.db.write_session() as s:
                s.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING).values(
                    status=JobStatus.INTERRUPTED, finished_at=now(), updated_at=now(),
                    error=f"the worker process (pid {job.worker_pid}) running this job is gone"))
            self.notify()
