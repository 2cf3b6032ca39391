"""The heatmap's error model: P(predicted label is wrong) per voxel from the plain prediction and ONE view.

Inputs, on the network grid: the calibrated plain probabilities ``p`` (C, I, J, K) with predicted class
``y = argmax p``, and the probabilities ``q`` of one label-preserving *view* of the same image (one extra
sliding-window pass, so a heatmap costs about twice a plain prediction). Views (:data:`VIEWS`):

- ``intensity``: ``x * (1 + a) + b`` plus seeded Gaussian noise, ``a``, ``b``, noise std = the training
  augmentation's ``intensity_scale``, ``intensity_shift``, ``noise_std`` (the model was trained with them);
- ``shift``: the image moved by ``shift`` voxels along every axis (replicate padding), the prediction moved back;
- ``shift_intensity``: both;
- ``mix``: the published mixed view ``mix_lambda * x + (1 - mix_lambda) * ref`` (a tiled labeled patch).

Features (:data:`FEATURES`, :func:`voxel_features`): normalised entropy of ``p``, top-1 minus top-2 margin,
``p[y]``, ``log(1 - p[y])``, the view's ``q[y]`` and ``log(1 - q[y])`` (consistency), whether
``argmax q != y``, the foreground probability ``1 - p[0]``, whether ``y`` is foreground, and the distance
``d`` in voxel steps to the predicted boundary (:func:`boundary_distance`: 1 on both sides of it, clipped
at ``clip``) as ``d / clip`` and ``d <= 1``. A logistic regression over them (standardised) gives
``P(wrong)``; the heatmap is ``1 - P(wrong)`` (1 = certain).

Fitting (:func:`fit_error_model`) uses labeled validation cases only: every voxel within ``clip`` of the
predicted boundary plus a random ``rest_fraction`` of the others, weighted by ``1 / rest_fraction`` so the
probabilities stay calibrated. The view is chosen by leave-cases-out cross-validation (AUPRC + error
recall at 5 %), then the model is refitted on all cases. :class:`ErrorModel` holds plain python numbers
(``to_dict`` goes into the checkpoint), so prediction needs numpy and torch only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_cdt

from .synergy import top_margin

VIEWS = ("intensity", "shift", "shift_intensity", "mix")
FEATURES = ("entropy", "margin", "p_max", "log_p_other", "view_p", "log_view_other", "disagree",
            "foreground_prob", "inside", "boundary_distance", "on_boundary")
DEFAULT_CLIP = 5.0
# The view pass tiles its windows without overlap: half the windows of the plain pass (overlap 0.25) on a
# large volume. Validation, left_atrium 4-labeled (8 cases, windows matter there): best view AUPRC + recall
# at 5 % 1.115 without overlap vs 1.125 with 0.25; hippocampus cases are about one window (identical).
VIEW_OVERLAP = 0.0
EPS = 1e-4


@dataclass
class ErrorModel:
    """A fitted logistic error model: ``P(wrong) = sigmoid(intercept + sum coef * (f - mean) / scale)``."""

    view: str
    feature_names: list[str]
    coef: list[float]
    intercept: float
    mean: list[float]
    scale: list[float]
    settings: dict = field(default_factory=dict)  # clip, shift, intensity parameters, mix_lambda

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ErrorModel:
        return cls(str(d["view"]), [str(n) for n in d["feature_names"]], [float(c) for c in d["coef"]],
                   float(d["intercept"]), [float(m) for m in d["mean"]], [float(s) for s in d["scale"]],
                   dict(d.get("settings", {})))

    def p_wrong(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """``P(wrong)`` shaped like the features (accumulated one feature at a time: little memory)."""
        # sum_i (f_i - m_i) c_i / s_i + b = sum_i f_i (c_i / s_i) + (b - sum_i m_i c_i / s_i): one in-place
        # multiply-add per feature (a heatmap's cost is mostly these passes over the volume)
        z, offset = None, self.intercept
        for name, c, m, s in zip(self.feature_names, self.coef, self.mean, self.scale, strict=True):
            f, w = feats[name], c / s
            offset -= m * w
            if z is None:
                z = f.float() * w
            else:
                z.add_(f, alpha=w)  # a bool feature adds w where it is true
        return torch.sigmoid_(z.add_(offset))


def default_settings(config) -> dict:
    """View and feature settings from an :class:`~.config.EngineConfig` (training augmentation, mixing)."""
    aug = config.train.augment
    return {"clip": DEFAULT_CLIP, "shift": 2, "intensity_scale": float(aug.intensity_scale),
            "intensity_shift": float(aug.intensity_shift), "noise_std": float(aug.noise_std),
            "mix_lambda": float(config.inference.mix_lambda), "noise_seed": 0, "view_overlap": VIEW_OVERLAP}


# ----------------------------------------------------------------------------- views


def shift_voxels(t: torch.Tensor, offsets) -> torch.Tensor:
    """``t`` (..., I, J, K) moved by integer ``offsets`` (one per spatial axis, > 0: towards higher indices);
    the voxels uncovered at the edges repeat the edge (replicate padding)."""
    offsets = [int(o) for o in offsets]
    if not any(offsets):
        return t
    lead = t.shape[:-3]
    v = t.reshape(1, -1, *t.shape[-3:])
    pads = []
    for o in reversed(offsets):  # F.pad takes the last axis first
        pads += [max(o, 0), max(-o, 0)]
    v = F.pad(v, pads, mode="replicate")
    crop = tuple(slice(max(-o, 0), max(-o, 0) + n) for o, n in zip(offsets, t.shape[-3:], strict=True))
    return v[(slice(None), slice(None)) + crop].reshape(*lead, *t.shape[-3:])


def _shift(t: torch.Tensor, s: int) -> torch.Tensor:
    return shift_voxels(t, (s, s, s))


def view_input(x: torch.Tensor, view: str, settings: dict, refs: list[np.ndarray] | None = None) -> torch.Tensor:
    """The perturbed image (1, I, J, K) of ``view`` for a preprocessed image ``x`` (1, I, J, K)."""
    x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
    if view == "mix":
        from .inference import tile_to

        if not refs:
            raise ValueError("the mix view needs mixing references")
        lam = settings["mix_lambda"]
        return lam * x + (1 - lam) * torch.from_numpy(tile_to(np.asarray(refs[0], np.float32), tuple(x.shape[1:])))
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {VIEWS}")
    out = x
    if view in ("shift", "shift_intensity"):
        out = _shift(out, int(settings["shift"]))
    if view in ("intensity", "shift_intensity"):
        g = torch.Generator().manual_seed(int(settings.get("noise_seed", 0)))
        out = out * (1 + settings["intensity_scale"]) + settings["intensity_shift"]
        out = out + torch.randn(out.shape, generator=g) * settings["noise_std"]
    return out


def view_output(q: torch.Tensor, view: str, settings: dict) -> torch.Tensor:
    """The view's probabilities (C, I, J, K) back on the plain image's voxels (undoes the shift)."""
    if view in ("shift", "shift_intensity"):
        return _shift(q, -int(settings["shift"]))
    return q


def view_probabilities(predictor, x: torch.Tensor, view: str, settings: dict) -> torch.Tensor:
    """One extra sliding-window pass: the view's calibrated probabilities aligned with ``x``'s voxels.
    Windows overlap by ``settings["view_overlap"]`` (models fitted before it existed: the plain pass's)."""
    return view_output(predictor.probabilities(view_input(x, view, settings, predictor.refs),
                                               overlap=settings.get("view_overlap")), view, settings)


# ----------------------------------------------------------------------------- features


def _face_neighbours(ndim: int):
    """Per axis, the index pair (``lo``, ``hi``) that lines every voxel up with its next one along it."""
    for axis in range(ndim):
        lo = [slice(None)] * ndim
        hi = [slice(None)] * ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        yield tuple(lo), tuple(hi)


def boundary_voxels(label: np.ndarray) -> np.ndarray:
    """Voxels (bool, like ``label``) with a face neighbour (6-connectivity) of another class."""
    label = np.asarray(label)
    out = np.zeros(label.shape, dtype=bool)
    for lo, hi in _face_neighbours(label.ndim):
        diff = label[lo] != label[hi]
        out[lo] |= diff
        out[hi] |= diff
    return out


def _dilate6(mask: np.ndarray) -> np.ndarray:
    """``mask`` (bool) grown by one voxel step along each axis (6-connectivity)."""
    out = mask.copy()
    for lo, hi in _face_neighbours(mask.ndim):
        out[lo] |= mask[hi]
        out[hi] |= mask[lo]
    return out


def boundary_distance(label: np.ndarray, clip: float | None = DEFAULT_CLIP) -> np.ndarray:
    """Per voxel, the distance in voxels to the predicted boundary between classes (float32).

    ``label`` (I, J, K) integer. ``1 +`` the city-block distance (voxel steps along the axes, metric
    taxicab) to the nearest :func:`boundary_voxels` voxel: 1 on both sides of a boundary, 2 one step further
    in. With ``clip`` the distances are capped at ``clip``: the boundary is grown one 6-connected step at a
    time (each step is exactly one more taxicab unit), ``ceil(clip - 1)`` steps, which on a 256 x 256 x 128
    volume is about 3x faster than a distance transform. Without ``clip``,
    ``scipy.ndimage.distance_transform_cdt`` over the whole volume. A volume of one class is ``clip``
    everywhere (``inf`` without clip).
    """
    label = np.asarray(label)
    edge = boundary_voxels(label)
    if not edge.any():
        return np.full(label.shape, np.inf if clip is None else clip, dtype=np.float32)
    if clip is None:
        return 1.0 + distance_transform_cdt(~edge, metric="taxicab").astype(np.float32)
    # k(v) = steps to reach v (n when more than n - 1); d = min(1 + k, clip) = min(1 + n - #levels holding v, clip)
    n = max(0, math.ceil(clip - 1))
    level, held = edge, np.zeros(label.shape, dtype=np.uint8)
    for i in range(n):
        held += level
        if i + 1 < n:
            level = _dilate6(level)
    out = (1 + n) - held.astype(np.float32)
    return np.minimum(out, np.float32(clip), out=out)


def voxel_features(probs: torch.Tensor, view_probs: torch.Tensor, clip: float = DEFAULT_CLIP
                   ) -> dict[str, torch.Tensor]:
    """:data:`FEATURES` (each (I, J, K): float32, the 0/1 ones bool) from plain ``probs`` and one view's
    ``view_probs`` (C, I, J, K)."""
    p, q = probs.float(), view_probs.float()
    c = p.shape[0]
    p_max, y = p.max(0)
    q_y = q.gather(0, y[None])[0]
    d = torch.from_numpy(boundary_distance(y.numpy(), clip))
    # in-place chains below: each temporary volume costs about as much as the arithmetic
    return {
        "entropy": torch.special.entr(p).sum(0).div_(math.log(c)),
        "margin": top_margin(p, 0),
        "p_max": p_max,
        "log_p_other": p_max.clamp(max=1.0).neg_().add_(EPS).log1p_(),
        "view_p": q_y,
        "log_view_other": q_y.clamp(max=1.0).neg_().add_(EPS).log1p_(),
        "disagree": q_y < q.amax(0),  # argmax q != y (up to exact ties)
        "foreground_prob": torch.rsub(p[0], 1.0),
        "inside": y > 0,
        "boundary_distance": d / clip,
        "on_boundary": d <= 1.0,
    }


def error_heatmap(model: ErrorModel, probs: torch.Tensor, view_probs: torch.Tensor) -> torch.Tensor:
    """Confidence (I, J, K) in [0, 1]: ``1 - P(wrong)`` of ``model`` (1 = certain)."""
    return confidence_from_features(model, voxel_features(probs, view_probs, model.settings.get("clip", DEFAULT_CLIP)))


def confidence_from_features(model: ErrorModel, feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`error_heatmap` from the :func:`voxel_features` already computed."""
    return (1 - model.p_wrong(feats)).clamp_(0, 1)


# ----------------------------------------------------------------------------- fitting


MAX_EVAL_VOXELS = 150_000  # per case: a uniform sample of larger cases is scored in cross-validation
MAX_BAND_VOXELS = 50_000  # per case: a uniform sample of a larger boundary band is fitted on


@dataclass
class CaseFeatures:
    """One validation case: voxels to fit on (``fit_x`` (N, F), ``fit_wrong``, ``fit_weight``) and voxels to
    score on (``eval_x``, ``eval_wrong``: every voxel, or a uniform sample of :data:`MAX_EVAL_VOXELS`)."""

    fit_x: np.ndarray
    fit_wrong: np.ndarray
    fit_weight: np.ndarray
    eval_x: np.ndarray
    eval_wrong: np.ndarray


def _sample(mask: np.ndarray, cap: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Indices of ``mask``, at most ``cap`` of them drawn uniformly, and the share kept."""
    idx = np.flatnonzero(mask)
    if len(idx) <= cap:
        return idx, 1.0
    return np.sort(rng.choice(idx, cap, replace=False)), cap / len(idx)


def case_features(probs: torch.Tensor, view_probs: torch.Tensor, label: np.ndarray, clip: float,
                  rest_fraction: float = 0.1, seed: int = 0) -> CaseFeatures:
    """The band within ``clip`` of the predicted boundary (weight 1, or 1 / share when capped) plus
    ``rest_fraction`` of the other voxels (weight ``1 / rest_fraction``): calibrated P(wrong) when fitted."""
    rng = np.random.default_rng(seed)
    feats = voxel_features(probs, view_probs, clip)
    x = np.stack([feats[n].numpy().reshape(-1) for n in FEATURES], axis=1).astype(np.float32)
    wrong = (probs.max(0).indices.numpy() != np.asarray(label)).reshape(-1)
    band = feats["boundary_distance"].numpy().reshape(-1) < 1.0
    band_idx, band_share = _sample(band, MAX_BAND_VOXELS, rng)
    rest_idx = np.flatnonzero(~band & (rng.random(band.shape) < rest_fraction))
    fit = np.concatenate([band_idx, rest_idx])
    weight = np.concatenate([np.full(len(band_idx), 1.0 / band_share), np.full(len(rest_idx), 1.0 / rest_fraction)])
    ev, _ = _sample(np.ones_like(band), MAX_EVAL_VOXELS, rng)
    return CaseFeatures(x[fit], wrong[fit], weight, x[ev], wrong[ev])


def fit_logistic(cases: list[CaseFeatures], view: str, settings: dict) -> ErrorModel:
    """A weighted logistic regression (sklearn, class_weight None) on the cases' fitting voxels."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([c.fit_x for c in cases])
    y = np.concatenate([c.fit_wrong for c in cases])
    w = np.concatenate([c.fit_weight for c in cases])
    if y.all() or not y.any():
        raise ValueError("the validation voxels have no errors (or only errors): nothing to fit")
    mean = np.average(x, axis=0, weights=w)
    scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w))
    scale = np.where(scale > 1e-6, scale, 1.0)
    lr = LogisticRegression(C=1.0, max_iter=1000)
    lr.fit((x - mean) / scale, y, sample_weight=w)
    return ErrorModel(view, list(FEATURES), [float(v) for v in lr.coef_[0]], float(lr.intercept_[0]),
                      [float(v) for v in mean], [float(v) for v in scale], dict(settings))


def _p_wrong_matrix(model: ErrorModel, x: np.ndarray) -> np.ndarray:
    z = ((x - np.asarray(model.mean)) / np.asarray(model.scale)) @ np.asarray(model.coef) + model.intercept
    return 1.0 / (1.0 + np.exp(-z))


def collect_features(predictor, cases, views=VIEWS, settings: dict | None = None) -> dict[str, list[CaseFeatures]]:
    """Per view, the :class:`CaseFeatures` of each labeled preprocessed case (image (1,I,J,K), label)."""
    settings = settings or default_settings(predictor.config)
    views = [v for v in views if v != "mix" or predictor.refs]
    out: dict[str, list[CaseFeatures]] = {v: [] for v in views}
    for i, case in enumerate(cases):
        x = torch.from_numpy(case.image)
        probs = predictor.probabilities(x)
        for v in views:
            out[v].append(case_features(probs, view_probabilities(predictor, x, v, settings), case.label,
                                        settings["clip"], seed=i))
    return out


def _score(acc) -> dict[str, float]:
    return acc.scores()


def cross_validate(per_view: dict[str, list[CaseFeatures]], settings: dict, folds: int = 5, seed: int = 0
                   ) -> dict[str, dict[str, float]]:
    """Leave-cases-out scores (AUROC, AUPRC, recall at 5 %) of each view's error model, plus ``entropy``."""
    from .uncertainty import ErrorDetectionAccumulator

    n = len(next(iter(per_view.values())))
    k = max(2, min(folds, n))
    fold_of = np.random.default_rng(seed).permutation(n) % k
    scores = {}
    for view, cases in per_view.items():
        acc = ErrorDetectionAccumulator()
        for f in range(k):
            train = [c for c, g in zip(cases, fold_of, strict=True) if g != f]
            model = fit_logistic(train, view, settings)
            for c, g in zip(cases, fold_of, strict=True):
                if g == f:
                    acc.add(1 - _p_wrong_matrix(model, c.eval_x), c.eval_wrong)
        scores[view] = _score(acc)
    acc = ErrorDetectionAccumulator()
    first = next(iter(per_view.values()))
    for c in first:
        acc.add(1 - c.eval_x[:, FEATURES.index("entropy")], c.eval_wrong)
    scores["entropy"] = _score(acc)
    return scores


def _merit(s: dict[str, float]) -> float:
    v = s["auprc"] + s["error_recall_at_5pct"]
    return v if v == v else -1.0


def fit_error_model(predictor, cases, views=VIEWS, folds: int = 5, seed: int = 0) -> tuple[ErrorModel, dict]:
    """Choose the view by leave-cases-out AUPRC + recall at 5 % on ``cases`` and fit on all of them.

    ``cases``: labeled preprocessed validation cases (``image`` (1, I, J, K), ``label`` (I, J, K)) on the
    network grid. Returns the model and a report ``{"view", "cv": {view or "entropy": scores}}``.
    Raises ValueError when the cases hold fewer than 2 cases or no error.
    """
    cases = list(cases)
    if len(cases) < 2:
        raise ValueError("fitting the error model needs at least 2 labeled validation cases")
    settings = default_settings(predictor.config)
    per_view = collect_features(predictor, cases, views, settings)
    cv = cross_validate(per_view, settings, folds, seed)
    best = max(per_view, key=lambda v: _merit(cv[v]))
    model = fit_logistic(per_view[best], best, settings)
    return model, {"view": best, "cv": cv, "cases": len(cases), "folds": min(folds, len(cases)),
                   "criterion": "auprc + error_recall_at_5pct, leave-cases-out"}


def fit_error_model_for_checkpoint(model_path, validation_cases, views=VIEWS) -> dict:
    """Fit the error model of an existing ``model.pt`` on ``validation_cases`` and rewrite it atomically.

    ``validation_cases``: :class:`~.data.LoadedCase` preprocessed with the checkpoint's own preprocessing.
    Returns the report stored under ``metrics["heatmap_validation"]``.
    """
    from .inference import Predictor
    from .model import atomic_torch_save, load_checkpoint

    ckpt = load_checkpoint(model_path)
    predictor = Predictor.from_checkpoint(model_path, device="cpu")
    model, report = fit_error_model(predictor, validation_cases, views)
    ckpt["error_model"] = model.to_dict()
    ckpt.setdefault("metrics", {})["heatmap_validation"] = report
    atomic_torch_save(ckpt, model_path)
    return report
