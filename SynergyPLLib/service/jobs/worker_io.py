"""What a worker process shares with its job runners: the control channel to the API process
(:class:`Control`) and the job state transitions it owns (:func:`claim`, :func:`finish`).
"""

from __future__ import annotations

import json
import os
import sys
import threading

from sqlalchemy import select

from ...common.job_status import JobStatus
from ..store.db import Job, now
from ..store.workspace import Workspace


class Control:
    """Messages from the API process, read on a background thread."""

    def __init__(self, events_out) -> None:
        self.wake = threading.Event()
        self.cancelled: set[int] = set()
        self._out = events_out
        self._out_lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True, name="control").start()

    def _read(self) -> None:
        for line in sys.stdin:
            parts = line.split()
            if parts[:1] == ["cancel"] and len(parts) == 2 and parts[1].isdigit():
                self.cancelled.add(int(parts[1]))
            self.wake.set()
        os._exit(0)  # the API process is gone: stop now (files are written atomically)

    def emit(self, event: str, job_id: int, **extra) -> None:
        with self._out_lock:
            try:
                self._out.write(json.dumps({"event": event, "job": job_id, **extra}) + "\n")
                self._out.flush()
            except (BrokenPipeError, OSError, ValueError):
                os._exit(0)


def claim(ws: Workspace, kind: str) -> Job | None:
    """Atomically take the oldest queued job of ``kind`` (status -> running, our pid)."""
    with ws.db.write_session() as s:
        job = s.scalars(select(Job).where(Job.kind == kind, Job.status == JobStatus.QUEUED).order_by(Job.id).limit(1)).first()
        if job is None:
            return None
        job.status, job.worker_pid = JobStatus.RUNNING, os.getpid()
        job.started_at = job.updated_at = now()
        job.progress = {"phase": "starting"}
        return job


def finish(ws: Workspace, job_id: int, status: str, **fields) -> bool:
    """Final state for a job this worker owns; False if someone else changed it meanwhile."""
    with ws.db.write_session() as s:
        job = s.get(Job, job_id)
        if job is None or job.status != JobStatus.RUNNING or job.worker_pid != os.getpid():
            return False
        job.status = status
        job.finished_at = job.updated_at = now()
        for k, v in fields.items():
            setattr(job, k, v)
        return True
