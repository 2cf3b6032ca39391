"""The two steps of :func:`SynergyPLLib.common.regions.flag_regions` that look inside a component.

- :func:`split_component`: cut a long or large low-confidence component into compact pieces, by
  recursive bisection along the longest physical side of each piece's bounding box.
- :func:`likely_errors`: what is probably wrong in each piece, from the label and the heatmap alone
  (the only inputs the panel has too), one of :data:`LIKELY_ERRORS`.

numpy only, Python 3.9+.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

MISSED, EXTRA, SWAP, BOUNDARY = "missed structure", "extra structure", "class swap", "boundary"
LIKELY_ERRORS = (MISSED, EXTRA, SWAP, BOUNDARY)
"""The fixed vocabulary of ``Region.likely_error`` (see :func:`likely_errors` for the rule)."""

NEAR_VOXELS = 2  # "next to" a label: within this many 26-neighbour steps


def split_component(ijk: np.ndarray, spacing: Sequence[float], max_voxels: float, max_extent_mm: float,
                    min_voxels: int = 1) -> list[np.ndarray]:
    """Rows of ``ijk`` ((n, 3) voxel indices of one component) grouped into pieces.

    A piece with more than ``max_voxels`` voxels, or whose bounding box is longer than ``max_extent_mm``
    along an index axis (``spacing``: mm per voxel along i, j, k), is cut in two across the axis on
    which its box is longest in mm, at the voxel plane nearest the box's middle that leaves at least
    ``min_voxels`` on each side (the next longest axis if none does; not cut if no axis has one); each
    half is cut again as needed. Every piece is therefore the component's voxels inside the piece's own
    bounding box. Returns index arrays into ``ijk``, deterministic (left half first), covering every
    row once.
    """
    spacing = np.asarray(spacing, dtype=float)
    done, todo = [], [np.arange(len(ijk))]
    while todo:
        rows = todo.pop()
        points = ijk[rows]
        lo, hi = points.min(0), points.max(0)
        extent = hi - lo + 1
        extent_mm = np.where(extent > 1, extent * spacing, 0.0)
        cut = None
        if len(rows) > max_voxels or extent_mm.max() > max_extent_mm:
            cut = _middle_cut(points, lo, extent, extent_mm, max(1, int(min_voxels)))
        if cut is None:
            done.append(rows)
            continue
        axis, plane = cut
        left = points[:, axis] < plane
        todo.append(rows[~left])  # popped after the left half: pieces come out left first
        todo.append(rows[left])
    return done


def _middle_cut(points: np.ndarray, lo: np.ndarray, extent: np.ndarray, extent_mm: np.ndarray,
                min_voxels: int) -> tuple[int, int] | None:
    """(axis, plane): cut ``points`` into ``< plane`` and ``>= plane`` along the longest axis in mm that
    can be cut leaving ``min_voxels`` on each side, at the allowed plane nearest the middle; or None."""
    for axis in np.argsort(-extent_mm, kind="stable"):
        if extent[axis] < 2:
            break
        below = np.cumsum(np.bincount(points[:, axis] - lo[axis], minlength=extent[axis]))[:-1]
        allowed = np.flatnonzero((below >= min_voxels) & (len(points) - below >= min_voxels)) + 1
        if len(allowed):
            best = allowed[np.argmin(np.abs(allowed - extent[axis] // 2), axis=0)]
            return int(axis), int(lo[axis] + best)
    return None


def dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """26-neighbour binary dilation, ``steps`` times (a separable 3x3x3 box max); numpy only."""
    out = np.asarray(mask, bool).copy()
    for _ in range(steps):
        for axis in range(out.ndim):
            grown = out.copy()
            lead = [slice(None)] * out.ndim
            tail = [slice(None)] * out.ndim
            lead[axis], tail[axis] = slice(1, None), slice(None, -1)
            grown[tuple(lead)] |= out[tuple(tail)]
            grown[tuple(tail)] |= out[tuple(lead)]
            out = grown
    return out


def _box(lo: np.ndarray, hi: np.ndarray, shape: Sequence[int], margin: int) -> tuple[slice, ...]:
    return tuple(slice(max(0, int(a) - margin), min(int(s), int(b) + margin + 1)) for a, b, s in zip(lo, hi, shape))


def detached_foreground(component: np.ndarray, label: np.ndarray, components: Callable) -> np.ndarray:
    """In a box around one low-confidence component (``component``: bool, its voxels; ``label``: the label
    map in the same box, with at least one voxel of margin), the foreground voxels of the component whose
    foreground blob lies wholly inside it: no 26-neighbour of theirs, through foreground, is confident."""
    foreground = label > 0
    doubtful = component & foreground
    if not doubtful.any():
        return doubtful
    blobs, n = components(doubtful)
    attached = np.unique(blobs[dilate(foreground & ~component) & doubtful])
    return doubtful & ~np.isin(blobs, attached[attached > 0])


def likely_errors(pieces: Sequence[np.ndarray], shape: Sequence[int], label: np.ndarray, doubt: np.ndarray,
                  detached: np.ndarray) -> list[str]:
    """The likely error of each piece (flat voxel indices into arrays of ``shape``); ``label`` and
    ``doubt`` (1 - heatmap) and ``detached`` (see :func:`detached_foreground`) flat over the volume.

    With ``w`` = a piece's doubt, checked in this order (the first that holds):

    - "extra structure": at least a quarter of ``w``, and most of the doubt on the piece's foreground,
      on foreground whose whole blob is doubtful (the model labelled a blob and doubts all of it; the
      doubtful margin around it may hold the rest);
    - "class swap": at least half of ``w`` on foreground voxels next to another foreground class;
    - "missed structure": at least half of ``w`` on background voxels *not* next to any foreground (a
      doubtful blob the label has nothing in);
    - "boundary": anything else, typically the doubt on both sides of a label's edge.

    "Next to" = within :data:`NEAR_VOXELS` 26-neighbour steps.
    """
    label_3d = label.reshape(shape)
    out = []
    for voxels in pieces:
        ijk = np.stack(np.unravel_index(voxels, shape), axis=1)
        box = _box(ijk.min(0), ijk.max(0), shape, NEAR_VOXELS)
        local = label_3d[box]
        origin = np.array([s.start for s in box])
        where = tuple((ijk - origin).T)
        weights = doubt[voxels].astype(np.float64)
        total = weights.sum()
        values = local[where]
        foreground = local > 0
        if total <= 0:
            out.append(BOUNDARY)
            continue
        on_detached = weights[detached[voxels]].sum()
        if on_detached >= 0.25 * total and on_detached >= 0.5 * weights[values > 0].sum():
            out.append(EXTRA)
            continue
        swap = np.zeros(len(voxels), bool)
        for cls in np.unique(values[values > 0]):
            near_other = dilate(foreground & (local != cls), NEAR_VOXELS)[where]
            swap |= (values == cls) & near_other
        if weights[swap].sum() >= 0.5 * total:
            out.append(SWAP)
            continue
        far_background = (values == 0) & ~dilate(foreground, NEAR_VOXELS)[where]
        out.append(MISSED if weights[far_background].sum() >= 0.5 * total else BOUNDARY)
    return out
