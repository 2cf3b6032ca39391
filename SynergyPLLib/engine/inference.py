"""Prediction with the confidence heatmap, the region map and the flagged regions.

The heatmap estimates, per voxel, how likely the predicted label is right (1 = certain, 0 = surely
wrong). With an error model in the checkpoint (``ckpt["error_model"]``, fitted on the validation split,
see :mod:`.error_model`), on the network grid, with ``p`` the calibrated plain probabilities and ``q``
those of ONE label-preserving view of the image (the model's chosen ``view``: intensity change, a shift
of a few voxels undone afterwards, or a mix with a labeled patch)::

    heatmap = 1 - sigmoid(b + sum_i w_i * (f_i - m_i) / s_i)   # 1 - P(label wrong)

over the features ``f_i`` of :data:`.error_model.FEATURES` (normalised entropy, margin, p[y], q[y], view
disagreement, foreground probability, distance to the predicted boundary, ...), then resampled to the
image grid. Cost: the plain pass plus one view pass (whose windows do not overlap: about half the plain
pass's windows on a large volume).

A checkpoint without an error model (before it existed) keeps the former formula, with ``y = argmax p``
and K mixed views ``p_k`` (``lambda * x + (1 - lambda) * ref``, ``lambda`` from the checkpoint)::

    heatmap = (1 - H(p) / log C) * sqrt(mean_k p_k[y])

and says so in ``Prediction.model_info["heatmap"]``.

The region map uses the training rule (consistent across the views? confident in all?) over the view(s)
the heatmap used (with an error model: on the network grid, from the heatmap's own features). Flagged
regions are 26-connected components of ``heatmap < threshold`` cut into compact pieces, ranked by
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
from .error_model import (
    DEFAULT_CLIP,
    ErrorModel,
    confidence_from_features,
    view_probabilities,
    voxel_features,
)
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
    """The former heatmap (checkpoints without an error model): (I, J, K) in [0, 1] from plain probs (C, ...)
    and mixed-view probs [(C, ...)]: ``(1 - H(p) / log C) * sqrt(mean_k p_k[argmax p])``."""
    c = probs.shape[0]
    y = class_map(probs)[None]
    confidence = 1 - torch.special.entr(probs).sum(0) / math.log(c)
    consistency = torch.stack([v.gather(0, y)[0] for v in view_probs]).mean(0)
    return (confidence * consistency.sqrt()).clamp(0, 1)


def region_codes(probs: torch.Tensor, view_probs: list[torch.Tensor], mode: str, bar: float,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
    """Region map (I, J, K) uint8: 0 consistent+confident ... 3 inconsistent+uncertain (see synergy.py).
    ``labels``: ``class_map(probs)`` when the caller has it already."""
    y = class_map(probs) if labels is None else labels
    consistent = torch.ones_like(y, dtype=torch.bool)
    confident = confidence_score(probs[None], mode)[0, 0] >= bar
    for v in view_probs:
        consistent &= class_map(v) == y
        confident &= confidence_score(v[None], mode)[0, 0] >= bar
    return codes_of(~consistent, ~confident)


def codes_of(inconsistent: torch.Tensor, uncertain: torch.Tensor) -> torch.Tensor:
    """Region codes (uint8) from the two bool maps: ``2 * inconsistent + uncertain``."""
    return inconsistent.to(torch.uint8) * 2 + uncertain.to(torch.uint8)


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
    """A trained model ready to predict: network, preprocessing, temperature, mixing references and the
    heatmap's error model (None: the former heatmap formula)."""

    def __init__(self, net: torch.nn.Module, config: EngineConfig, temperature: float = 1.0,
                 mix_references: list[np.ndarray] | None = None, device: str | None = None,
                 info: dict | None = None, error_model: ErrorModel | dict | None = None):
        self.config = config
        self.classes = list(config.classes)
        self.temperature = float(temperature)
        self.device = device or default_device()
        self.net = net.to(self.device).eval()
        self.pre = Preprocessor(config.preprocess)
        self.refs = [np.asarray(r, dtype=np.float32) for r in (mix_references or [])]
        inf = config.inference
        self.window = WindowPredictor(self.net, config.train.patch_size, inf.overlap, inf.sw_batch_size, self.device)
        self._windows = {float(inf.overlap): self.window}  # by overlap (the heatmap's view pass may use its own)
        self.info = info or {}
        self.error_model = ErrorModel.from_dict(error_model) if isinstance(error_model, dict) else error_model
        self.info["heatmap"] = (f"error model: 1 - P(wrong), view {self.error_model.view!r}" if self.error_model
                                else "former formula (1 - normalised entropy) * sqrt(mixed-view consistency): "
                                     "this checkpoint has no error model")

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
        return cls(net, cfg, ckpt.get("temperature", 1.0), ckpt.get("mix_references"), device, info,
                   ckpt.get("error_model"))

    def probabilities(self, x: torch.Tensor, overlap: float | None = None) -> torch.Tensor:
        """Calibrated class probabilities (C, I', J', K') for a preprocessed image (1, I', J', K'), over
        windows overlapping by ``overlap`` (None: the project's ``inference.overlap``)."""
        window = self.window
        if overlap is not None:
            key = float(overlap)
            if key not in self._windows:
                inf = self.config.inference
                self._windows[key] = WindowPredictor(self.net, self.config.train.patch_size, key,
                                                     inf.sw_batch_size, self.device)
            window = self._windows[key]
        return window.probabilities(x[None].as_tensor() if hasattr(x, "as_tensor") else x[None],
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

    def heatmap_and_codes(self, x: torch.Tensor, net_probs: torch.Tensor, probs: torch.Tensor,
                          labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap (I, J, K) float and region map (I, J, K) uint8 on the image grid, for a preprocessed
        image ``x`` with its plain probabilities on the network grid and the image grid (``labels``: the
        image grid's class map).

        With an error model both come from the network grid's features (one view pass, computed once);
        the region map's two bits (inconsistent, uncertain) travel back to the image grid with the heatmap
        in one inversion and are thresholded at 0.5 (exact where preprocessing only reorders voxels).
        """
        tc = self.config.train
        bar = confidence_bar(tc.confidence_mode, tc.margin_threshold, tc.entropy_threshold)
        em = self.error_model
        if em is None:
            views = [self.pre.invert(v, x) for v in self.mixed_views(x)]
            return synergy_heatmap(probs, views), region_codes(probs, views, tc.confidence_mode, bar, labels)
        q = view_probabilities(self, x, em.view, em.settings)
        feats = voxel_features(net_probs, q, em.settings.get("clip", DEFAULT_CLIP))
        heat = confidence_from_features(em, feats)
        if tc.confidence_mode == "margin":
            confident = feats["margin"] >= bar  # the plain margin, already a feature
        else:
            confident = confidence_score(net_probs[None], tc.confidence_mode)[0, 0] >= bar
        confident &= confidence_score(q[None], tc.confidence_mode)[0, 0] >= bar
        stacked = torch.stack([heat, feats["disagree"].float(), (~confident).float()])
        heat, inconsistent, uncertain = self.pre.invert(stacked, x)
        return heat.clamp(0, 1), codes_of(inconsistent >= 0.5, uncertain >= 0.5)

    def predict(self, image: Volume, *, heatmap: bool = True, flag_threshold: float | None = None) -> Prediction:
        """Label map (+ heatmap, region map and flagged regions) in ``image``'s geometry."""
        start = time.perf_counter()
        x = self.pre.image(image)
        net_probs = self.probabilities(x)
        probs = self.pre.invert(net_probs, x)
        y = class_map(probs)
        label = image.with_array(y.numpy().astype(np.uint8))
        pred = Prediction(label=label, probabilities=probs.numpy(), model_info=dict(self.info))
        if heatmap:
            heat, codes = self.heatmap_and_codes(x, net_probs, probs, y)
            heat = heat.numpy().astype(np.float32)
            pred.heatmap = image.with_array(heat)
            pred.region_map = image.with_array(codes.numpy())
            params = region_params(self.config, flag_threshold)
            pred.regions = flag_regions(pred.heatmap, label, self.classes, *astuple(params))
            pred.region_params = params
        pred.seconds = time.perf_counter() - start
        return pred
