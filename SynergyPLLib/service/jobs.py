"""The job queue and the supervision of worker processes (runs inside the API process).

Jobs live in the database (``jobs`` table): ``queued -> running -> done | failed | cancelled``, and
``interrupted`` when the process running it died (worker killed, service restarted). Heavy work never
runs in the API process: each lane (``train``, ``predict``) has at most one worker process
(``python -m SynergyPLLib.service.worker``) that claims queued jobs of its kind from the database, so
training runs one round at a time while predictions queue behind each other (and run alongside a
training round, with the active model).

Talking to a worker: the supervisor writes ``wake`` / ``cancel <job>`` lines on its stdin; the worker
prints one JSON line on stdout whenever a job changes, which wakes waiters (long-poll and SSE) at once.
The database stays the single source of truth; waiters (asyncio, holding no thread) also re-read it
at least every second.
A worker whose stdin closes (the API process died) exits at once; on Linux it is also killed by
PR_SET_PDEATHSIG.
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

import anyio
from sqlalchemy import select, update

from .cases import get_case_row
from .db import FINAL_STATES, MAX_ID, Job, ModelVersion, now
from .errors import BadRequest, Conflict, NotFound
from .orphans import remove_orphans
from .registry import active_version
from .settings import ServiceSettings
from .store import empty_dir, remove_partials
from .training_data import LABEL_MODES, select_cases
from .workspace import Workspace

log = logging.getLogger("synergypl.jobs")
LANES = ("train", "predict")
RECHECK_SECONDS = 1.0  # waiters re-read the database this often even without a wake-up


def job_info(job: Job) -> dict:
    """The public description of a job (what GET /api/jobs/{id} returns)."""
    params = {k: v for k, v in (job.params or {}).items() if k not in ("data",)}
    return {"id": job.id, "kind": job.kind, "status": job.status, "case_id": job.case_id, "params": params,
            "progress": job.progress or {}, "result": job.result or {}, "error": job.error,
            "model_version": job.model_version, "resume_of": job.resume_of,
            "cancel_requested": bool(job.cancel_requested), "worker_pid": job.worker_pid,
            "created_at": job.created_at.isoformat(),
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "updated_at": job.updated_at.isoformat() if job.updated_at else None}


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_worker(pid: int, root: Path) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"SynergyPLLib.service.worker" in cmd and str(root).encode() in cmd


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


class JobManager:
    """Queue operations for the API and the supervisor thread that keeps workers running."""

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
        self._spawn_lock = threading.Lock()

    # ---- life cycle ------------------------------------------------------------------------------
    def recover(self) -> list[int]:
        """At start: jobs left 'running' by a previous process become 'interrupted'. Returns their ids."""
        with self.ws.db.write_session() as s:
            jobs = list(s.scalars(select(Job).where(Job.status == "running")))
            for job in jobs:
                if job.worker_pid and _pid_alive(job.worker_pid) and _is_our_worker(job.worker_pid, self.ws.root):
                    os.kill(job.worker_pid, signal.SIGKILL)  # an orphan of the dead service
                job.status = "interrupted"
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

    # ---- API operations --------------------------------------------------------------------------
    def submit_predict(self, case_id: str, model_version: int | None = None) -> tuple[dict, bool]:
        """Queue a prediction (or return the one already queued/running for the case). -> (job, created)."""
        with self.ws.db.write_session() as s:
            case = get_case_row(s, case_id)
            if model_version is not None:
                if not 1 <= model_version <= MAX_ID or s.get(ModelVersion, model_version) is None:
                    raise NotFound(f"no model version {model_version}")
            elif active_version(self.ws) is None:
                raise Conflict("there is no model yet: train a first round (POST /api/train) before predicting")
            same = s.scalars(select(Job).where(Job.kind == "predict", Job.case_id == case.id,
                                               Job.status.in_(("queued", "running")))).first()
            if same is not None and (same.params or {}).get("model_version") == model_version:
                return job_info(same), False
            job = Job(kind="predict", case_id=case.id, params={"model_version": model_version}, status="queued")
            s.add(job)
            s.flush()
            info = job_info(job)
        self._wake("predict")
        return info, True

    def submit_train(self, iterations: int | None = None, labels: str = "confirmed",
                     method: str | None = None) -> dict:
        """Queue a training round; 409 while another round is queued or running or without labels."""
        if labels not in LABEL_MODES:
            raise BadRequest(f"labels must be one of {', '.join(LABEL_MODES)}, not {labels!r}")
        if iterations is not None and not 1 <= iterations <= 1_000_000:
            raise BadRequest("iterations must be between 1 and 1000000")
        if method is not None:
            from SynergyPLLib.engine.config import METHODS
            if method not in METHODS:
                raise BadRequest(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        select_cases(self.ws, labels)  # 409 now, not later, when nothing is labeled
        with self.ws.db.write_session() as s:
            self._no_training_running(s)
            job = Job(kind="train", status="queued",
                      params={"iterations": iterations, "labels": labels, "method": method})
            s.add(job)
            s.flush()
            job.params = {**job.params, "out_dir": self.ws.rel(self.ws.model_dir(job.id))}
            info = job_info(job)
        self._wake("train")
        return info

    def resume(self, job_id: int) -> dict:
        """Queue a round that continues an interrupted (or failed) round from its last checkpoint."""
        with self.ws.db.write_session() as s:
            old = self._get(s, job_id)
            if old.kind != "train":
                raise Conflict(f"job {job_id} is a {old.kind} job; only training rounds can be resumed")
            if old.status not in ("interrupted", "failed"):
                raise Conflict(f"job {job_id} is {old.status}; only interrupted or failed rounds can be resumed")
            out_dir = (old.params or {}).get("out_dir")
            if not out_dir or not (self.ws.abs(out_dir) / "state.pt").exists():
                raise Conflict(f"job {job_id} left no checkpoint to resume from; start a new round (POST /api/train)")
            self._no_training_running(s)
            params = dict(old.params)
            params["resume"] = True
            job = Job(kind="train", status="queued", params=params, resume_of=old.resume_of or old.id)
            s.add(job)
            s.flush()
            info = job_info(job)
        self._wake("train")
        return info

    def cancel(self, job_id: int) -> dict:
        """Cancel a queued job at once; ask a running one to stop (it ends as 'cancelled')."""
        with self.ws.db.write_session() as s:
            job = self._get(s, job_id)
            if job.status in FINAL_STATES:
                raise Conflict(f"job {job_id} is already {job.status}; nothing to cancel")
            if job.status == "queued":
                job.status, job.finished_at, job.error = "cancelled", now(), "cancelled before it started"
            else:
                job.cancel_requested = True
            job.updated_at = now()
            info = job_info(job)
        lane = self.lanes[info["kind"]]
        if info["status"] == "running":
            lane.send(f"cancel {job_id}")
            lane.cancel_sent.setdefault(job_id, time.monotonic())
        self._notify()
        return info

    def get(self, job_id: int) -> dict:
        with self.ws.db.Session() as s:
            return job_info(self._get(s, job_id))

    def list(self, kind: str | None = None, status: str | None = None, limit: int = 100) -> list[dict]:
        with self.ws.db.Session() as s:
            q = select(Job).order_by(Job.id.desc()).limit(limit)
            if kind:
                q = q.where(Job.kind == kind)
            if status:
                q = q.where(Job.status == status)
            return [job_info(j) for j in s.scalars(q)]

    def current(self) -> dict:
        """Running and queued jobs per kind, for /api/info."""
        with self.ws.db.Session() as s:
            rows = list(s.scalars(select(Job).where(Job.status.in_(("queued", "running"))).order_by(Job.id)))
        train = [job_info(j) for j in rows if j.kind == "train"]
        return {"training": train[0] if train else None,
                "predictions_queued": sum(1 for j in rows if j.kind == "predict" and j.status == "queued"),
                "predictions_running": sum(1 for j in rows if j.kind == "predict" and j.status == "running")}

    async def wait(self, job_id: int, since: str | None = None, timeout: float = 30.0) -> dict:
        """Wait until the job's ``updated_at`` differs from ``since`` or it is final (long-poll, SSE).

        Runs in the event loop and holds no thread while it waits (each check of the database is a
        short read in a worker thread), so any number of waiting clients leaves the API responsive.
        Woken at once by :meth:`_notify`; re-reads the database at least every ``RECHECK_SECONDS``."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        waiter = (loop, changed)
        with self._waiters_lock:
            self._waiters.add(waiter)
        try:
            deadline = loop.time() + max(0.0, timeout)
            while True:
                changed.clear()  # before reading: a change during the read is not missed
                info = await anyio.to_thread.run_sync(self.get, job_id)
                if info["status"] in FINAL_STATES or (since is not None and info["updated_at"] != since):
                    return info
                if since is None:
                    since = info["updated_at"]
                remaining = deadline - loop.time()
                if remaining <= 0 or self._stop.is_set():
                    return info
                try:
                    await asyncio.wait_for(changed.wait(), min(RECHECK_SECONDS, remaining))
                except TimeoutError:
                    pass
        finally:
            with self._waiters_lock:
                self._waiters.discard(waiter)

    # ---- internals -------------------------------------------------------------------------------
    def _get(self, s, job_id: int) -> Job:
        job = s.get(Job, job_id) if 1 <= job_id <= MAX_ID else None
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def _no_training_running(self, s) -> None:
        busy = s.scalars(select(Job).where(Job.kind == "train", Job.status.in_(("queued", "running")))).first()
        if busy is not None:
            it = (busy.progress or {}).get("iteration")
            where = f" (iteration {it} of {(busy.progress or {}).get('total')})" if it is not None else ""
            raise Conflict(f"training job {busy.id} is already {busy.status}{where}; wait for it or cancel it "
                           f"(POST /api/jobs/{busy.id}/cancel)", job_id=busy.id)

    def _notify(self) -> None:
        """Wake every waiting long-poll and event stream (called from any thread)."""
        with self._waiters_lock:
            waiters = list(self._waiters)
        for loop, changed in waiters:
            try:
                loop.call_soon_threadsafe(changed.set)
            except RuntimeError:  # its event loop has closed
                pass

    def _wake(self, kind: str) -> None:
        if not self.lanes[kind].send("wake"):
            self._kick.set()

    def _has_queued(self, kind: str) -> bool:
        with self.ws.db.Session() as s:
            return s.scalars(select(Job.id).where(Job.kind == kind, Job.status == "queued").limit(1)).first() is not None

    def _spawn(self, lane: Lane) -> None:
        log_path = self.ws.logs / f"worker-{lane.kind}.log"
        cmd = [sys.executable, "-m", "SynergyPLLib.service.worker", "--project", str(self.ws.root),
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
                self._notify()
        self._kick.set()

    def _reap(self, lane: Lane) -> None:
        """After a worker ended: its running jobs become 'interrupted' (with how it ended)."""
        proc = lane.proc
        if proc is None or proc.poll() is None:
            return
        rc = proc.returncode
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        with self.ws.db.write_session() as s:
            jobs = list(s.scalars(select(Job).where(Job.status == "running", Job.worker_pid == proc.pid)))
            for job in jobs:
                if job.cancel_requested:
                    job.status, job.error = "cancelled", "cancelled (the worker was stopped)"
                else:
                    job.status = "interrupted"
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
        self._notify()

    def _enforce_cancel(self, lane: Lane) -> None:
        """A running job asked to cancel that has not stopped within the grace period: kill its worker."""
        with self.ws.db.Session() as s:
            rows = list(s.scalars(select(Job).where(Job.kind == lane.kind, Job.status == "running",
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
            rows = list(s.scalars(select(Job).where(Job.status == "running")))
        for job in rows:
            if job.worker_pid in ours or _pid_alive(job.worker_pid):
                continue
            if job.started_at and job.started_at > cutoff:
                continue
            with self.ws.db.write_session() as s:
                s.execute(update(Job).where(Job.id == job.id, Job.status == "running").values(
                    status="interrupted", finished_at=now(), updated_at=now(),
                    error=f"the worker process (pid {job.worker_pid}) running this job is gone"))
            self._notify()
