"""Error-detection scores and the baseline confidence maps (SynergyPLLib.engine.uncertainty)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from SynergyPLLib.engine.config import AugmentConfig
from SynergyPLLib.engine.uncertainty import (
    ErrorDetectionAccumulator,
    boundary_distance_confidence,
    entropy_confidence,
    error_detection_scores,
    mc_dropout_confidence,
    tta_confidence,
)

# ----------------------------------------------------------------------------- error detection


@pytest.mark.parametrize("n_err", [50, 400])
def test_perfect_signal(n_err):
    rng = np.random.default_rng(0)
    n = 2000
    is_error = np.zeros(n, bool)
    is_error[rng.choice(n, n_err, replace=False)] = True
    conf = np.where(is_error, rng.uniform(0.0, 0.4, n), rng.uniform(0.6, 1.0, n)).reshape(10, 20, 10)
    s = error_detection_scores(conf, is_error.reshape(10, 20, 10))
    assert s["auroc"] == 1.0 and s["auprc"] == pytest.approx(1.0)
    assert s["error_recall_at_5pct"] == pytest.approx(min(1.0, 0.05 * n / n_err))


def test_random_signal():
    rng = np.random.default_rng(1)
    n = 200_000
    is_error = rng.random(n) < 0.1
    s = error_detection_scores(rng.random(n), is_error)
    assert s["auroc"] == pytest.approx(0.5, abs=0.01)
    assert s["auprc"] == pytest.approx(is_error.mean(), abs=0.01)
    assert s["error_recall_at_5pct"] == pytest.approx(0.05, abs=0.01)


def test_hand_computed_example():
    conf = np.array([0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6, 0.4, 1.0])
    is_error = np.zeros(10, bool)
    is_error[[1, 2, 4]] = True  # confidences 0.1, 0.5, 0.8
    s = error_detection_scores(conf, is_error)
    # pairs (error less confident than correct): 0.1 -> 7, 0.5 -> 4, 0.8 -> 2 of 7 each
    assert s["auroc"] == pytest.approx(13 / 21)
    # ranked least confident first, errors at ranks 1, 5, 8
    assert s["auprc"] == pytest.approx((1 / 1 + 2 / 5 + 3 / 8) / 3)
    # ceil(5 % of 10) = 1 voxel: the 0.1 one, an error
    assert s["error_recall_at_5pct"] == pytest.approx(1 / 3)


def test_ties_are_broken_by_position_and_no_errors_is_nan():
    conf = np.ones(100)
    first = np.zeros(100, bool)
    first[:5] = True
    last = first[::-1].copy()
    assert error_detection_scores(conf, first)["error_recall_at_5pct"] == 1.0
    assert error_detection_scores(conf, last)["error_recall_at_5pct"] == 0.0
    assert error_detection_scores(conf, first)["auroc"] == 0.5
    none = error_detection_scores(conf, np.zeros(100, bool))
    assert all(math.isnan(v) for v in none.values())
    with pytest.raises(ValueError):
        error_detection_scores(conf, np.zeros(99, bool))


def test_accumulator_pools_cases():
    rng = np.random.default_rng(2)
    cases = [(rng.random((4, 5, 6)), rng.random((4, 5, 6)) < 0.2) for _ in range(3)]
    acc = ErrorDetectionAccumulator()
    for conf, err in cases:
        acc.add(conf, torch.as_tensor(err))
    pooled = error_detection_scores(np.concatenate([c.ravel() for c, _ in cases]).astype(np.float32),
                                    np.concatenate([e.ravel() for _, e in cases]))
    assert acc.scores() == pytest.approx(pooled)
    assert acc.n_cases == 3 and acc.n_voxels == 360
    assert acc.n_errors == sum(int(e.sum()) for _, e in cases)
    acc.reset()
    assert acc.n_cases == 0 and math.isnan(acc.scores()["auroc"])


# ----------------------------------------------------------------------------- confidence maps


def test_entropy_confidence():
    onehot = np.eye(3)[np.random.default_rng(3).integers(0, 3, (4, 5, 6))].transpose(3, 0, 1, 2)
    assert np.all(entropy_confidence(onehot) == 1.0)
    uniform = torch.full((4, 2, 2, 2), 0.25)
    assert np.allclose(entropy_confidence(uniform), 0.0, atol=1e-6)
    probs = torch.softmax(torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0)), 0)
    c = entropy_confidence(probs)
    assert c.shape == (4, 5, 6) and c.dtype == np.float32
    assert c.min() >= 0.0 and c.max() <= 1.0 and 0.0 < c.mean() < 1.0


class _TinyNet(nn.Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        self.a = nn.Conv3d(1, 8, 1)
        self.bn = nn.BatchNorm3d(8)
        self.drop = nn.Dropout3d(p)
        self.b = nn.Conv3d(8, 2, 1)

    def forward(self, x):
        return self.b(self.drop(torch.relu(self.bn(self.a(x)))))


def test_mc_dropout_varies_predictions_and_restores_eval():
    torch.manual_seed(0)
    net = _TinyNet().eval()
    image = torch.randn(1, 1, 6, 6, 6)
    seen, modes = [], []

    def predict_probs(x):
        modes.append((net.bn.training, net.drop.training))
        p = torch.softmax(net(x), 1)
        seen.append(p)
        return p

    conf, probs = mc_dropout_confidence(net, predict_probs, image, passes=5)
    assert len(seen) == 5
    assert not torch.allclose(seen[0], seen[1])  # the passes really are stochastic
    assert modes == [(False, True)] * 5  # only dropout was switched on
    assert not any(m.training for m in net.modules())  # eval mode restored
    assert conf.shape == (6, 6, 6) and probs.shape == (2, 6, 6, 6)
    assert conf.min() >= 0.0 and conf.max() <= 1.0
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5)
    assert np.allclose(probs, torch.stack(seen).mean(0)[0].numpy(), atol=1e-6)
    again, _ = mc_dropout_confidence(net, None, image, passes=5)  # seeded: same passes
    assert np.allclose(conf, again)


def test_mc_dropout_restores_modes_on_error_and_needs_dropout():
    net = _TinyNet()
    net.train()
    net.bn.eval()
    before = {n: m.training for n, m in net.named_modules()}
    calls = []

    def failing(x):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return torch.softmax(net(x), 1)

    with pytest.raises(RuntimeError):
        mc_dropout_confidence(net, failing, torch.randn(1, 1, 4, 4, 4), passes=3)
    assert {n: m.training for n, m in net.named_modules()} == before

    plain = nn.Sequential(nn.Conv3d(1, 2, 1)).eval()
    with pytest.raises(ValueError, match="no dropout"):
        mc_dropout_confidence(plain, None, torch.randn(1, 1, 4, 4, 4))


def _pointwise_model(x):
    """Shift-equivariant: a per-voxel 2-class softmax of the intensity."""
    return torch.softmax(torch.cat([x, -x], 1) * 2, 1)


def test_tta_without_intensity_changes_undoes_the_shifts():
    image = torch.randn(1, 1, 9, 10, 11, generator=torch.Generator().manual_seed(0))
    still = AugmentConfig(intensity_scale=0.0, intensity_shift=0.0, noise_std=0.0)
    conf = tta_confidence(_pointwise_model, image, views=6, augment=still, max_shift=2)
    assert conf.shape == (9, 10, 11) and conf.dtype == np.float32
    plain = entropy_confidence(_pointwise_model(image)[0])
    inner = (slice(2, -2),) * 3  # the edges see replicated voxels
    assert np.allclose(conf[inner], plain[inner], atol=1e-5)


def test_tta_intensity_changes_lower_the_confidence_near_the_decision_boundary():
    image = torch.linspace(-0.2, 0.2, 8).reshape(1, 1, 8, 1, 1).expand(1, 1, 8, 4, 4).contiguous()
    plain = entropy_confidence(_pointwise_model(image)[0])
    conf = tta_confidence(_pointwise_model, image, views=8, augment=AugmentConfig(), max_shift=0)
    assert conf.mean() < plain.mean() and conf.max() <= 1.0
    assert np.array_equal(tta_confidence(_pointwise_model, image, views=1), plain)  # one view: the image


def test_input_independent_model_gives_its_entropy():
    def constant(x):
        return torch.cat([torch.full_like(x, 0.7), torch.full_like(x, 0.3)], 1)

    conf = tta_confidence(constant, torch.zeros(1, 1, 3, 4, 5), views=4)
    expected = 1 + (0.7 * math.log(0.7) + 0.3 * math.log(0.3)) / math.log(2)
    assert np.allclose(conf, expected, atol=1e-6)


def test_boundary_distance_confidence_rises_away_from_the_boundary():
    label = np.zeros((1, 1, 12), np.int64)
    label[..., 6:] = 1
    conf = boundary_distance_confidence(label)[0, 0]
    assert conf[5] == conf[6] == pytest.approx(0.5)
    assert np.all(np.diff(conf[6:]) > 0) and np.all(np.diff(conf[:6]) < 0)
    assert np.all(boundary_distance_confidence(np.zeros((2, 2, 2), int)) == 1.0)
