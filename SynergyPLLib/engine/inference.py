"""Prediction with the synergy confidence heatmap, the region map and the flagged regions.

The heatmap combines the two halves of the synergy evaluation: *confident* (the calibrated plain
prediction ``p``) and *consistent* (K *mixed views* ``p_k``: the case blended with a labeled reference
patch as in training, ``lambda * x + (1 - lambda) * ref``). Per voxel, with ``y = argmax p``::

    confidence  = 1 - H(p) / log C          # calibrated plain confidence
    consistency = mean_k p_k[y]             # how much the mixed views still back y
    heatmap     = confidence * sqrt(consistency)   # 1 = certain, 0 = not

``lambda`` is chosen per model on the validation split (:func:`choose_mix_lambda`), never on test cases.

The region map uses the training rule (consistent across views? confident in all?). Flagged regions
are 26-connected components of ``heatmap < threshold`` cut into compact pieces, ranked by
``sum(1 - heatmap)``: the expected number of wrong voxels fixing the region would correct
(:mod:`SynergyPLLib.common.regions`).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import astuple, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..common.regions import Region, RegionParams
from ..common.regions import flag_regions as common_flag_regions
from .config import EngineConfig, check_axcodes
from .data import Preprocessor
from .io import Volume
from .model import default_device, load_checkpoint, network_from_checkpoint
from .sliding_window import WindowPredictor
from .synergy import confidence_bar, confidence_score

FlaggedRegion = Region  # the engine's name for the one definition in SynergyPLLib.common.regions


@dataclass
class Prediction:
    label: Volume
    probabilities: np.ndarray  # (C, I, J, K) float32, calibrated
    heatmap: Volume | None = None
    region_map: Volume | None = None
    regions: list[FlaggedRegion] = field(default_factory=list)
    region_params: RegionParams | None = None  # what the regions were flagged with
    seconds: float = 0.0
    model_info: dict = field(default_factory=dict)


def tile_to(ref: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Repeat a (1, *patch) reference patch (mirrored, to avoid seams) until it covers (1, *shape)."""
    pads = [(0, 0)] + [(0, max(0, s - r)) for s, r in zip(shape, ref.shape[1:], strict=True)]
    out = np.pad(ref, pads, mode="symmetric") if any(p[1] for p in pads) else ref
    return out[(slice(None),) + tuple(slice(0, s) for s in shape)]


def class_map(probs: torch.Tensor) -> torch.Tensor:
    """argmax over classes (C, ...) -> (...); ``max(0).indices`` is ~10x faster than ``argmax(0)`` on CPU."""
    return probs.max(0).indices


def synergy_heatmap(probs: torch.Tensor, view_probs: list[torch.Tensor]) -> torch.Tensor:
    """Heatmap (I, J, K) in [0, 1] from plain probs (C, ...) and mixed-view probs [(C, ...)]."""
    c = probs.shape[0]
    y = class_map(probs)[None]
    confidence = 1 - torch.special.entr(probs).sum(0) / math.log(c)
    consistency = torch.stack([v.gather(0, y)[0] for v in view_probs]).mean(0)
    return (confidence * consistency.sqrt()).clamp(0, 1)


def choose_mix_lambda(predictor: Predictor, cases, candidates=(0.75, 0.85, 0.95)) -> tuple[float, dict]:
    """The mixing weight whose heatmap best finds the wrong voxels (AUROC) on labeled validation cases.

    ``cases``: preprocessed cases with ``image`` (1, I, J, K) and ``label`` (I, J, K) on the network grid.
    Returns (best lambda, {lambda: auroc}).
    """
    from .uncertainty import ErrorDetectionAccumulator

    accs = {lam: ErrorDetectionAccumulator() for lam in candidates}
    saved = predictor.config.inference.mix_lambda
    try:
        for case in cases:
            x = torch.from_numpy(case.image)
            probs = predictor.probabilities(x)
            wrong = class_map(probs).numpy() != case.label
            for lam in candidates:
                predictor.config.inference.mix_lambda = lam
                accs[lam].add(synergy_heatmap(probs, predictor.mixed_views(x)).numpy(), wrong)
    finally:
        predictor.config.inference.mix_lambda = saved
    scores = {lam: accs[lam].scores()["auroc"] for lam in candidates}
    valid = {k: v for k, v in scores.items() if v == v}  # NaN when a model makes no error
    return (max(valid, key=valid.get) if valid else saved), scores


def region_codes(probs: torch.Tensor, view_probs: list[torch.Tensor], mode: str, bar: float) -> torch.Tensor:
    """Region map (I, J, K) uint8: 0 consistent+confident ... 3 inconsistent+uncertain (see synergy.py)."""
    y = class_map(probs)
    consistent = torch.ones_like(y, dtype=torch.bool)
    confident = confidence_score(probs[None], mode)[0, 0] >= bar
    for v in view_probs:
        consistent &= class_map(v) == y
        confident &= confidence_score(v[None], mode)[0, 0] >= bar
    return ((~consistent).to(torch.uint8) * 2 + (~confident).to(torch.uint8))


def flag_regions(heatmap: Volume, label: Volume, classes: list[str], threshold: float = 0.5,
                 min_voxels: int = 5, max_regions: int = 50, max_region_ml: float = RegionParams.max_region_ml,
                 max_region_mm: float = RegionParams.max_region_mm) -> list[FlaggedRegion]:
    """:func:`SynergyPLLib.common.regions.flag_regions` on volumes; geometry (voxel size) from ``heatmap``."""
    return common_flag_regions(heatmap.array, label.array, heatmap.ijk_to_ras, classes,
                               RegionParams(float(threshold), int(min_voxels), int(max_regions),
                                            float(max_region_ml), float(max_region_mm)))


def region_params(config: EngineConfig, threshold: float | None = None) -> RegionParams:
    """The project's region parameters (``inference``), with ``threshold`` instead of its own if given."""
    inf = config.inference
    return RegionParams(float(inf.flag_threshold if threshold is None else threshold),
                        int(inf.min_region_voxels), int(inf.max_regions), float(inf.max_region_ml),
                        float(inf.max_region_mm))


class OrientationWarning(UserWarning):
    """A model whose predictions depend on how the input's voxels are stored."""


def legacy_orientation_message(path: str | Path) -> str:
    """What a user is told about a checkpoint saved without ``preprocess.orientation``."""
    return (f"{path}: this model was saved without a preprocessing orientation (SynergyPL before "
            "orientation-independent prediction): it sees every image in the file's own voxel order, so a volume "
            "stored differently from its training images (e.g. a DICOM series, LPS, for a model trained on RAS "
            "NIfTI files) gets a mirrored, wrong label. Retrain it, or load it with legacy_orientation set to the "
            "axis codes its training images shared (e.g. 'RAS' for the hippocampus NIfTIs). See docs/orientation.md.")


class Predictor:
    """A trained model ready to predict: network, preprocessing, temperature and mixing references."""

    def __init__(self, net: torch.nn.Module, config: EngineConfig, temperature: float = 1.0,
                 mix_references: list[np.ndarray] | None = None, device: str | None = None,
                 info: dict | None = None):
        self.config = config
        self.classes = list(config.classes)
        self.temperature = float(temperature)
        self.device = device or default_device()
        self.net = net.to(self.device).eval()
        self.pre = Preprocessor(config.preprocess)
        self.refs = [np.asarray(r, dtype=np.float32) for r in (mix_references or [])]
        inf = config.inference
        self.window = WindowPredictor(self.net, config.train.patch_size, inf.overlap, inf.sw_batch_size, self.device)
        self.info = info or {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, *,
                        legacy_orientation: str | None = None) -> Predictor:
        """Load ``model.pt``.

        A checkpoint saved without ``preprocess.orientation`` (None) was trained on its files' voxel order.
        ``legacy_orientation``, the axis codes its training images shared, makes it orientation-independent
        without changing what it saw: an input stored that way is left as it is (the same label as before),
        any other is reordered to it first. Without it the model keeps the file's voxel order and an
        :class:`OrientationWarning` (also in ``info["warnings"]``) says so.
        """
        ckpt = load_checkpoint(path)
        net, cfg = network_from_checkpoint(ckpt)
        info = {"checkpoint": str(path), "iteration": ckpt.get("iteration"), **ckpt.get("metrics", {})}
        if cfg.preprocess.orientation is None:
            if legacy_orientation is not None:
                cfg.preprocess.orientation = check_axcodes(legacy_orientation)
                info["orientation_source"] = "legacy checkpoint: the voxel order its training images shared"
            else:
                msg = legacy_orientation_message(path)
                warnings.warn(msg, OrientationWarning, stacklevel=2)
                info["warnings"] = [msg]
        info["orientation"] = cfg.preprocess.orientation
        return cls(net, cfg, ckpt.get("temperature", 1.0), ckpt.get("mix_references"), device, info)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities (C, I', J', K') for a preprocessed image (1, I', J', K')."""
        return self.window.probabilities(x[None].as_tensor() if hasattr(x, "as_tensor") else x[None],
                                         self.temperature)[0].cpu()

    def mixed_views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Probabilities of the K mixed views of a preprocessed image (1, I', J', K')."""
        inf = self.config.inference
        if not self.refs:
            raise ValueError("this checkpoint has no mixing references; it cannot compute a synergy heatmap")
        base = x.as_tensor() if hasattr(x, "as_tensor") else x
        views = []
        for k in range(max(1, inf.mix_views)):
            ref = torch.from_numpy(tile_to(self.refs[k % len(self.refs)], tuple(base.shape[1:])))
            mixed = inf.mix_lambda * base + (1 - inf.mix_lambda) * ref
            views.append(self.probabilities(mixed))
        return views

    def predict(self, image: Volume, *, heatmap: bool = True, flag_threshold: float | None = None) -> Prediction:
        """Label map (+ heatmap, region map and flagged regions) in ``image``'s geometry."""
        start = time.perf_counter()
        x = self.pre.image(image)
        probs = self.pre.invert(self.probabilities(x), x)
        label = image.with_array(class_map(probs).numpy().astype(np.uint8))
        pred = Prediction(label=label, probabilities=probs.numpy(), model_info=dict(self.info))
        if heatmap:
            tc = self.config.train
            views = [self.pre.invert(v, x) for v in self.mixed_views(x)]
            heat = synergy_heatmap(probs, views).numpy().astype(np.float32)
            codes = region_codes(probs, views, tc.confidence_mode,
                                 confidence_bar(tc.confidence_mode, tc.margin_threshold, tc.entropy_threshold))
            pred.heatmap = image.with_array(heat)
            pred.region_map = image.with_array(codes.numpy())
            params = region_params(self.config, flag_threshold)
            pred.regions = flag_regions(pred.heatmap, label, self.classes, *astuple(params))
            pred.region_params = params
        pred.seconds = time.perf_counter() - start
        return pred
