"""The one numpy Dice and the one entropy (numpy only, Python 3.9+).

- :func:`dice_per_class` / :func:`mean_dice`: Dice of label maps per foreground class ``1..C-1``;
  a class absent from both prediction and truth scores 1, one present in only one of them 0.
- :func:`normalized_entropy`: Shannon entropy of class probabilities divided by ``log(C)`` (0 for
  one-hot, 1 for uniform); ``0 * log 0`` counts as 0.

Torch code that must run on tensors during training keeps its own path: the entropy confidence of
:func:`SynergyPLLib.engine.synergy.confidence_score` (the single torch definition), and MONAI's
``compute_dice`` in :func:`SynergyPLLib.engine.metrics.segmentation_metrics` (same empty-class rule).
"""

from __future__ import annotations

import math

import numpy as np


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> list[float]:
    """Dice of each foreground class ``1..num_classes-1`` (1 when both are empty)."""
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    out = []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        denom = p.sum() + t.sum()
        out.append(1.0 if denom == 0 else float(2 * (p & t).sum() / denom))
    return out


def mean_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean of :func:`dice_per_class` over the foreground classes."""
    return float(np.mean(dice_per_class(pred, truth, num_classes)))


def normalized_entropy(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """``H(p) / log(C)`` along ``axis`` (the C class probabilities, C >= 2), in float64.

    Probabilities are clipped to [0, 1] first; ``0 * log 0`` is 0.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    if p.ndim < 1 or p.shape[axis] < 2:
        raise ValueError(f"probs must have at least 2 classes along axis {axis}, got shape {p.shape}")
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logp).sum(axis=axis) / math.log(p.shape[axis])
