"""The simulated annotator of ``synergypl demo``: how many voxels a person touches to fix a prediction.

It fixes the flagged regions in rank order (copying the ground truth into each region's voxels) and,
if the case has not reached the target Dice yet, goes on with the next-least-confident voxels (heatmap
below 0.6, 0.7, ... 0.99, then all). *Touched* = every voxel it reviewed (corrected or found right);
a *full review* inspects every voxel in the bounding box of the structure (union of the predicted and
the true foreground). Dice is :func:`SynergyPLLib.common.metrics.mean_dice`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..common.metrics import mean_dice
from ..common.regions import region_masks


@dataclass
class ReviewResult:
    case_id: str
    dice_before: float
    dice_after: float
    regions_fixed: int
    regions_total: int
    touched: int
    touched_to_target: int | None
    full_review: int
    curve: list[tuple[int, float]] = field(default_factory=list)
    dice_regions_only: float = 0.0  # after the flagged regions alone
    touched_regions: int = 0  # voxels of the flagged regions fixed


def full_review_voxels(pred: np.ndarray, truth: np.ndarray) -> int:
    fg = (pred > 0) | (truth > 0)
    if not fg.any():
        return 0
    idx = np.nonzero(fg)
    return int(np.prod([i.max() - i.min() + 1 for i in idx]))


WIDEN = (0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01)  # heatmap levels reviewed after the flagged regions


def simulate_annotator(pred: np.ndarray, truth: np.ndarray, heatmap: np.ndarray, regions: list[dict],
                       threshold: float, target: float, num_classes: int) -> tuple[np.ndarray, ReviewResult]:
    """Fix flagged regions in rank order, then (if needed) the next-least-confident voxels, level by
    level, until ``target`` Dice. Returns the corrected label and the counts."""
    fixed = pred.copy()
    before = mean_dice(pred, truth, num_classes)
    seen = np.zeros(pred.shape, bool)
    to_target, used = (0 if before >= target else None), 0
    curve = [(0, before)]

    def review(mask: np.ndarray) -> bool:
        nonlocal to_target
        new = mask & ~seen
        fixed[new] = truth[new]
        seen[new] = True
        d = mean_dice(fixed, truth, num_classes)
        curve.append((int(seen.sum()), d))
        if d >= target:
            to_target = int(seen.sum())
        return to_target is not None

    for mask in region_masks(heatmap, regions, threshold):
        if to_target is not None:
            break
        used += 1
        review(mask)
    regions_dice, regions_touched = mean_dice(fixed, truth, num_classes), int(seen.sum())
    for level in WIDEN:
        if to_target is not None:
            break
        if level > threshold:
            review(heatmap < level)
    res = ReviewResult("", before, mean_dice(fixed, truth, num_classes), used, len(regions), int(seen.sum()),
                       to_target, full_review_voxels(pred, truth), curve, regions_dice, regions_touched)
    return fixed, res
