"""The one numpy Dice and the one entropy (SynergyPLLib.common.metrics) and the copies that must agree
with them: MONAI's Dice in segmentation_metrics and the torch entropy confidence used in training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from SynergyPLLib.common.metrics import dice_per_class, mean_dice, normalized_entropy
from SynergyPLLib.engine.metrics import segmentation_metrics
from SynergyPLLib.engine.synergy import confidence_score
from SynergyPLLib.engine.uncertainty import entropy_confidence


def test_dice_empty_classes_and_overlap():
    truth = np.zeros((6, 6, 6), np.int64)
    truth[1:3, 1:3, 1:3] = 1  # 8 voxels of class 1; class 2 is absent from the truth
    pred = np.zeros_like(truth)
    pred[1:3, 1:3, 1:2] = 1  # 4 of them
    assert dice_per_class(pred, truth, 3) == [pytest.approx(2 * 4 / 12), 1.0]  # class 2: empty-empty = 1
    pred[5, 5, 5] = 2  # class 2 predicted, absent from the truth: 0
    assert dice_per_class(pred, truth, 3)[1] == 0.0
    assert mean_dice(pred, truth, 3) == pytest.approx((2 * 4 / 12 + 0.0) / 2)
    assert mean_dice(truth, truth, 3) == 1.0


def test_numpy_dice_equals_monai_dice_of_segmentation_metrics():
    rng = np.random.default_rng(3)
    for _ in range(5):
        truth = rng.integers(0, 3, (10, 9, 8))
        pred = np.where(rng.random(truth.shape) < 0.3, rng.integers(0, 3, truth.shape), truth)
        pred[pred == 2] = 0 if rng.random() < 0.4 else 2  # sometimes a class only in the truth
        monai = list(segmentation_metrics(pred, truth, 3)["dice"].values())
        assert dice_per_class(pred, truth, 3) == pytest.approx(monai, abs=1e-6)


def test_normalized_entropy_and_its_torch_twin():
    assert normalized_entropy(np.array([1.0, 0.0, 0.0])) == 0.0
    assert normalized_entropy(np.full(4, 0.25)) == pytest.approx(1.0)
    p = np.array([0.7, 0.2, 0.1])
    assert normalized_entropy(p) == pytest.approx(-(p * np.log(p)).sum() / math.log(3))
    probs = torch.softmax(torch.randn(1, 3, 5, 6, 7, generator=torch.Generator().manual_seed(0)) * 3, 1)
    torch_conf = confidence_score(probs, "entropy")[0, 0].numpy()
    assert np.allclose(torch_conf, 1 - normalized_entropy(probs[0].numpy()), atol=1e-6)
    assert np.allclose(entropy_confidence(probs[0]), torch_conf, atol=1e-6)
    with pytest.raises(ValueError):
        normalized_entropy(np.ones((1, 4)))
