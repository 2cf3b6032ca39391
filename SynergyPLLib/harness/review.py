"""The one review accounting of the harnesses: a simulated annotator follows a *guide* and copies the truth
into the voxels it reviews, until the case reaches a target Dice (BENCHMARK.md, "Review effort").

- *Review box* (:func:`review_box`): the bounding box of the union of predicted and true foreground,
  dilated by :data:`MARGIN` voxels and clipped to the volume. Every wrong voxel lies inside it.
- A guide is a list of *steps* (flat voxel indices, reviewed as a whole): flagged regions in rank order
  (:func:`region_steps`), then the rest of the box least confident first, :data:`SWEEP_STEP` of the box
  at a time (:func:`sweep_steps`); or region-sized blocks of the box in a seeded random order
  (:func:`block_steps`); or the whole box at once (:func:`full_steps`).
- Every reviewed voxel counts, also a region's voxels outside the box (they are reviewed, just never
  wrong); a voxel reviewed twice counts once. The sweep is restricted to the box, so every guide ends
  with the box reviewed and Dice 1.
- Effort = reviewed voxels / box voxels when the target is reached (0 when the prediction already reaches
  it: the annotator's stopping rule is an oracle, the same for every guide). A case that has not reached
  the target within a full review's worth of voxels counts 1.0 (it would as well have been fully
  reviewed) and its corrected label is the truth. ``full_review`` always costs 1.0.
- Dice is :func:`SynergyPLLib.common.metrics.mean_dice` (mean over the foreground classes); the Dice
  after every step comes from running counts per class, so a step costs no full-volume pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..common.metrics import mean_dice
from ..common.regions import region_masks

MARGIN = 2  # voxels the review box is dilated by
SWEEP_STEP = 0.01  # share of the review box reviewed per step of the heatmap sweep
DEFAULT_BLOCK_VOXELS = 27  # random blocks when a case has no flagged region to size them by


def review_box(pred: np.ndarray, truth: np.ndarray, margin: int = MARGIN) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``(pred > 0) | (truth > 0)`` dilated by ``margin`` (clipped to the
    volume); None when neither has foreground."""
    fg = (np.asarray(pred) > 0) | (np.asarray(truth) > 0)
    if not fg.any():
        return None
    idx = np.nonzero(fg)
    return tuple(slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + margin + 1))
                 for i, n in zip(idx, fg.shape, strict=True))


def box_voxels(box: tuple[slice, ...] | None) -> int:
    """Voxels in a box of :func:`review_box` (0 for None)."""
    return 0 if box is None else int(np.prod([s.stop - s.start for s in box]))


def box_indices(shape: tuple[int, ...], box: tuple[slice, ...] | None) -> np.ndarray:
    """Flat (C-order) indices of the box's voxels, ascending."""
    if box is None:
        return np.zeros(0, np.int64)
    grid = np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij")
    return np.ravel_multi_index([g.ravel() for g in grid], shape).astype(np.int64)


# ---- guides: lists of steps (flat voxel indices) -----------------------------------------------
def region_steps(confidence: np.ndarray, regions: list, threshold: float) -> list[np.ndarray]:
    """One step per flagged region (rank order): its voxels, found by :func:`~..common.regions.region_masks`."""
    return [np.flatnonzero(m) for m in region_masks(confidence, regions, threshold)]


def sweep_steps(confidence: np.ndarray, box: tuple[slice, ...] | None, done: list[np.ndarray],
                step: float = SWEEP_STEP) -> list[np.ndarray]:
    """The box voxels not in ``done``, least confident first (ties in voxel order), in chunks of
    ``step`` of the box."""
    idx = box_indices(np.shape(confidence), box)
    if done:
        idx = idx[~np.isin(idx, np.concatenate(done))]
    order = idx[np.argsort(np.asarray(confidence, dtype=np.float64).ravel()[idx], kind="stable")]
    size = max(1, int(np.ceil(step * box_voxels(box))))
    return [order[i:i + size] for i in range(0, len(order), size)]


def block_steps(shape: tuple[int, ...], box: tuple[slice, ...] | None, block_voxels: int,
                rng: np.random.Generator) -> list[np.ndarray]:
    """The box cut into cubes of about ``block_voxels`` voxels (clipped at the box's far faces), in the
    order of ``rng``'s permutation."""
    if box is None:
        return []
    side = max(1, int(round(float(block_voxels) ** (1.0 / 3.0))))
    starts = [range(s.start, s.stop, side) for s in box]
    blocks = []
    for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(shape)):
        sub = tuple(slice(int(c), min(int(c) + side, s.stop)) for c, s in zip(corner, box, strict=True))
        blocks.append(box_indices(shape, sub))
    return [blocks[i] for i in rng.permutation(len(blocks))]


def full_steps(shape: tuple[int, ...], box: tuple[slice, ...] | None) -> list[np.ndarray]:
    """The whole box as one step."""
    return [box_indices(shape, box)] if box is not None else []


def block_size(regions: list) -> int:
    """Median voxel count of the flagged regions (``Region`` or dicts), else :data:`DEFAULT_BLOCK_VOXELS`."""
    counts = [r["voxel_count"] if isinstance(r, dict) else r.voxel_count for r in regions]
    return int(np.median(counts)) if counts else DEFAULT_BLOCK_VOXELS


# ---- the simulation ------------------------------------------------------------------------------
@dataclass
class Review:
    """One case reviewed along one guide. ``curve``: (reviewed voxels, Dice) after each step, the whole
    way (not only to the target); ``stop``: steps taken (the target reached, or the budget spent)."""

    case_id: str
    guide: str
    box_voxels: int
    dice_before: float
    dice_after: float
    effort: float
    reached: bool
    reviewed: int  # voxels reviewed to the stop (the box when not reached: then it was fully reviewed)
    regions_visited: int
    regions_total: int
    edited: int  # voxels whose label changed
    stop: int
    region_voxels: int = 0  # voxels of the region steps taken
    dice_regions: float = 0.0  # Dice after the region steps taken
    curve: list[tuple[int, float]] = field(default_factory=list)

    def effort_curve(self, grid: np.ndarray) -> np.ndarray:
        """Dice on an effort grid (reviewed / box): after the last step with at most that effort."""
        box = max(1, self.box_voxels)
        xs = np.array([t / box for t, _ in self.curve])
        ds = np.array([d for _, d in self.curve])
        return ds[np.maximum(0, np.searchsorted(xs, grid, side="right") - 1)]


def _dice_after_each_voxel(pred: np.ndarray, truth: np.ndarray, order: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean foreground Dice after reviewing the first k voxels of ``order``, k = 0 .. len(order)."""
    p, t = pred.ravel(), truth.ravel()
    po, to = p[order], t[order]
    dice = np.empty((max(1, num_classes - 1), len(order) + 1))
    if num_classes < 2:
        dice[:] = 1.0
    for c in range(1, num_classes):
        n_pred = int((p == c).sum()) + np.r_[0, np.cumsum((to == c).astype(np.int64) - (po == c))]
        n_both = int(((p == c) & (t == c)).sum()) + np.r_[0, np.cumsum((to == c) & (po != c))]
        denom = n_pred + int((t == c).sum())
        dice[c - 1] = np.where(denom == 0, 1.0, 2.0 * n_both / np.maximum(denom, 1))
    return dice.mean(0)


def simulate_review(pred: np.ndarray, truth: np.ndarray, steps: list[np.ndarray], box_voxels: int,
                    target: float, num_classes: int, *, region_steps_count: int = 0, case_id: str = "",
                    guide: str = "", full_review: bool = False) -> tuple[np.ndarray, Review]:
    """Review ``steps`` in order (the first ``region_steps_count`` are flagged regions) until ``target``
    Dice; ``full_review``: take every step and charge 1.0. Returns the corrected label and the account."""
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    sizes = [len(s) for s in steps]
    flat = np.concatenate(steps).astype(np.int64) if steps else np.zeros(0, np.int64)
    step_of = np.repeat(np.arange(len(steps)), sizes)
    _, first = np.unique(flat, return_index=True)
    keep = np.sort(first)  # each voxel where it is first reviewed
    order, step_of = flat[keep], step_of[keep]
    ends = np.cumsum(np.bincount(step_of, minlength=len(steps)))  # reviewed voxels after each step
    dice_all = _dice_after_each_voxel(pred, truth, order, num_classes)
    reviewed_at = np.r_[0, ends]  # index s: after s steps
    dice_at = dice_all[reviewed_at]
    wrong = np.r_[0, np.cumsum(pred.ravel()[order] != truth.ravel()[order])]
    budget = max(box_voxels, 0)
    if full_review:
        stop, reached = len(steps), True
    else:
        hits = np.flatnonzero(dice_at >= target)
        stop = int(hits[0]) if len(hits) else len(steps)
        reached = bool(len(hits)) and reviewed_at[stop] <= budget
        if not reached:  # the budget ran out first: the annotator reviews the whole box instead
            stop = int(np.flatnonzero(reviewed_at <= budget)[-1])
    fixed = pred.copy()
    if reached:
        done = order[:reviewed_at[stop]]
        fixed.ravel()[done] = truth.ravel()[done]
        reviewed, edited = int(reviewed_at[stop]), int(wrong[reviewed_at[stop]])
        effort = (1.0 if full_review else reviewed / budget) if budget else 0.0
    else:
        fixed = truth.copy()
        reviewed, edited, effort = budget, int((pred != truth).sum()), 1.0
    n_regions = min(stop, region_steps_count)
    res = Review(case_id, guide, budget, float(dice_at[0]), mean_dice(fixed, truth, num_classes), float(effort),
                 bool(reached), reviewed, n_regions, region_steps_count, edited, stop,
                 int(reviewed_at[n_regions]), float(dice_at[n_regions]),
                 [(int(r), float(d)) for r, d in zip(reviewed_at, dice_at, strict=True)])
    return fixed, res


def guide_steps(guide: str, confidence: np.ndarray | None, regions: list, threshold: float,
                box: tuple[slice, ...] | None, shape: tuple[int, ...], *, block_voxels: int = DEFAULT_BLOCK_VOXELS,
                rng: np.random.Generator | None = None) -> tuple[list[np.ndarray], int]:
    """The steps of ``guide`` and how many of them are flagged regions (``random``: all, its blocks).

    ``synergy`` / ``entropy`` / ``mc_dropout``: ``regions`` of ``confidence`` (flagged at ``threshold``)
    in rank order, then the sweep of the box by ``confidence``; ``random``: blocks of ``block_voxels``
    in ``rng``'s order; ``full_review``: the box."""
    if guide == "random":  # its blocks count as its regions (regions_visited = blocks visited)
        blocks = block_steps(shape, box, block_voxels, rng if rng is not None else np.random.default_rng(0))
        return blocks, len(blocks)
    if guide == "full_review":
        return full_steps(shape, box), 0
    regs = region_steps(confidence, regions, threshold)
    return regs + sweep_steps(confidence, box, regs), len(regs)


def review_case(pred: np.ndarray, truth: np.ndarray, guide: str, confidence: np.ndarray | None, regions: list,
                threshold: float, target: float, num_classes: int, *, block_voxels: int = DEFAULT_BLOCK_VOXELS,
                rng: np.random.Generator | None = None, case_id: str = "") -> tuple[np.ndarray, Review]:
    """:func:`simulate_review` of one case along ``guide`` (see :func:`guide_steps`) in its review box."""
    box = review_box(pred, truth)
    steps, n_regions = guide_steps(guide, confidence, regions, threshold, box, np.shape(pred),
                                   block_voxels=block_voxels, rng=rng)
    return simulate_review(pred, truth, steps, box_voxels(box), target, num_classes, region_steps_count=n_regions,
                           case_id=case_id, guide=guide, full_review=guide == "full_review")
