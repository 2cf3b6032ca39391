"""The method pinned down on small tensors: regions, mixing, EMA, smoothing, rampup, flagged regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SynergyPLLib.engine.config import EngineConfig
from SynergyPLLib.engine.data import LoadedCase
from SynergyPLLib.engine.inference import flag_regions, synergy_heatmap
from SynergyPLLib.engine.io import Volume
from SynergyPLLib.engine.soft_labels import ClassPrototypes, class_frequencies, rare_class_scale
from SynergyPLLib.engine.synergy import (
    RegionalLoss,
    gaussian_rampup,
    masked_mean,
    mix_images,
    mix_lambda,
    smoothed_targets,
    synergy_regions,
)
from SynergyPLLib.engine.trainer import Trainer


def _probs_from_fg(fg: list[list[float]]) -> torch.Tensor:
    """Two-class probabilities (B, 2, N, 1, 1) from foreground probabilities per sample."""
    p1 = torch.tensor(fg, dtype=torch.float32)[:, None, :, None, None]
    return torch.cat([1 - p1, p1], dim=1)


def test_region_masks_per_sample_match_hand_computed():
    # sample 0: voxels (plain fg prob, mixed fg prob)
    plain = _probs_from_fg([[0.9, 0.9, 0.5, 0.2, 0.45], [0.1, 0.56, 0.8, 0.3, 0.9]])
    mixed = _probs_from_fg([[0.8, 0.2, 0.6, 0.9, 0.55], [0.1, 0.7, 0.44, 0.3, 0.9]])
    regions = synergy_regions(plain, mixed, "margin", 0.15)
    # hand computed: consistent = same side of 0.5; uncertain = fg prob in (0.425, 0.575) in either view
    # s0: v0 cons+conf 0 | v1 incons+conf 2 | v2 (0.5 vs 0.6): argmax 0 vs 1 -> incons, 0.5 uncertain -> 3
    #     v3 incons+conf 2 | v4 (0.45 vs 0.55): incons, uncertain -> 3
    # s1: v0 0 | v1 (0.56 vs 0.7): cons, 0.56 uncertain -> 1 | v2 (0.8 vs 0.44): incons, uncertain -> 3
    #     v3 0 | v4 0
    expected = torch.tensor([[0, 2, 3, 2, 3], [0, 1, 3, 0, 0]])
    assert regions.shape == (2, 1, 5, 1, 1)
    assert torch.equal(regions[:, 0, :, 0, 0], expected)


def test_margin_threshold_equals_paper_band_for_two_classes():
    fg = torch.linspace(0.0, 1.0, 1001)
    probs = _probs_from_fg([fg.tolist()])
    regions = synergy_regions(probs, probs, "margin", 0.15)[0, 0, :, 0, 0]
    uncertain = regions % 2 == 1
    in_band = (fg > 0.425 + 1e-6) & (fg < 0.575 - 1e-6)
    edge = ((fg - 0.425).abs() < 1e-6) | ((fg - 0.575).abs() < 1e-6)
    assert torch.equal(uncertain[~edge], in_band[~edge])


def test_region_losses_use_each_samples_own_mask():
    """A region present only in sample 1 must not give sample 0 a loss there (no batch broadcast)."""
    torch.manual_seed(0)
    loss = RegionalLoss(num_classes=2)
    logits = torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    pseudo = torch.randint(0, 2, (2, 4, 4, 4))
    regions = torch.full((2, 1, 4, 4, 4), 3)  # all ignored ...
    regions[1] = 0  # ... except sample 1, all consistent+confident
    total, _ = loss(logits, pseudo, regions)
    total.backward()
    assert logits.grad[0].abs().sum() == 0
    assert logits.grad[1].abs().sum() > 0
    with pytest.raises(ValueError):
        masked_mean(torch.ones(2, 4, 4, 4), torch.ones(2, 1, 4, 4, 4))


def test_lambda_weighs_the_unlabeled_image_at_least_half():
    gen = torch.Generator().manual_seed(0)
    lam = mix_lambda(10000, 0.75, gen)
    assert lam.min() >= 0.5 and lam.max() <= 1.0
    assert 0.6 < lam.mean() < 0.9  # Beta(0.75, 0.75) folded: not degenerate
    u = torch.zeros(2, 1, 2, 2, 2)
    x = torch.ones(2, 1, 2, 2, 2)
    mixed = mix_images(u, x, torch.tensor([0.7, 0.9]))
    assert torch.allclose(mixed[0], torch.full_like(mixed[0], 0.3))
    assert torch.allclose(mixed[1], torch.full_like(mixed[1], 0.1))


def test_gaussian_rampup_schedule():
    assert gaussian_rampup(0, 100, 0.4) == pytest.approx(np.exp(-5))
    assert gaussian_rampup(40, 100, 0.4) == pytest.approx(1.0)
    assert gaussian_rampup(20, 100, 0.4) == pytest.approx(np.exp(-5 * 0.25))


def test_smoothing_mass_goes_to_similar_classes():
    protos = ClassPrototypes(num_classes=3, momentum=0.0)
    feats = torch.zeros(1, 3, 3, 1, 1)
    feats[0, :, 0, 0, 0] = torch.tensor([1.0, 0.0, 0.0])  # background
    feats[0, :, 1, 0, 0] = torch.tensor([0.0, 1.0, 0.2])  # class 1 ...
    feats[0, :, 2, 0, 0] = torch.tensor([0.0, 0.9, 0.4])  # ... and class 2 look alike
    labels = torch.tensor([[[[0]], [[1]], [[2]]]]).reshape(1, 3, 1, 1)
    protos.update(feats, labels)
    rows = protos.smoothing_rows()
    assert torch.allclose(rows.sum(1), torch.ones(3))
    assert rows[1, 2] > 0.99 and rows[2, 1] > 0.99  # class 1's mass goes to class 2 and back
    assert torch.all(rows.diagonal() == 0)
    target = smoothed_targets(torch.tensor([1]), 3, 0.2, rows)
    assert target[0, 1] == pytest.approx(0.8)
    assert target[0, 2] == pytest.approx(0.2, abs=1e-3)
    assert target[0, 0] < 1e-3


def test_rare_classes_get_a_lower_confidence_bar():
    freqs = class_frequencies([np.array([0] * 90 + [1] * 9 + [2])], 3)
    scale = rare_class_scale(freqs, 0.25)
    assert scale[0] == pytest.approx(1.0)
    assert scale[2] < scale[1] < 1.0


def _tiny_cases(n: int, labeled: bool, rng: np.random.Generator) -> list[LoadedCase]:
    cases = []
    for i in range(n):
        lab = np.zeros((16, 16, 16), np.uint8)
        c = rng.integers(5, 11, size=3)
        lab[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 1
        img = (lab + rng.normal(0, 0.3, lab.shape)).astype(np.float32)[None]
        geom = Volume(np.broadcast_to(np.uint8(0), lab.shape))
        cases.append(LoadedCase(f"c{i}", img, lab if labeled else None, geom))
    return cases


def _tiny_config(method: str) -> EngineConfig:
    cfg = EngineConfig(classes=["background", "blob"])
    cfg.model.channels = (4, 8)
    cfg.model.strides = (2,)
    cfg.train.method = method
    cfg.train.patch_size = (16, 16, 16)
    cfg.train.iterations = 6
    cfg.train.val_every = 3
    cfg.train.checkpoint_every = 3
    cfg.train.warmup_fraction = 0.0  # from scratch: the warm start has its own tests (test_method_parts)
    return cfg


@pytest.mark.parametrize("method", ["supervised", "mean_teacher", "sgrs", "synergypl"])
def test_one_ema_update_per_step(method, tmp_path):
    rng = np.random.default_rng(0)
    tr = Trainer(_tiny_config(method), _tiny_cases(2, True, rng), _tiny_cases(3, False, rng),
                 _tiny_cases(1, True, rng), tmp_path)
    calls = []
    import SynergyPLLib.engine.trainer as trainer_mod

    real = trainer_mod.ema_update
    trainer_mod.ema_update = lambda *a, **k: (calls.append(1), real(*a, **k))
    try:
        for _ in range(4):
            before = [p.clone() for p in tr.teacher.parameters()]
            tr.step()
            decay = min(1 - 1 / (tr.iteration + 1), tr.tc.ema_decay)
            for b, t, s in zip(before, tr.teacher.parameters(), tr.student.parameters(), strict=True):
                assert torch.allclose(t, decay * b + (1 - decay) * s, atol=1e-6)
    finally:
        trainer_mod.ema_update = real
    assert len(calls) == 4 and tr.ema_updates == 4


def test_training_resumes_and_cancels(tmp_path):
    rng = np.random.default_rng(1)
    lab, unl, val = _tiny_cases(2, True, rng), _tiny_cases(2, False, rng), _tiny_cases(1, True, rng)
    cfg = _tiny_config("synergypl")
    steps = []
    res = Trainer(cfg, lab, unl, val, tmp_path).run(should_stop=lambda: len(steps) >= 4,
                                                     on_progress=lambda e: steps.append(e.iteration))
    assert res.cancelled and res.iterations == 4 and res.checkpoint.exists()
    resumed = Trainer(cfg, lab, unl, val, tmp_path).run(resume=True)
    assert not resumed.cancelled and resumed.iterations == 6
    assert 0 < resumed.temperature < 20


def test_flagged_region_centroid_under_oblique_affine():
    theta = np.deg2rad(30)
    direction = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    heat = np.ones((20, 30, 10), np.float32)
    heat[4:7, 10:14, 2:4] = 0.1  # 3*4*2 = 24 voxels, centre (5, 11.5, 2.5)
    heat[15, 25, 8] = 0.3  # a single voxel, dropped by min_voxels
    vol = Volume(heat, spacing=(0.5, 2.0, 3.0), origin=(10.0, -20.0, 5.0), direction=direction)
    label = vol.with_array(np.zeros(heat.shape, np.uint8))
    regions = flag_regions(vol, label, ["background", "x"], threshold=0.5, min_voxels=2)
    assert len(regions) == 1
    r = regions[0]
    assert r.voxel_count == 24 and r.bbox_ijk == [[4, 10, 2], [6, 13, 3]]
    assert r.centroid_ijk == [5.0, 11.5, 2.5]
    lps = np.array([10.0, -20.0, 5.0]) + direction @ (np.array([5.0, 11.5, 2.5]) * [0.5, 2.0, 3.0])
    assert np.allclose(r.centroid_lps, lps, atol=1e-3)
    assert np.allclose(r.centroid_ras, lps * [-1, -1, 1], atol=1e-3)
    assert r.volume_ml == pytest.approx(24 * 3.0 / 1000)
    assert r.mean_confidence == pytest.approx(0.1)


def test_heatmap_is_one_when_views_agree_confidently_and_low_when_they_do_not():
    p = torch.tensor([[0.99, 0.01], [0.01, 0.99]]).T.reshape(2, 2, 1, 1)
    agree = synergy_heatmap(p, [p.clone()])
    flip = synergy_heatmap(p, [p.flip(0)])
    assert torch.all(agree > 0.9)
    assert torch.all(flip < 0.1)  # a confident plain prediction the mixed view contradicts
    even = torch.full((2, 2, 1, 1), 0.5)
    assert torch.all(synergy_heatmap(even, [even]) < 1e-6)  # a coin flip is never certain
    assert torch.all(agree <= 1) and torch.all(flip >= 0)


def test_region_cross_entropy_normalisation():
    """'all' weighs every voxel the same; 'region' averages inside each region."""
    values = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    mask = torch.zeros_like(values, dtype=torch.bool)
    mask[0, 0, 0, 0, :] = True  # values 0 and 1
    assert masked_mean(values, mask, "region") == pytest.approx(0.5)
    assert masked_mean(values, mask, "all") == pytest.approx(1.0 / 8)
    assert masked_mean(values, torch.zeros_like(mask), "region") == 0
    with pytest.raises(ValueError):
        RegionalLoss(2, normalize="sometimes")
