"""A training round (runs in the training worker).

1. Choose the cases (:mod:`..domain.training_data`: labeled / validation hold-out / unlabeled) and the model to
   start from (the active model; from scratch when there is none), and record both in the job so a
   resumed round uses the same ones.
2. Run ``engine.trainer.train`` (``iterations`` from the request, else the engine config's
   ``iterations`` for a first round from scratch and ``round_iterations`` when fine-tuning) into ``models/job-<n>/`` (a new folder; the active model's files are
   only read). Progress goes to the job row (polling, SSE) at most twice a second and at every
   validation. Cancellation is checked between iterations.
3. When done: write ``result.json`` and, in one transaction, register the next model version, make it
   active and mark the job done. A crash before that leaves the previous model active.
   ``resume=True`` (POST /api/jobs/{id}/resume) continues from ``state.pt`` in the same folder.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time

from sqlalchemy.exc import OperationalError

from SynergyPLLib.engine.data import CaseSpec
from SynergyPLLib.engine.trainer import ProgressEvent, train

from ...common.job_status import JobStatus
from ..domain.model_orientation import is_legacy_checkpoint, training_orientation
from ..domain.training_data import select_cases
from ..store.db import Job, ModelVersion, now
from ..store.files import atomic_write_bytes, sha256_file
from ..store.registry import active_version, register
from ..store.workspace import Workspace
from . import faults
from .train_ddp import run_distributed, training_processes
from .worker_io import Control, finish

log = logging.getLogger("synergypl.train")


def _round(x, n=4):
    return None if x is None else round(float(x), n)


class TrainRunner:
    def __init__(self, ws: Workspace, ctl: Control, device: str) -> None:
        self.ws, self.ctl, self.device = ws, ctl, device

    def _specs(self, entries: list[dict]) -> list[CaseSpec]:
        return [CaseSpec(e["id"], self.ws.abs(e["image"]), self.ws.abs(e["label"]) if e.get("label") else None)
                for e in entries]

    def _prepare(self, job: Job) -> dict:
        """The round's data and starting model, fixed at the first start and reused on resume."""
        params = dict(job.params or {})
        if "data" not in params:
            params["data"] = select_cases(self.ws, params.get("labels") or "confirmed")
            params["init_model"] = active_version(self.ws)
            with self.ws.db.write_session() as s:
                row = s.get(Job, job.id)
                row.params = params
                row.updated_at = now()
        return params

    def run(self, job: Job) -> None:
        ws, ctl = self.ws, self.ctl
        params = self._prepare(job)
        data = params["data"]
        cfg = ws.config.engine_config()
        init_model = params.get("init_model")
        # first round: the full schedule from scratch; later rounds fine-tune for round_iterations
        iterations = params.get("iterations") or (cfg.train.round_iterations if init_model else cfg.train.iterations)
        cfg.train.iterations = int(iterations)
        cfg.train.val_every = max(1, min(cfg.train.val_every, cfg.train.iterations))
        cfg.train.checkpoint_every = max(1, min(cfg.train.checkpoint_every, cfg.train.iterations))
        if params.get("method"):
            cfg.train.method = params["method"]
        init_ckpt = None
        if init_model is not None:
            with ws.db.Session() as s:
                mv = s.get(ModelVersion, init_model)
                init_ckpt = ws.abs(mv.path) if mv is not None else None
            if init_ckpt is not None and is_legacy_checkpoint(init_ckpt):
                # its weights expect its training images' voxel order: fine-tune (orientation-independent) there
                cfg.preprocess.orientation = training_orientation(ws, init_model) or cfg.preprocess.orientation
        out_dir = ws.abs(params["out_dir"])
        resume = bool(params.get("resume")) and (out_dir / "state.pt").exists()

        last_write = [0.0]
        val_curve: list[list[float]] = []

        def on_progress(ev: ProgressEvent) -> None:
            if ev.val_dice is not None:
                val_curve.append([ev.iteration, _round(ev.val_dice)])
            t = time.monotonic()
            if ev.phase == "train" and t - last_write[0] < 0.5 and ev.iteration != ev.total:
                return
            last_write[0] = t
            progress = {"iteration": ev.iteration, "total": ev.total, "phase": ev.phase,
                        "losses": {k: _round(v, 5) for k, v in (ev.losses or {}).items()},
                        "val_dice": _round(ev.val_dice), "best_val_dice": _round(ev.best_val_dice),
                        "eta_seconds": _round(ev.eta_seconds, 1), "val_curve": val_curve[-50:]}
            # A write transaction (BEGIN IMMEDIATE on SQLite): a read-then-write one can fail at once with
            # "database is locked" when another process wrote in between. Progress is advisory: a write
            # that still fails is skipped, never the round's end.
            try:
                with ws.db.write_session() as s:
                    row = s.get(Job, job.id)
                    if row is not None and row.status == JobStatus.RUNNING:
                        row.progress, row.updated_at = progress, now()
            except OperationalError as exc:
                log.warning("progress of job %s not stored (%s); the round goes on", job.id, exc.orig)
                return
            ctl.emit("progress", job.id)

        last_check = [0.0]

        def should_stop() -> bool:
            if job.id in ctl.cancelled:
                return True
            t = time.monotonic()
            if t - last_check[0] > 2.0:
                last_check[0] = t
                with ws.db.Session() as s:
                    row = s.get(Job, job.id)
                    return bool(row is None or row.cancel_requested)
            return False

        # several GPUs (project.yaml training.gpus): the same round, run by torchrun processes
        nproc = training_processes(ws.config, self.device)
        run = train if nproc <= 1 else functools.partial(run_distributed, nproc)
        result = run(cfg, self._specs(data["labeled"]), self._specs(data["unlabeled"]),
                       self._specs(data["validation"]), out_dir, init_checkpoint=init_ckpt, resume=resume,
                       on_progress=on_progress, should_stop=should_stop, device=self.device)
        if result.cancelled:
            finish(ws, job.id, JobStatus.CANCELLED, error=f"cancelled at iteration {result.iterations}",
                   result={"iterations": result.iterations})
            return
        metrics = {"val_dice": _round(result.best_val_dice), "best_iteration": result.best_iteration,
                   "iterations": result.iterations, "train_seconds": _round(result.train_seconds, 1),
                   "temperature": _round(result.temperature), "ece_before": _round(result.ece_before),
                   "ece_after": _round(result.ece_after), "method": cfg.train.method,
                   "n_labeled": len(data["labeled"]), "n_validation": len(data["validation"]),
                   "n_unlabeled": len(data["unlabeled"])}
        summary = {"labels": data.get("labels"), "init_model": init_model, "resumed": resume,
                   "labeled": [[e["id"], e["label_version"]] for e in data["labeled"]],
                   "validation": [[e["id"], e["label_version"]] for e in data["validation"]],
                   "unlabeled": [e["id"] for e in data["unlabeled"]]}
        model_path = out_dir / "model.pt"
        atomic_write_bytes(out_dir / "result.json", json.dumps(
            {"job_id": job.id, "metrics": metrics, "data": summary, "history": result.history}, indent=1).encode())
        sha = sha256_file(model_path)
        faults.hit("model-before-register")
        with ws.db.write_session() as s:
            row = s.get(Job, job.id)
            if row is None or row.status != JobStatus.RUNNING or row.worker_pid != os.getpid():
                return
            version = register(ws, s, job_id=job.id, model_file=model_path, sha256=sha, metrics=metrics,
                               data=summary, parent_version=init_model)
            row.status, row.model_version = JobStatus.DONE, version
            row.finished_at = row.updated_at = now()
            row.result = {"model_version": version, "metrics": metrics,
                          "history": [{k: _round(v, 5) if isinstance(v, float) else v for k, v in h.items()}
                                      for h in result.history]}
            row.progress = {**(row.progress or {}), "phase": "done"}
