"""How well a per-voxel confidence finds the wrong voxels, and the baseline confidence signals.

Evaluation (benchmark question 2, ``uncertainty.json``):
- :func:`error_detection_scores`: AUROC, AUPRC and error recall at 5 % of a confidence map against the
  voxels whose predicted label is wrong; :class:`ErrorDetectionAccumulator` pools cases so the scores are
  over the whole test set.

Baselines, each a confidence in [0, 1] (1 = certain) shaped like the volume:
- :func:`entropy_confidence`: 1 - normalised entropy of the softmax.
- :func:`mc_dropout_confidence`: 1 - normalised entropy of the mean of stochastic passes with only the
  dropout layers active (MONAI Label's epistemic scoring style).
- :func:`tta_confidence`: 1 - normalised entropy of the mean over test-time augmentations with the
  training's label-preserving augmentations (intensity scale/shift, noise, shifts of a few voxels).

:func:`entropy_confidence` and :func:`tta_confidence` return the confidence array;
:func:`mc_dropout_confidence` returns ``(confidence, mean_probs)``.

The baselines take ``predict_probs``: a callable mapping an image tensor (1, 1, I, J, K) to softmax
probabilities (1, C, I, J, K), e.g. a sliding-window predictor. Arrays come back as numpy float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from monai.data import MetaTensor
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from ..common.metrics import normalized_entropy
from .config import AugmentConfig

RECALL_PERCENT = 5  # error_recall_at_5pct looks at the ceil(5 % of N) least confident voxels

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)

PredictProbs = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- error detection


def error_detection_scores(confidence: np.ndarray, is_error: np.ndarray) -> dict[str, float]:
    """Score a confidence map as a detector of wrong voxels.

    In: ``confidence`` (any shape, 1 = certain) and ``is_error`` (bool, same shape: predicted label
    differs from the truth). Uncertainty ``1 - confidence`` is the detector's score.
    Out: ``{"auroc", "auprc", "error_recall_at_5pct"}``:
    - ``auroc``: sklearn ``roc_auc_score`` (ties count one half); NaN when there are no errors or only errors.
    - ``auprc``: sklearn ``average_precision_score``; NaN when there are no errors.
    - ``error_recall_at_5pct``: share of the wrong voxels among the ``ceil(0.05 * N)`` least confident
      voxels of the whole array; ties in confidence are broken by flat (C-order) index, earlier first
      (stable argsort), so the result is deterministic. NaN when there are no errors.
    """
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    err = np.asarray(is_error).astype(bool).reshape(-1)
    if conf.shape != err.shape:
        raise ValueError(f"confidence has {conf.size} voxels but is_error has {err.size}")
    if not np.isfinite(conf).all():
        raise ValueError("confidence contains NaN or infinite values")
    n, n_err = conf.size, int(err.sum())
    nan = float("nan")
    if n == 0 or n_err == 0:
        return {"auroc": nan, "auprc": nan, "error_recall_at_5pct": nan}
    uncertainty = 1.0 - conf
    auroc = float(roc_auc_score(err, uncertainty)) if n_err < n else nan
    auprc = float(average_precision_score(err, uncertainty))
    k = -(-n * RECALL_PERCENT // 100)  # ceil in integer arithmetic
    least_confident = np.argsort(conf, kind="stable")[:k]
    recall = float(err[least_confident].sum()) / n_err
    return {"auroc": auroc, "auprc": auprc, "error_recall_at_5pct": recall}


class ErrorDetectionAccumulator:
    """Collect (confidence, is_error) case by case; :meth:`scores` scores the pooled voxels.

    Every voxel is kept (no subsampling: it would change the 5 % ranking).
    """

    def __init__(self) -> None:
        self._conf: list[np.ndarray] = []
        self._err: list[np.ndarray] = []

    def add(self, confidence: np.ndarray | torch.Tensor, is_error: np.ndarray | torch.Tensor) -> None:
        """Add one case: ``confidence`` and ``is_error`` of the same shape (any)."""
        conf = _to_numpy(confidence).astype(np.float32).reshape(-1)
        err = _to_numpy(is_error).astype(bool).reshape(-1)
        if conf.shape != err.shape:
            raise ValueError(f"confidence has {conf.size} voxels but is_error has {err.size}")
        self._conf.append(conf)
        self._err.append(err)

    @property
    def n_cases(self) -> int:
        return len(self._conf)

    @property
    def n_voxels(self) -> int:
        return int(sum(c.size for c in self._conf))

    @property
    def n_errors(self) -> int:
        return int(sum(e.sum() for e in self._err))

    def scores(self) -> dict[str, float]:
        """:func:`error_detection_scores` over every voxel added so far (NaNs when none)."""
        if not self._conf:
            return error_detection_scores(np.zeros(0), np.zeros(0, dtype=bool))
        return error_detection_scores(np.concatenate(self._conf), np.concatenate(self._err))

    def reset(self) -> None:
        self._conf.clear()
        self._err.clear()


# ----------------------------------------------------------------------------- confidence baselines


class ConfidenceMap(NamedTuple):
    """MC dropout's output: ``confidence`` (I, J, K) in [0, 1] and the mean ``probs`` (C, I, J, K)."""

    confidence: np.ndarray
    probs: np.ndarray


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """Drop MONAI's MetaTensor wrapper (sliding-window output) to keep plain, fast tensor ops."""
    return t.as_tensor() if isinstance(t, MetaTensor) else torch.as_tensor(t)


def _as_batch(image: torch.Tensor) -> torch.Tensor:
    """Image (I, J, K), (1, I, J, K) or (1, 1, I, J, K) -> (1, 1, I, J, K)."""
    image = torch.as_tensor(image)
    while image.ndim < 5:
        image = image[None]
    if image.ndim != 5 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, 1, I, J, K), got shape {tuple(image.shape)}")
    return image


def _check_probs(p: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    p = _plain(p)
    if p.ndim != 5 or p.shape[0] != 1 or p.shape[2:] != image.shape[2:]:
        raise ValueError(f"predict_probs must return (1, C, *{tuple(image.shape[2:])}), got {tuple(p.shape)}")
    return p


def entropy_confidence(probs: np.ndarray | torch.Tensor) -> np.ndarray:
    """1 - normalised Shannon entropy of class probabilities.

    In: ``probs`` (C, ...) with C >= 2, summing to 1 over axis 0 (numpy or torch).
    Out: float32 array shaped ``probs.shape[1:]``; ``1 - H(p) / log(C)`` in [0, 1]: 1 for one-hot,
    0 for uniform.
    """
    p = _to_numpy(probs)
    if p.ndim < 1 or p.shape[0] < 2:
        raise ValueError(f"probs must be (C, ...) with at least 2 classes, got shape {tuple(p.shape)}")
    return np.clip(1.0 - normalized_entropy(p, axis=0), 0.0, 1.0).astype(np.float32)


def mc_dropout_confidence(
    model: nn.Module,
    predict_probs: PredictProbs | None,
    image: torch.Tensor,
    passes: int = 10,
    *,
    seed: int | None = 0,
) -> ConfidenceMap:
    """Monte-Carlo dropout: ``passes`` stochastic predictions with only the dropout layers in train mode.

    In: ``model`` (its dropout layers are switched on; everything else, e.g. batch norm, stays in eval),
    ``predict_probs`` (image (1,1,I,J,K) -> probs (1,C,I,J,K), calling ``model``; None means
    ``softmax(model(image))``), ``image`` (1, 1, I, J, K). ``seed`` makes the passes reproducible
    without touching the global RNG (None: use the global RNG as it is).
    Out: :class:`ConfidenceMap` with confidence = 1 - normalised entropy of the mean probabilities, and
    the mean probabilities (C, I, J, K). Every module's train/eval flag is restored afterwards, also
    on error. Raises ValueError if the model has no dropout layer (the result would be the entropy
    baseline).
    """
    if passes < 1:
        raise ValueError("passes must be >= 1")
    image = _as_batch(image)
    if predict_probs is None:
        def predict_probs(x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(model(x), dim=1)

    dropouts = [m for m in model.modules() if isinstance(m, DROPOUT_TYPES)]
    if not dropouts:
        raise ValueError("model has no dropout layer; MC dropout would equal the entropy baseline")
    modes = {m: m.training for m in model.modules()}
    devices = []
    if image.device.type == "cuda":
        devices = [image.device.index if image.device.index is not None else torch.cuda.current_device()]
    total = None
    try:
        model.eval()
        for m in dropouts:
            m.train()
        with torch.random.fork_rng(devices=devices, enabled=seed is not None), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            for _ in range(passes):
                p = _check_probs(predict_probs(image), image).to(torch.float64)
                total = p if total is None else total + p
    finally:
        for m, training in modes.items():
            m.train(training)
    mean = (total / passes)[0]
    return ConfidenceMap(entropy_confidence(mean), mean.cpu().numpy().astype(np.float32))


def tta_confidence(
    predict_probs: PredictProbs,
    image: torch.Tensor,
    views: int = 8,
    augment: AugmentConfig | None = None,
    max_shift: int = 2,
    seed: int = 0,
) -> np.ndarray:
    """Test-time augmentation with the training's label-preserving augmentations.

    In: ``predict_probs`` (image (1,1,I,J,K) -> probs (1,C,I,J,K)), ``image`` (1, 1, I, J, K), ``views``
    (the first is the image itself), ``augment`` (the training's :class:`~.config.AugmentConfig`; default
    values when None). Every other view: intensity ``x * (1 + a) + b`` with ``a``, ``b`` uniform in
    +-``intensity_scale`` / +-``intensity_shift``, Gaussian noise of ``noise_std``, and a shift by an integer
    in [-``max_shift``, ``max_shift``] voxels along each axis (replicate padding) whose prediction is
    shifted back. ``seed`` fixes the draws.
    Out: float32 confidence (I, J, K) = 1 - normalised entropy of the mean probabilities over the views.
    """
    from .error_model import shift_voxels

    image = _as_batch(image)
    if views < 1:
        raise ValueError("views must be >= 1")
    aug = augment or AugmentConfig()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    total = None
    with torch.no_grad():
        for v in range(views):
            x, offsets = image, (0, 0, 0)
            if v:
                a = float(rng.uniform(-aug.intensity_scale, aug.intensity_scale))
                b = float(rng.uniform(-aug.intensity_shift, aug.intensity_shift))
                offsets = tuple(int(o) for o in rng.integers(-max_shift, max_shift + 1, 3))
                x = image * (1 + a) + b + torch.randn(image.shape, generator=gen).to(image) * aug.noise_std
                x = shift_voxels(x, offsets)
            p = _check_probs(predict_probs(x), image)
            p = shift_voxels(p, tuple(-o for o in offsets)).to(torch.float64)
            total = p if total is None else total + p
    return entropy_confidence((total / views)[0])


def boundary_distance_confidence(label: np.ndarray) -> np.ndarray:
    """Distance to the predicted boundary as a confidence (no model information beyond the label map).

    In: ``label`` (I, J, K) integer predicted classes. Out: float32 ``d / (1 + d)``, with ``d`` the distance
    in voxel steps to the predicted boundary (:func:`.error_model.boundary_distance`, unclipped; 1 on both
    sides of it): 0.5 on the boundary, rising towards 1 away from it; 1 where the volume holds a single class.
    """
    from .error_model import boundary_distance

    d = boundary_distance(np.asarray(label), clip=None).astype(np.float64)
    finite = np.isfinite(d)
    d = np.where(finite, d, 0.0)
    return np.where(finite, d / (1.0 + d), 1.0).astype(np.float32)
