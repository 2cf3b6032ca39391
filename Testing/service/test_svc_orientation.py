"""Orientation-independent prediction in the service: the project file ``init`` writes, old project files,
and a model version saved the old way (orientation null) predicting over HTTP on a case stored in another
voxel order (real hippocampus data)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from svc_support import Server, read_bytes_volume

from SynergyPLLib.engine.data import CaseSpec
from SynergyPLLib.engine.inference import OrientationWarning, Predictor
from SynergyPLLib.engine.io import _to_sitk, read_volume
from SynergyPLLib.engine.trainer import train
from SynergyPLLib.service.domain.model_orientation import is_legacy_checkpoint, training_orientation
from SynergyPLLib.service.domain.training_data import select_cases
from SynergyPLLib.service.store.db import Case
from SynergyPLLib.service.store.files import sha256_file
from SynergyPLLib.service.store.project import ProjectConfig
from SynergyPLLib.service.store.registry import register
from SynergyPLLib.service.store.workspace import Workspace

pytestmark = pytest.mark.data


def test_init_writes_the_orientation_and_old_project_files_get_it(project):
    text = (project / "project.yaml").read_text()
    assert "orientation: RAS" in text
    assert ProjectConfig.load(project).engine_config().preprocess.orientation == "RAS"
    # what `synergypl init` wrote before: null, which kept every file's voxel order
    (project / "project.yaml").write_text(text.replace("orientation: RAS", "orientation: null"))
    assert ProjectConfig.load(project).engine_config().preprocess.orientation == "RAS"
    (project / "project.yaml").write_text(text.replace("orientation: RAS", "orientation: SAR"))
    assert ProjectConfig.load(project).engine_config().preprocess.orientation == "SAR"
    (project / "project.yaml").write_text(text.replace("orientation: RAS", "orientation: RAA"))
    with pytest.raises(ValueError, match="project.yaml.*axis codes"):
        ProjectConfig.load(project)


def _old_release_model(ws: Workspace) -> int:
    """Train and register a model the way the current release did: orientation null (file voxel order)."""
    data = select_cases(ws)
    cfg = ws.config.engine_config()
    cfg.preprocess.orientation = None
    cfg.train.method = "supervised"  # the cheapest; orientation handling is the same for every method
    cfg.train.iterations, cfg.train.val_every = 60, 60

    def specs(entries):
        return [CaseSpec(e["id"], ws.abs(e["image"]), ws.abs(e["label"]) if e.get("label") else None)
                for e in entries]

    out = ws.root / "models" / "job-000001"
    result = train(cfg, specs(data["labeled"]), [], specs(data["validation"]), out)
    summary = {"labels": "confirmed", "init_model": None,
               "labeled": [[e["id"], e["label_version"]] for e in data["labeled"]],
               "validation": [[e["id"], e["label_version"]] for e in data["validation"]],
               "unlabeled": [e["id"] for e in data["unlabeled"]]}
    with ws.db.write_session() as s:
        return register(ws, s, job_id=1, model_file=result.checkpoint, sha256=sha256_file(result.checkpoint),
                        metrics={}, data=summary, parent_version=None)


def test_old_model_version_predicts_in_its_training_orientation(project, tmp_path):
    ws = Workspace(project)
    try:
        version = _old_release_model(ws)
        model = ws.abs("models/job-000001/model.pt")
        assert is_legacy_checkpoint(model)
        assert training_orientation(ws, version) == "RAS"  # the hippocampus NIfTIs all store RAS
        with ws.db.Session() as s:
            case = s.get(Case, select_cases(ws)["unlabeled"][0]["id"])
            image_path = ws.abs(case.image_path)
    finally:
        ws.close()
    # the same image in the voxel order of a DICOM series (LPS): same voxels in patient space
    ras = sitk.ReadImage(str(image_path))
    lps = sitk.Flip(ras, [True, True, False])
    sitk.WriteImage(lps, str(tmp_path / "lps.nrrd"))
    with pytest.warns(OrientationWarning):
        old = Predictor.from_checkpoint(model)  # the old behaviour, on the file stored like its training images
    expected = old.predict(read_volume(image_path), heatmap=False).label
    assert (expected.array > 0).sum() > 100
    with Server(project) as srv:
        c = srv.client()
        cid = c.upload_case(tmp_path / "lps.nrrd", case_id="stored_lps")["id"]
        c.wait_job(c.predict(cid)["id"], timeout=120)
        got = read_bytes_volume(c.download_prediction(cid, "label"), tmp_path, "label.nrrd")
    assert got.same_geometry(read_volume(tmp_path / "lps.nrrd")) is None
    on_ras = sitk.Resample(_to_sitk(got), ras, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    assert np.array_equal(np.transpose(sitk.GetArrayFromImage(on_ras), (2, 1, 0)), expected.array)
