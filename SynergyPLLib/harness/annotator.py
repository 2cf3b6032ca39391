"""The simulated annotator of ``synergypl demo``, on the accounting of :mod:`.review` (the same as
``synergypl bench-effort`` and ``bench-loop``): the flagged regions in rank order, then the rest of the
review box least confident first, until the target Dice.

*Touched* = every voxel it reviewed (corrected or found right); a *full review* inspects every voxel of
the review box (bounding box of the union of predicted and true foreground, dilated by 2 voxels). A case
that has not reached the target within a full review's worth of voxels is fully reviewed instead
(touched = the box, label = the truth, ``touched_to_target`` None).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .review import box_voxels, review_box, review_case


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
    curve: list[tuple[int, float]] = field(default_factory=list)  # (voxels touched, Dice) to the stop
    dice_regions_only: float = 0.0  # after the flagged regions it reviewed
    touched_regions: int = 0  # voxels of those flagged regions


def full_review_voxels(pred: np.ndarray, truth: np.ndarray) -> int:
    """Voxels of the review box (what a full review inspects)."""
    return box_voxels(review_box(pred, truth))


def simulate_annotator(pred: np.ndarray, truth: np.ndarray, heatmap: np.ndarray, regions: list[dict],
                       threshold: float, target: float, num_classes: int) -> tuple[np.ndarray, ReviewResult]:
    """The ``synergy`` guide of :func:`.review.review_case` on one case. Returns the corrected label
    and the counts."""
    fixed, r = review_case(pred, truth, "synergy", heatmap, regions, threshold, target, num_classes)
    res = ReviewResult("", r.dice_before, r.dice_after, r.regions_visited, len(regions), r.reviewed,
                       r.reviewed if r.reached else None, r.box_voxels, r.curve[:r.stop + 1], r.dice_regions,
                       r.region_voxels)
    return fixed, res
