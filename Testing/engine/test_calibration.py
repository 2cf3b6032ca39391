"""Temperature scaling and ECE (SynergyPLLib.engine.calibration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import CalibrationErrorMetric

from SynergyPLLib.engine.calibration import (
    T_MAX,
    T_MIN,
    classwise_ece,
    expected_calibration_error,
    fit_temperature,
)


def _synthetic(n: int = 40_000, c: int = 3, seed: int = 0):
    """True class distributions p (N, C) and labels drawn from them."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([1.0] * c, size=n)
    labels = (rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1)
    return torch.tensor(np.log(p)), torch.tensor(labels, dtype=torch.long)


def test_overconfident_model_gets_t_above_one_and_lower_ece():
    log_p, labels = _synthetic()
    logits = 5.0 * log_p  # deliberately over-confident
    t = fit_temperature(logits, labels)
    assert 4.5 < t < 5.5  # the true temperature is 5
    before = expected_calibration_error(torch.softmax(logits, 1), labels)
    after = expected_calibration_error(torch.softmax(logits / t, 1), labels)
    assert before > 0.1
    assert after < 0.02
    assert after < before - 0.08
    cw_before = np.mean(classwise_ece(torch.softmax(logits, 1), labels))
    cw_after = np.mean(classwise_ece(torch.softmax(logits / t, 1), labels))
    assert cw_after < cw_before / 3


def test_calibrated_model_keeps_t_near_one():
    log_p, labels = _synthetic(seed=1)
    assert abs(fit_temperature(log_p, labels) - 1.0) < 0.07


def test_list_of_volumes_and_subsampling():
    log_p, labels = _synthetic(n=2 * 10 * 10 * 10, seed=2)
    logits = 3.0 * log_p
    vols = [logits[i * 1000:(i + 1) * 1000].T.reshape(3, 10, 10, 10) for i in range(2)]
    labs = [labels[i * 1000:(i + 1) * 1000].reshape(10, 10, 10) for i in range(2)]
    flat = fit_temperature(logits, labels)
    assert fit_temperature(vols, labs) == pytest.approx(flat, rel=1e-6)
    assert fit_temperature(vols, labels) == pytest.approx(flat, rel=1e-6)
    sub = fit_temperature(logits, labels, max_voxels=500, seed=3)
    assert sub == fit_temperature(logits, labels, max_voxels=500, seed=3)  # seeded
    assert 1.5 < sub < 6.0


def test_temperature_is_clamped():
    labels = torch.tensor([0, 1] * 50)
    right = torch.nn.functional.one_hot(labels, 2).double() * 10.0
    assert fit_temperature(right, labels) == pytest.approx(T_MIN, rel=1e-2)  # always right: T -> 0
    assert fit_temperature(-right, labels) == pytest.approx(T_MAX, rel=1e-2)  # always wrong: T -> inf


def test_perfect_one_hot_predictions_have_zero_ece():
    labels = np.array([0, 1, 2, 2, 1, 0, 0])
    probs = np.eye(3)[labels]
    assert expected_calibration_error(probs, labels) == 0.0
    assert classwise_ece(probs, labels) == [0.0, 0.0, 0.0]


def test_hand_computed_ece():
    probs = np.array([[0.95, 0.05], [0.35, 0.65], [0.35, 0.65], [0.15, 0.85]])
    labels = np.array([0, 0, 1, 1])
    # top label: bins 0.9 (1 right, conf .95), 0.6 (1 of 2 right, conf .65), 0.8 (right, conf .85)
    # (0.05 + 2 * 0.15 + 0.15) / 4
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.125)
    assert classwise_ece(probs, labels, n_bins=10) == pytest.approx([0.125, 0.125])


def test_classwise_length_range_and_agreement_with_monai():
    rng = np.random.default_rng(4)
    c = 4
    probs = rng.dirichlet([0.5] * c, size=5000).astype(np.float32)
    labels = rng.integers(0, c, size=5000)
    cw = classwise_ece(probs, labels)
    assert len(cw) == c and all(0.0 <= v <= 1.0 for v in cw)
    # same definition as MONAI's per-channel "expected" calibration error (which is float32: small N here)
    metric = CalibrationErrorMetric(num_bins=15, metric_reduction="none")
    onehot = np.eye(c, dtype=np.float32)[labels]
    p_t, y_t = (torch.tensor(np.ascontiguousarray(a.T))[None] for a in (probs, onehot))
    ref = metric(y_pred=p_t, y=y_t)[0]
    assert cw == pytest.approx(ref.tolist(), abs=1e-5)
    conf, correct = probs.max(1), (probs.argmax(1) == labels).astype(np.float32)
    metric.reset()
    ref_top = metric(y_pred=torch.tensor(conf[None, None]), y=torch.tensor(correct[None, None]))[0, 0]
    assert expected_calibration_error(probs, labels) == pytest.approx(float(ref_top), abs=1e-5)


def test_large_bins_stay_exact():
    # MONAI's float32 binning reports ~1e-3 here; the float64 sums give the true 0
    n = 400_000
    probs = np.zeros((n, 2))
    probs[:, 0] = 0.999
    probs[:, 1] = 0.001
    labels = (np.arange(n) % 1000 == 0).astype(int)  # 99.9 % class 0
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-9)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        expected_calibration_error(np.ones((3, 2)) / 2, np.array([0, 1]))
    with pytest.raises(ValueError):
        classwise_ece(np.ones((2, 2)) / 2, np.array([0, 2]))
    with pytest.raises(ValueError):
        fit_temperature(torch.zeros(4, 2, 2), torch.zeros(4, dtype=torch.long))
