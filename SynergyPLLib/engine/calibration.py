"""Temperature scaling and expected calibration error (top-label and class-wise).

- :func:`fit_temperature`: one scalar ``T`` so that ``softmax(logits / T)`` minimises the negative
  log-likelihood of the labels (Guo et al. 2017). Fitted on validation voxels, never on test cases.
- :func:`expected_calibration_error`: top-label ECE (Guo et al. 2017): voxels binned by their top
  probability; ``sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|``.
- :func:`classwise_ece`: class-wise ECE (Kull et al. 2019), one value per class: the ECE of ``p_c``
  against ``1[label == c]`` over all voxels. Kull's scalar class-wise ECE is the mean of this list.

Both ECEs use ``n_bins`` equal-width bins on [0, 1], left-closed ``[a, b)`` with the last bin closed,
the convention of :class:`monai.metrics.CalibrationErrorMetric` (its "expected" reduction per channel is
exactly the class-wise ECE). We do not call MONAI here: ``calibration_binning`` casts to float32 and
accumulates with ``scatter_add``, so a bin holding millions of near-certain background voxels gets a
mean confidence off by ~1e-3 (3M voxels at p = 0.999, 99.9 % correct: MONAI reports ECE 0.0010 instead
of 0). The same bins are summed here in float64 with ``np.bincount``; on small inputs the values agree
with MONAI's to float32 precision (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

T_MIN, T_MAX = 0.05, 20.0
MAX_FIT_VOXELS = 200_000

ArrayLike = np.ndarray | torch.Tensor


def _flatten_logits(logits, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits to (N, C) and labels to (N,), whatever of the accepted layouts came in."""
    if isinstance(logits, torch.Tensor | np.ndarray):
        x = torch.as_tensor(logits)
        if x.ndim != 2:
            raise ValueError(f"logits must be (N, C) or a list of (C, *spatial) tensors, got shape {tuple(x.shape)}")
        parts = [x]
    else:
        parts = [torch.as_tensor(t).reshape(t.shape[0], -1).T for t in logits]
        if not parts:
            raise ValueError("no logits given")
    x = torch.cat([p.detach().cpu().to(torch.float64) for p in parts], dim=0)
    if isinstance(labels, torch.Tensor | np.ndarray):
        y = torch.as_tensor(labels).reshape(-1)
    else:
        y = torch.cat([torch.as_tensor(t).reshape(-1) for t in labels])
    y = y.detach().cpu().long()
    if y.numel() != x.shape[0]:
        raise ValueError(f"{x.shape[0]} logit rows but {y.numel()} labels")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= x.shape[1]):
        raise ValueError(f"labels must lie in 0..{x.shape[1] - 1}")
    return x, y


def fit_temperature(
    logits: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor | Sequence[torch.Tensor],
    *,
    max_voxels: int = MAX_FIT_VOXELS,
    seed: int = 0,
) -> float:
    """Fit the temperature ``T`` of ``softmax(logits / T)`` by minimising the NLL of ``labels``.

    In: ``logits`` as an (N, C) tensor, or a list of (C, *spatial) tensors (one per case) with
    ``labels`` then either the matching (N,) tensor or a list of (*spatial) label tensors. At most
    ``max_voxels`` voxels (a seeded uniform subsample) enter the fit.
    Out: ``T`` as a float in [0.05, 20]; ``T > 1`` softens an over-confident model.

    The NLL of ``logits * b`` is convex in ``b = 1 / T``, hence unimodal in ``log T``: a bounded
    scalar search (scipy's Brent) on ``log T`` finds the optimum within the bounds.
    """
    x, y = _flatten_logits(logits, labels)
    if x.shape[0] == 0:
        return 1.0
    if x.shape[0] > max_voxels:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(x.shape[0], generator=gen)[:max_voxels]
        x, y = x[idx], y[idx]

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(x / math.exp(log_t), y))

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    # Brent stops early on a flat tail (e.g. an always-right model, optimum at the bound): check the bounds
    best = min((float(res.fun), float(res.x)), (nll(lo), lo), (nll(hi), hi))[1]
    return float(min(max(math.exp(best), T_MIN), T_MAX))


def _as_probs_labels(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {p.shape}")
    y = y.reshape(-1).astype(np.int64)
    if y.size != p.shape[0]:
        raise ValueError(f"{p.shape[0]} probability rows but {y.size} labels")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1}")
    return p.astype(np.float64, copy=False), y


def _binned_ece(score: np.ndarray, target: np.ndarray, n_bins: int) -> float:
    """ECE of scores (N,) in [0, 1] against binary targets (N,): ``sum_b |sum_p - sum_y| / N``."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    inner = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    idx = np.searchsorted(inner, score, side="right")  # bins [a, b); 1.0 falls in the last bin
    sum_p = np.bincount(idx, weights=score, minlength=n_bins)
    sum_y = np.bincount(idx, weights=target.astype(np.float64), minlength=n_bins)
    # |B|/N * |mean_y - mean_p| summed over bins equals sum |sum_y - sum_p| / N
    return float(np.abs(sum_p - sum_y).sum() / score.size)


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Top-label ECE in [0, 1].

    In: ``probs`` (N, C) probabilities (numpy or torch), ``labels`` (N,) integer classes.
    Out: ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` where voxels are binned by ``max_c p_c`` and
    ``acc`` is the share whose argmax equals the label (ties: the lowest class index). NaN for N = 0.
    """
    p, y = _as_probs_labels(probs, labels)
    if p.shape[0] == 0:
        return float("nan")
    return _binned_ece(p.max(axis=1), p.argmax(axis=1) == y, n_bins)


def classwise_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> list[float]:
    """Class-wise ECE (Kull et al. 2019), one value per class, each in [0, 1].

    In: ``probs`` (N, C), ``labels`` (N,). Out: list of length C; entry ``c`` is the ECE of ``p_c``
    against the indicator ``label == c`` over all N voxels. Their mean is Kull's class-wise ECE.
    NaNs for N = 0.
    """
    p, y = _as_probs_labels(probs, labels)
    if p.shape[0] == 0:
        return [float("nan")] * p.shape[1]
    return [_binned_ece(p[:, c], y == c, n_bins) for c in range(p.shape[1])]
