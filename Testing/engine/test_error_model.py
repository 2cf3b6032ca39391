"""The heatmap's error model (SynergyPLLib.engine.error_model): features, fitting, checkpoint round trip,
the former formula for checkpoints without an error model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from SynergyPLLib.engine.config import EngineConfig
from SynergyPLLib.engine.data import LoadedCase
from SynergyPLLib.engine.error_model import (
    FEATURES,
    ErrorModel,
    _p_wrong_matrix,
    boundary_distance,
    case_features,
    cross_validate,
    default_settings,
    error_heatmap,
    fit_error_model,
    fit_logistic,
    shift_voxels,
    view_input,
    view_probabilities,
    voxel_features,
)
from SynergyPLLib.engine.inference import Predictor, region_codes, synergy_heatmap
from SynergyPLLib.engine.io import Volume
from SynergyPLLib.engine.model import CHECKPOINT_FORMAT, atomic_torch_save, build_network
from SynergyPLLib.engine.synergy import confidence_bar, top_margin


def _sphere(shape=(21, 21, 21), radius=6.0) -> np.ndarray:
    grid = np.indices(shape) - (np.asarray(shape) // 2)[:, None, None, None]
    return (np.sqrt((grid ** 2).sum(0)) <= radius).astype(np.int64)


def _probs(label: np.ndarray, p_in: float = 0.9) -> torch.Tensor:
    fg = torch.from_numpy(np.where(label > 0, p_in, 1 - p_in).astype(np.float32))
    return torch.stack([1 - fg, fg])


def test_features_of_a_sphere():
    label = _sphere()
    f = voxel_features(_probs(label), _probs(label), clip=5.0)
    assert set(f) == set(FEATURES) and all(v.shape == label.shape for v in f.values())
    d = f["boundary_distance"].numpy() * 5.0
    assert d[10, 10, 10] == pytest.approx(5.0)  # the centre is 6 voxels deep: clipped
    assert d[10, 10, 16] == pytest.approx(1.0) and d[10, 10, 17] == pytest.approx(1.0)  # both sides of the surface
    assert 2.0 <= d[10, 10, 14] <= 3.0 and d[0, 0, 0] == pytest.approx(5.0)  # 2 voxels in, on a voxel sphere
    assert np.allclose(f["margin"].numpy(), 0.8) and np.allclose(f["p_max"].numpy(), 0.9)
    assert np.array_equal(f["inside"].numpy(), label.astype(np.float32))
    assert np.array_equal(f["on_boundary"].numpy() > 0, d <= 1.0)
    assert np.allclose(f["entropy"].numpy(), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2), atol=1e-6)
    assert not f["disagree"].any()
    flipped = voxel_features(_probs(label), _probs(label).flip(0), clip=5.0)  # a view that disagrees everywhere
    assert flipped["disagree"].all() and np.allclose(flipped["view_p"].numpy(), 0.1)


def test_clipped_boundary_distance_equals_the_full_transform_clipped():
    label = _sphere((30, 25, 20), 4.0)
    label[np.roll(_sphere((30, 25, 20), 2.0), 3, axis=0) > 0] = 2  # a second class touching the first
    full = boundary_distance(label, clip=None)
    assert np.allclose(boundary_distance(label, clip=3.0), np.minimum(full, 3.0))
    assert np.all(boundary_distance(np.zeros((4, 4, 4), int), clip=5.0) == 5.0)
    assert np.all(np.isinf(boundary_distance(np.zeros((4, 4, 4), int), clip=None)))


def test_shift_is_undone_in_the_interior():
    t = torch.randn(2, 8, 9, 10, generator=torch.Generator().manual_seed(0))
    back = shift_voxels(shift_voxels(t, (2, -1, 1)), (-2, 1, -1))
    assert torch.equal(back[:, 2:-2, 1:-1, 1:-1], t[:, 2:-2, 1:-1, 1:-1])
    assert torch.equal(shift_voxels(t, (1, 0, 0))[:, 1:], t[:, :-1])


def _planted_case(seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """A confidently predicted sphere whose truth differs from the prediction on half its surface voxels."""
    rng = np.random.default_rng(seed)
    pred = _sphere(radius=5.0 + seed % 3)
    probs = _probs(pred, 0.8)
    d = boundary_distance(pred, clip=5.0)
    truth = pred.copy()
    flip = (d <= 1.0) & (rng.random(pred.shape) < 0.5)
    truth[flip] = 1 - truth[flip]
    return probs, truth


def test_fitting_finds_errors_planted_at_the_boundary():
    cases = []
    for s in range(4):
        probs, truth = _planted_case(s)
        cases.append(case_features(probs, probs, truth, clip=5.0, seed=s))
    settings = {"clip": 5.0}
    model = fit_logistic(cases, "shift", settings)
    probs, truth = _planted_case(9)
    feats = voxel_features(probs, probs, 5.0)
    p = model.p_wrong(feats).numpy()
    near = feats["on_boundary"].numpy() > 0
    assert p[near].mean() > 0.3 > 0.05 > p[~near].max()
    assert p[near].mean() == pytest.approx(0.5, abs=0.1)  # calibrated: half the surface voxels are wrong
    cv = cross_validate({"shift": cases}, settings, folds=2)
    assert cv["shift"]["auprc"] > cv["entropy"]["auprc"]  # entropy is constant here: it cannot rank


def test_volume_p_wrong_equals_the_fitted_matrix_form():
    """The heatmap's in-place per-feature sum is the standardised logistic model it was fitted as."""
    rng = np.random.default_rng(3)
    label = _sphere()
    probs = torch.from_numpy(rng.dirichlet([1.0, 1.0, 1.0], size=label.shape).astype(np.float32)).permute(3, 0, 1, 2)
    view = torch.from_numpy(rng.dirichlet([1.0, 1.0, 1.0], size=label.shape).astype(np.float32)).permute(3, 0, 1, 2)
    m = ErrorModel("shift", list(FEATURES), list(rng.normal(size=len(FEATURES))), -1.5,
                   list(rng.normal(size=len(FEATURES))), list(rng.uniform(0.5, 2.0, size=len(FEATURES))), {"clip": 5.0})
    feats = voxel_features(probs, view, 5.0)
    x = np.stack([feats[n].numpy().reshape(-1) for n in FEATURES], axis=1).astype(np.float64)
    assert np.allclose(m.p_wrong(feats).numpy().reshape(-1), _p_wrong_matrix(m, x), atol=1e-5)


def test_error_model_dict_round_trip():
    m = ErrorModel("shift", list(FEATURES), [0.1 * i for i in range(len(FEATURES))], -2.0,
                   [0.0] * len(FEATURES), [1.0] * len(FEATURES), {"clip": 5.0, "shift": 2})
    d = m.to_dict()
    assert all(isinstance(v, (str, float, list, dict)) for v in d.values())
    assert ErrorModel.from_dict(d) == m


def _tiny_config() -> EngineConfig:
    cfg = EngineConfig(classes=["background", "blob"])
    cfg.model.channels = (4, 8)
    cfg.model.strides = (2,)
    cfg.train.patch_size = (16, 16, 16)
    return cfg


def _cases(n: int, rng: np.random.Generator) -> list[LoadedCase]:
    out = []
    for i in range(n):
        lab = np.zeros((16, 16, 16), np.uint8)
        c = rng.integers(5, 11, size=3)
        lab[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 1
        img = (lab + rng.normal(0, 0.3, lab.shape)).astype(np.float32)[None]
        out.append(LoadedCase(f"c{i}", img, lab, Volume(np.broadcast_to(np.uint8(0), lab.shape))))
    return out


def _checkpoint(tmp_path, error_model: dict | None):
    torch.manual_seed(0)
    cfg = _tiny_config()
    net = build_network(cfg.model, 2)
    ckpt = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "classes": cfg.classes,
            "state_dict": net.state_dict(), "temperature": 1.0, "iteration": 0, "metrics": {},
            "mix_references": [np.ones((1, 16, 16, 16), np.float16)]}
    if error_model is not None:
        ckpt["error_model"] = error_model
    return atomic_torch_save(ckpt, tmp_path / "model.pt")


def test_checkpoint_with_error_model_predicts_one_minus_p_wrong(tmp_path):
    rng = np.random.default_rng(0)
    path = _checkpoint(tmp_path, None)
    model, report = fit_error_model(Predictor.from_checkpoint(path, device="cpu"), _cases(4, rng), folds=2)
    assert report["view"] in report["cv"] and "entropy" in report["cv"]
    path = _checkpoint(tmp_path, model.to_dict())
    predictor = Predictor.from_checkpoint(path, device="cpu")
    assert predictor.error_model == model and "error model" in predictor.info["heatmap"]
    image = Volume(_cases(1, rng)[0].image[0])
    pred = predictor.predict(image, heatmap=True)
    x = predictor.pre.image(image)
    probs = predictor.probabilities(x)
    q = view_probabilities(predictor, x, model.view, model.settings)
    expected = predictor.pre.invert(error_heatmap(model, probs, q)[None], x)[0].numpy()  # network -> image grid
    assert np.allclose(pred.heatmap.array, expected, atol=1e-5)
    assert pred.region_map is not None and pred.model_info["heatmap"].startswith("error model")
    # the region map (computed on the network grid from the heatmap's features) is the training rule applied
    # on the image grid to the plain and the view's probabilities (exact here: preprocessing reorders voxels)
    tc = predictor.config.train
    image_probs = predictor.pre.invert(probs, x)
    rule = region_codes(image_probs, [predictor.pre.invert(q, x)], tc.confidence_mode,
                        confidence_bar(tc.confidence_mode, tc.margin_threshold, tc.entropy_threshold))
    assert np.array_equal(pred.region_map.array, rule.numpy()) and pred.region_map.array.dtype == np.uint8


def test_the_view_pass_tiles_windows_by_its_own_overlap(tmp_path):
    """New error models carry ``view_overlap`` 0 (half the windows of the plain pass on a large volume);
    models fitted before it keep the plain pass's overlap."""
    predictor = Predictor.from_checkpoint(_checkpoint(tmp_path, None), device="cpu")
    settings = default_settings(predictor.config)
    assert settings["view_overlap"] == 0.0 and predictor.config.inference.overlap > 0
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(1, 40, 36, 20)).astype(np.float32))  # > 1 window
    own = view_probabilities(predictor, x, "intensity", settings)
    assert torch.allclose(own, predictor.probabilities(view_input(x, "intensity", settings), overlap=0.0))
    older = {k: v for k, v in settings.items() if k != "view_overlap"}
    plain_tiling = view_probabilities(predictor, x, "intensity", older)
    assert torch.allclose(plain_tiling, predictor.probabilities(view_input(x, "intensity", settings)))
    assert not torch.allclose(own, plain_tiling)  # the tiling matters on a volume of several windows


@pytest.mark.parametrize("classes", [1, 2, 3, 4, 6])
def test_top_margin_is_top1_minus_top2(classes):
    p = torch.softmax(torch.randn(2, classes, 5, 4, 3, generator=torch.Generator().manual_seed(classes)) * 3, 1)
    top = p.topk(min(2, classes), 1).values
    expected = top[:, 0] - top[:, 1] if classes > 1 else top[:, 0]
    assert torch.allclose(top_margin(p, 1), expected, atol=1e-6)


def test_checkpoint_without_error_model_keeps_the_former_formula(tmp_path):
    predictor = Predictor.from_checkpoint(_checkpoint(tmp_path, None), device="cpu")
    assert predictor.error_model is None and "no error model" in predictor.info["heatmap"]
    image = Volume(_cases(1, np.random.default_rng(1))[0].image[0])
    pred = predictor.predict(image, heatmap=True)
    x = predictor.pre.image(image)
    expected = synergy_heatmap(predictor.probabilities(x), predictor.mixed_views(x))
    expected = predictor.pre.invert(expected[None], x)[0].numpy()  # network -> image grid (voxel reordering)
    assert np.allclose(pred.heatmap.array, expected, atol=1e-5)
    assert "no error model" in pred.model_info["heatmap"]
