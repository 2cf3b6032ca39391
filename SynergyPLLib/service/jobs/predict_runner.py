"""A prediction job (runs in the prediction worker): label map, confidence heatmap, region map and
flagged regions for one case, stored as NRRD volumes in the case's geometry plus ``regions.json``.

Output folder ``cases/<id>/predictions/job-<n>/`` is written in ``tmp/`` and renamed into place in one
step; the ``predictions`` row (with the model version used and the case's disagreement score) is
inserted in the same transaction that marks the job done.

Disagreement score (used by GET /api/next-case): the sum over flagged regions of (1 - confidence)
per voxel, i.e. the expected number of wrong voxels the flagged regions hold.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

from SynergyPLLib.engine.inference import Predictor
from SynergyPLLib.engine.io import read_volume, write_volume

from ...common.job_status import JobStatus
from ..domain.model_orientation import load_predictor
from ..domain.next_case import disagreement as case_disagreement
from ..store.db import Case, Job, ModelVersion, Prediction, now
from ..store.files import publish_dir
from ..store.registry import active_version
from ..store.workspace import Workspace
from . import faults
from .worker_io import Control, finish


class PredictRunner:
    def __init__(self, ws: Workspace, ctl: Control, device: str) -> None:
        self.ws, self.ctl, self.device = ws, ctl, device
        self._cache: tuple[int, Predictor] | None = None

    def predictor(self, version: int) -> Predictor:
        if self._cache is None or self._cache[0] != version:
            with self.ws.db.Session() as s:
                mv = s.get(ModelVersion, version)
                if mv is None:
                    raise ValueError(f"model version {version} does not exist")
                path = self.ws.abs(mv.path)
            self._cache = (version, load_predictor(self.ws, version, path, self.device))
        return self._cache[1]

    def run(self, job: Job) -> None:
        ws = self.ws
        version = (job.params or {}).get("model_version") or active_version(ws)
        if version is None:
            finish(ws, job.id, JobStatus.FAILED, error="there is no model yet: train a first round before predicting")
            return
        from ..domain.pacs import ensure_local  # a PACS case's series is fetched on first use

        ensure_local(ws, job.case_id)
        with ws.db.Session() as s:
            case = s.get(Case, job.case_id)
            if case is None:
                raise ValueError(f"case {job.case_id!r} no longer exists")
            image_path = ws.abs(case.image_path)
        predictor = self.predictor(version)
        image = read_volume(image_path)
        pred = predictor.predict(image, heatmap=True)
        if job.id in self.ctl.cancelled:
            finish(ws, job.id, JobStatus.CANCELLED, error="cancelled while predicting")
            return
        regions = [r.to_dict() for r in pred.regions]
        disagreement = case_disagreement(regions)
        flagged = int(sum(r["voxel_count"] for r in regions))
        doc = {"case_id": case.id, "job_id": job.id, "model_version": version, "created_at": now().isoformat(),
               "seconds": round(pred.seconds, 3), "classes": predictor.classes, "disagreement": disagreement,
               "flagged_voxels": flagged, "flag_threshold": predictor.config.inference.flag_threshold,
               "region_codes": {"0": "consistent and confident", "1": "consistent, uncertain",
                                "2": "inconsistent, confident", "3": "inconsistent and uncertain"},
               "region_params": pred.region_params.to_dict() if pred.region_params else None,
               "regions": regions}
        staging = ws.tmp / f"pred-{job.id}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            write_volume(pred.label, staging / "label.nrrd")
            write_volume(pred.heatmap, staging / "heatmap.nrrd")
            write_volume(pred.region_map, staging / "regions.nrrd")
            (staging / "regions.json").write_text(json.dumps(doc, indent=1))
            final = ws.case_dir(case.id) / "predictions" / f"job-{job.id:06d}"
            if final.exists():
                shutil.rmtree(final)  # an unregistered folder left by a crash of this same job
            publish_dir(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        faults.hit("prediction-files-written")
        with ws.db.write_session() as s:
            row = s.get(Job, job.id)
            if row is None or row.status != JobStatus.RUNNING or row.worker_pid != os.getpid():
                return
            s.add(Prediction(case_id=case.id, job_id=job.id, model_version=version, dir=ws.rel(final),
                             disagreement=disagreement, flagged_voxels=flagged, n_regions=len(regions),
                             seconds=pred.seconds))
            row.status, row.model_version = JobStatus.DONE, version
            row.finished_at = row.updated_at = now()
            row.progress = {"phase": "done"}
            row.result = {"model_version": version, "seconds": round(pred.seconds, 3), "regions": len(regions),
                          "disagreement": disagreement, "flagged_voxels": flagged}
