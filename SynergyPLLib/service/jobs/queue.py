"""The job queue (runs inside the API process): the ``jobs`` table and the operations on it.

Jobs live in the database: ``queued -> running -> done | failed | cancelled``, and ``interrupted``
when the process running it died (see :class:`~SynergyPLLib.common.job_status.JobStatus`). Heavy work
never runs in the API process: the :class:`~.supervisor.Supervisor` keeps one worker process per lane
(``train``, ``predict``) that claims queued jobs of its kind, so training runs one round at a time while
predictions queue behind each other (and run alongside a training round, with the active model).
The database stays the single source of truth; waiters (asyncio, holding no thread) are woken by the
supervisor and also re-read it at least every second.
"""

from __future__ import annotations

import asyncio

import anyio
from sqlalchemy import select

from ...common.job_status import ACTIVE_STATES, FINAL_STATES, JobStatus
from ..domain.cases import get_case_row
from ..domain.errors import BadRequest, Conflict, NotFound
from ..domain.training_data import LABEL_MODES, select_cases
from ..settings import ServiceSettings
from ..store.db import MAX_ID, Job, ModelVersion, now
from ..store.registry import active_version
from ..store.workspace import Workspace
from .supervisor import Supervisor

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


class JobManager:
    """Queue operations for the API; the :class:`Supervisor` keeps the workers running."""

    def __init__(self, ws: Workspace, settings: ServiceSettings) -> None:
        self.ws = ws
        self.settings = settings
        self.supervisor = Supervisor(ws, settings)

    # ---- life cycle (the supervisor's) -----------------------------------------------------------
    def recover(self) -> list[int]:
        """At start: jobs left 'running' by a previous process become 'interrupted'. Returns their ids."""
        return self.supervisor.recover()

    def start(self) -> None:
        self.supervisor.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising and end the workers (running jobs become 'interrupted')."""
        self.supervisor.stop(timeout)

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
                                               Job.status.in_(ACTIVE_STATES))).first()
            if same is not None and (same.params or {}).get("model_version") == model_version:
                return job_info(same), False
            job = Job(kind="predict", case_id=case.id, params={"model_version": model_version}, status=JobStatus.QUEUED)
            s.add(job)
            s.flush()
            info = job_info(job)
        self.supervisor.wake("predict")
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
            job = Job(kind="train", status=JobStatus.QUEUED,
                      params={"iterations": iterations, "labels": labels, "method": method})
            s.add(job)
            s.flush()
            job.params = {**job.params, "out_dir": self.ws.rel(self.ws.model_dir(job.id))}
            info = job_info(job)
        self.supervisor.wake("train")
        return info

    def resume(self, job_id: int) -> dict:
        """Queue a round that continues an interrupted (or failed) round from its last checkpoint."""
        with self.ws.db.write_session() as s:
            old = self._get(s, job_id)
            if old.kind != "train":
                raise Conflict(f"job {job_id} is a {old.kind} job; only training rounds can be resumed")
            if old.status not in (JobStatus.INTERRUPTED, JobStatus.FAILED):
                raise Conflict(f"job {job_id} is {old.status}; only interrupted or failed rounds can be resumed")
            out_dir = (old.params or {}).get("out_dir")
            if not out_dir or not (self.ws.abs(out_dir) / "state.pt").exists():
                raise Conflict(f"job {job_id} left no checkpoint to resume from; start a new round (POST /api/train)")
            self._no_training_running(s)
            params = dict(old.params)
            params["resume"] = True
            job = Job(kind="train", status=JobStatus.QUEUED, params=params, resume_of=old.resume_of or old.id)
            s.add(job)
            s.flush()
            info = job_info(job)
        self.supervisor.wake("train")
        return info

    def cancel(self, job_id: int) -> dict:
        """Cancel a queued job at once; ask a running one to stop (it ends as 'cancelled')."""
        with self.ws.db.write_session() as s:
            job = self._get(s, job_id)
            if job.status in FINAL_STATES:
                raise Conflict(f"job {job_id} is already {job.status}; nothing to cancel")
            if job.status == JobStatus.QUEUED:
                job.status, job.finished_at, job.error = JobStatus.CANCELLED, now(), "cancelled before it started"
            else:
                job.cancel_requested = True
            job.updated_at = now()
            info = job_info(job)
        if info["status"] == JobStatus.RUNNING:
            self.supervisor.cancel_running(info["kind"], job_id)
        self.supervisor.notify()
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
            rows = list(s.scalars(select(Job).where(Job.status.in_(ACTIVE_STATES)).order_by(Job.id)))
        train = [job_info(j) for j in rows if j.kind == "train"]
        return {"training": train[0] if train else None,
                "predictions_queued": sum(1 for j in rows if j.kind == "predict" and j.status == JobStatus.QUEUED),
                "predictions_running": sum(1 for j in rows if j.kind == "predict" and j.status == JobStatus.RUNNING)}

    async def wait(self, job_id: int, since: str | None = None, timeout: float = 30.0) -> dict:
        """Wait until the job's ``updated_at`` differs from ``since`` or it is final (long-poll, SSE).

        Runs in the event loop and holds no thread while it waits (each check of the database is a
        short read in a worker thread), so any number of waiting clients leaves the API responsive.
        Woken at once by :meth:`Supervisor.notify`; re-reads the database at least every ``RECHECK_SECONDS``."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        waiter = (loop, changed)
        self.supervisor.add_waiter(waiter)
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
                if remaining <= 0 or self.supervisor.stopping:
                    return info
                try:
                    await asyncio.wait_for(changed.wait(), min(RECHECK_SECONDS, remaining))
                except TimeoutError:
                    pass
        finally:
            self.supervisor.remove_waiter(waiter)

    # ---- internals -------------------------------------------------------------------------------
    def _get(self, s, job_id: int) -> Job:
        job = s.get(Job, job_id) if 1 <= job_id <= MAX_ID else None
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def _no_training_running(self, s) -> None:
        busy = s.scalars(select(Job).where(Job.kind == "train", Job.status.in_(ACTIVE_STATES))).first()
        if busy is not None:
            it = (busy.progress or {}).get("iteration")
            where = f" (iteration {it} of {(busy.progress or {}).get('total')})" if it is not None else ""
            raise Conflict(f"training job {busy.id} is already {busy.status}{where}; wait for it or cancel it "
                           f"(POST /api/jobs/{busy.id}/cancel)", job_id=busy.id)
