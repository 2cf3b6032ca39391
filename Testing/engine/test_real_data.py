"""Integration on the real hippocampus data: a short semi-supervised run learns, and the model it
produces labels a real DICOM HippoCrop series with a heatmap and flagged regions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SynergyPLLib.cli import main as cli_main
from SynergyPLLib.engine.config import profile_config
from SynergyPLLib.engine.data import LoadedCase, Preprocessor, load_cases, load_decathlon
from SynergyPLLib.engine.inference import Predictor
from SynergyPLLib.engine.io import read_volume
from SynergyPLLib.engine.trainer import Trainer

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def short_run(hippocampus_dir, tmp_path_factory):
    classes, cases = load_decathlon(hippocampus_dir)
    cfg = profile_config("cpu", classes)
    cfg.train.method = "synergypl"
    cfg.train.iterations = 160
    cfg.train.val_every = 40
    pre = Preprocessor(cfg.preprocess)
    lab = load_cases(cases[:6], pre, 3)
    unl = [LoadedCase(c.id, c.image, None, c.volume) for c in load_cases(cases[6:30], pre, 3, labeled=False)]
    val = load_cases(cases[-6:], pre, 3)
    out = tmp_path_factory.mktemp("run")
    trainer = Trainer(cfg, lab, unl, val, out)
    start_dice = trainer.validate()
    events = []
    result = trainer.run(on_progress=events.append)
    return start_dice, result, events, trainer


def test_short_semi_supervised_run_improves_validation_dice(short_run):
    start_dice, result, events, trainer = short_run
    assert result.best_val_dice > start_dice + 0.25, (start_dice, result.best_val_dice)
    assert trainer.ema_updates == result.iterations == 160
    val_events = [e for e in events if e.phase == "validate"]
    assert [e.iteration for e in val_events] == [40, 80, 120, 160]
    assert events[-1].phase == "done"
    assert all(np.isfinite(e.losses["total"]) for e in events if e.phase in ("train", "validate"))
    # calibration was fitted on validation and did not make the model less calibrated there
    assert result.ece_after <= result.ece_before + 1e-6
    # synergypl's default warm start: 30% supervised iterations, then the regions partition the voxels
    assert trainer.warmup_iters == 48
    names = ("consistent_confident", "consistent_uncertain", "inconsistent_confident", "inconsistent_uncertain")
    shares = {h["iteration"]: np.array([h[f"share_{n}"] for n in names]) for h in result.history}
    assert np.allclose(shares[40], 0.0), "no region statistics during the warm start"
    assert all(np.isclose(v.sum(), 1.0, atol=1e-4) for it, v in shares.items() if it > trainer.warmup_iters), shares


def test_checkpoint_is_usable_alone_on_real_dicom(short_run, dicom_dir):
    _, result, _, _ = short_run
    predictor = Predictor.from_checkpoint(result.checkpoint)
    assert predictor.classes == ["background", "Anterior", "Posterior"]
    series = dicom_dir / "Study1" / "13_HCropVolume"
    image = read_volume(series)
    pred = predictor.predict(image)
    assert pred.label.shape == image.shape
    assert np.allclose(pred.label.ijk_to_lps, image.ijk_to_lps)
    assert (pred.label.array > 0).sum() > 200  # it finds hippocampus in the DICOM crop
    h = pred.heatmap.array
    assert h.dtype == np.float32 and h.min() >= 0 and h.max() <= 1
    assert set(np.unique(pred.region_map.array)) <= {0, 1, 2, 3}
    assert np.allclose(pred.probabilities.sum(0), 1, atol=1e-4)
    if pred.regions:
        scores = [r.score for r in pred.regions]
        assert scores == sorted(scores, reverse=True)
        r = pred.regions[0]
        assert np.allclose(image.ijk_to_lps @ np.append(r.centroid_ijk, 1), np.append(r.centroid_lps, 1), atol=1e-2)


def test_cli_infer_writes_outputs_next_to_input(short_run, dicom_dir, tmp_path):
    _, result, _, _ = short_run
    series = dicom_dir / "Study3" / "11_HCropVolume"
    assert cli_main(["infer", "--model", str(result.checkpoint), str(series), "--out", str(tmp_path)]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    # a DICOM series gets NRRD volumes: double-precision geometry (see test_outputs.py)
    assert {"11_HCropVolume_label.nrrd", "11_HCropVolume_heatmap.nrrd", "11_HCropVolume_regionmap.nrrd",
            "11_HCropVolume_regions.json", "11_HCropVolume_overlay.png"} <= names
    label = read_volume(tmp_path / "11_HCropVolume_label.nrrd", allow_constant=True)
    assert np.allclose(label.ijk_to_lps, read_volume(series).ijk_to_lps, atol=1e-12)
    regions = json.loads((tmp_path / "11_HCropVolume_regions.json").read_text())
    assert regions["classes"] == ["background", "Anterior", "Posterior"]
    assert (tmp_path / "11_HCropVolume_overlay.png").stat().st_size > 10_000


def test_cli_refuses_bad_input_clearly(short_run, tmp_path, capsys):
    _, result, _, _ = short_run
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"0" * 50)
    assert cli_main(["infer", "--model", str(result.checkpoint), str(bad)]) == 2
    assert "bad.nii.gz" in capsys.readouterr().err
    assert cli_main(["infer", "--model", str(tmp_path / "none.pt"), str(bad)]) == 2


def test_torch_threads_are_bounded():
    assert torch.get_num_threads() <= 2
