"""Worker process: claims queued jobs of one kind from the project database and runs them.

Started by the API process (:mod:`.supervisor`) as
``python -m SynergyPLLib.service.jobs.worker --project DIR --lane train|predict [--idle-seconds S]``.

- stdin (from the API process): ``wake`` (a job was queued), ``cancel <job id>``; end of input means
  the API process is gone, and the worker exits at once (Linux also kills it via PR_SET_PDEATHSIG).
- stdout: one JSON line per job change, e.g. ``{"event": "progress", "job": 7}`` (other output of the
  libraries goes to stderr, which the API process appends to ``logs/worker-<lane>.log``).
- exits after ``--idle-seconds`` without work (the prediction worker keeps its model loaded meanwhile).

Environment: ``SYNERGYPL_THREADS`` (torch threads, 0 = torch's default), ``SYNERGYPL_DEVICE``
(e.g. ``cpu``; default: CUDA when available).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass

from ...common.job_status import JobStatus
from ..store.workspace import Workspace
from .worker_io import Control, claim, finish


@dataclass(frozen=True)
class WorkerEnv:
    """What the worker takes from its environment, read once at start and passed on."""

    parent_pid: int | None  # SYNERGYPL_PARENT_PID: the API process that started this worker
    threads: int  # SYNERGYPL_THREADS: torch threads (0: torch's default)
    device: str | None  # SYNERGYPL_DEVICE: e.g. cpu, cuda:1 (None: the engine's default device)

    @classmethod
    def read(cls) -> WorkerEnv:
        parent = os.environ.get("SYNERGYPL_PARENT_PID", "")
        return cls(parent_pid=int(parent) if parent.isdigit() else None,
                   threads=int(os.environ.get("SYNERGYPL_THREADS", "0") or 0),
                   device=os.environ.get("SYNERGYPL_DEVICE") or None)


def _die_with_parent(parent_pid: int | None) -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m SynergyPLLib.service.jobs.worker")
    ap.add_argument("--project", required=True)
    ap.add_argument("--lane", choices=("train", "predict"), required=True)
    ap.add_argument("--idle-seconds", type=float, default=600.0)
    args = ap.parse_args(argv)
    env = WorkerEnv.read()
    _die_with_parent(env.parent_pid)
    # Keep a private handle on stdout for events; everything else printed goes to the log (stderr).
    events_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import torch

    if env.threads > 0:
        torch.set_num_threads(env.threads)
        torch.set_num_interop_threads(1)
    ws = Workspace(args.project, create_db=False)
    from SynergyPLLib.engine.model import default_device, device_name

    device = env.device or default_device()
    with ws.db.write_session() as s:
        ws.db.set_meta(s, "device", device_name(device))
    ctl = Control(events_out)
    if args.lane == "predict":
        from .predict_runner import PredictRunner

        runner = PredictRunner(ws, ctl, device)
    else:
        from .train_runner import TrainRunner

        runner = TrainRunner(ws, ctl, device)
    print(f"[{time.strftime('%H:%M:%S')}] {args.lane} worker {os.getpid()} ready", file=sys.stderr, flush=True)
    idle_since = time.monotonic()
    while True:
        job = claim(ws, args.lane)
        if job is not None:
            ctl.emit("claimed", job.id)
            try:
                runner.run(job)
            except Exception as exc:  # noqa: BLE001 - any error fails the job with its message
                traceback.print_exc()
                msg = str(exc).strip() or type(exc).__name__
                finish(ws, job.id, JobStatus.FAILED, error=f"{type(exc).__name__}: {msg}"[:4000])
            ctl.emit("finished", job.id)
            idle_since = time.monotonic()
            continue
        if time.monotonic() - idle_since > args.idle_seconds:
            return 0
        ctl.wake.wait(1.0)
        ctl.wake.clear()


if __name__ == "__main__":
    sys.exit(main())
