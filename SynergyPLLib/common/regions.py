"""Flagged regions: the one definition, used by the engine (what the server returns) and the Slicer panel.

A flagged region is a piece a person fixes in one look. The voxels whose confidence (the heatmap, 1 =
certain; ``1 - P(label wrong)``) is below ``RegionParams.threshold`` are grouped into 26-connected
components; components smaller than ``min_voxels`` are dropped; each of the others is cut into compact
pieces, by halving it across its longest side in mm until every piece holds at most ``max_region_ml``
and spans at most ``max_region_mm`` along each voxel axis, never leaving a piece under ``min_voxels``
(the low-confidence shell around a structure is one component: unsplit, "fix the top region" would
mean "review everything"). The pieces are ranked
by their score ``sum(1 - confidence)``, the expected number of wrong voxels fixing the piece would
correct, and the first ``max_regions`` kept. Defaults: 2 ml and 20 mm. 20 mm is what a slice view
shows at editing zoom with context around it (a hippocampus, ~45 mm long, gets 5-7 pieces of
0.2-0.4 ml); 2 ml bounds the thick blobs of large organs (a liver or spleen edge) to a few brush
strokes on a handful of slices.

Each region says what is likely wrong (``likely_error``, one of :data:`LIKELY_ERRORS`): "extra
structure", "class swap", "missed structure" or "boundary", decided from the label and the heatmap only
(rule: :func:`SynergyPLLib.common.region_pieces.likely_errors`). The engine could tell more from its
probabilities (the second-choice class), but the panel has only the label and the heatmap, and the panel
and the server must show the same regions for the same threshold: one definition, from what both have.

A region lists the classes of the *label it is reviewed on* (the predicted label map) found inside it,
background included. It does not list the classes the mixed views voted for: those votes are already in
the heatmap, and the panel, which recomputes the regions when the threshold slider moves, has only the
label. So the Classes column never changes merely because the threshold moved.

The server sends its ``RegionParams`` with the regions (``region_params`` in the prediction document);
the panel recomputes with the same ``min_voxels``, ``max_regions``, ``max_region_ml`` and
``max_region_mm`` and the slider's threshold. :func:`region_masks` gives each region's voxels back (the
simulated annotator fixes region by region).

numpy only (scipy's labelling is used when it is importable), Python 3.9+.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from .region_pieces import LIKELY_ERRORS, detached_foreground, likely_errors, split_component

__all__ = ["LIKELY_ERRORS", "Region", "RegionParams", "flag_regions", "keep_reviewed", "label_components",
           "region_masks", "summary"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class RegionParams:
    """What makes a low-confidence blob a flagged region (the engine's ``InferenceConfig`` holds the project's)."""

    threshold: float = 0.5
    min_voxels: int = 5  # smaller components are dropped; no piece is cut smaller
    max_regions: int = 50  # the pieces of highest score kept
    max_region_ml: float = 2.0  # a component is cut until each piece holds at most this much ...
    max_region_mm: float = 20.0  # ... and its box is at most this long along each voxel axis

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, entry: Mapping | None, **overrides) -> RegionParams:
        """From a server document (missing or null keys keep the defaults: older servers sent none), with
        ``overrides`` (keyword: value, None = not overridden) on top."""
        names = {f.name for f in fields(cls)}
        merged = {**{k: v for k, v in (entry or {}).items() if v is not None},
                  **{k: v for k, v in overrides.items() if v is not None}}  # an override of None keeps the value
        kept = {k: v for k, v in merged.items() if k in names}
        params = cls(**kept)
        return cls(float(params.threshold), int(params.min_voxels), int(params.max_regions),
                   float(params.max_region_ml), float(params.max_region_mm))

    def with_threshold(self, threshold: float) -> RegionParams:
        return replace(self, threshold=float(threshold))


@dataclass
class Region:
    """One flagged region; ``reviewed`` is the panel's tick (not part of what the server sends)."""

    rank: int
    voxel_count: int
    volume_ml: float
    mean_confidence: float
    classes: list = field(default_factory=list)
    centroid_ijk: list | None = None
    centroid_ras: list | None = None
    centroid_lps: list | None = None
    bbox_ijk: list | None = None  # [[i0, j0, k0], [i1, j1, k1]], inclusive
    score: float = 0.0  # sum of (1 - confidence): the expected number of wrong voxels
    likely_error: str = ""  # one of LIKELY_ERRORS ("" from servers before it)
    seed_ijk: list | None = None  # the region's first voxel (C order): region_masks finds it again from it
    reviewed: bool = False

    @classmethod
    def from_dict(cls, entry: Mapping) -> Region:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in entry.items() if k in names})

    def to_dict(self) -> dict:
        """The region as JSON; ``reviewed`` only when ticked (the server's documents carry no ticks)."""
        out = asdict(self)
        if not self.reviewed:
            del out["reviewed"]
        return out

    @property
    def key(self) -> tuple:
        """Identifies the same region across recomputations (its bounding box and size)."""
        box = tuple(tuple(c) for c in self.bbox_ijk) if self.bbox_ijk else None
        return (box, self.voxel_count)


Components = Callable[[np.ndarray], "tuple[np.ndarray, int]"]


def _label_components_scipy(mask: np.ndarray):
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3, 3, 3), bool))


def _label_components_numpy(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected component labels of a boolean mask, numpy only (union-find by min-label propagation).

    Labels are numbered 1..n in the order of each component's first voxel in C order, as scipy does.
    """
    coords = np.argwhere(mask)
    labels = np.zeros(mask.shape, dtype=np.int64)
    n = len(coords)
    if n == 0:
        return labels.astype(np.int32), 0
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[tuple(coords.T)] = np.arange(n)
    # Edges to the 13 "forward" neighbours (the other 13 are the same edges reversed).
    edges_a, edges_b = [], []
    offsets = [(di, dj, dk) for di in (-1, 0, 1) for dj in (-1, 0, 1) for dk in (-1, 0, 1)
               if (di, dj, dk) > (0, 0, 0)]
    shape = np.array(mask.shape)
    for offset in offsets:
        neighbour = coords + np.array(offset)
        inside = np.all((neighbour >= 0) & (neighbour < shape), axis=1)
        source = np.nonzero(inside)[0]
        target = index[tuple(neighbour[inside].T)]
        linked = target >= 0
        edges_a.append(source[linked])
        edges_b.append(target[linked])
    a = np.concatenate(edges_a)
    b = np.concatenate(edges_b)
    parent = np.arange(n)
    while True:
        low = np.minimum(parent[a], parent[b])
        before = parent.copy()
        np.minimum.at(parent, a, low)
        np.minimum.at(parent, b, low)
        parent = parent[parent]  # pointer jumping
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        if np.array_equal(parent, before):
            break
    roots, component = np.unique(parent, return_inverse=True)  # roots sorted = first voxel in C order
    labels[tuple(coords.T)] = component + 1
    return labels.astype(np.int32), len(roots)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components (scipy when available, else numpy)."""
    try:
        return _label_components_scipy(mask)
    except ImportError:
        return _label_components_numpy(mask)


def flag_regions(heatmap: np.ndarray, label: np.ndarray, ijk_to_ras: np.ndarray, class_names: Sequence[str],
                 params: RegionParams | None = None, components: Components | None = None) -> list[Region]:
    """Regions of ``heatmap < params.threshold`` (arrays ``[i, j, k]``), most expected wrong voxels first.

    Components smaller than ``params.min_voxels`` are dropped, the others split into compact pieces
    (:func:`~SynergyPLLib.common.region_pieces.split_component`, sizes in ml and mm through
    ``ijk_to_ras``); the ``params.max_regions`` pieces of highest score are returned, each with its
    ``likely_error``. ``class_names[v]`` names label value ``v`` (index 0 = background); a region lists
    the classes of ``label`` inside it (see the module docstring). Centroids are given in voxel indices,
    RAS and LPS (through ``ijk_to_ras``), rounded to 3 decimals; mean confidence to 4, score to 3.
    """
    params = params or RegionParams()
    components = components or label_components
    confidence = np.asarray(heatmap, dtype=np.float32)
    comps, n = components(confidence < params.threshold)
    if n == 0:
        return []
    flat = np.asarray(comps).ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:]
    kept = [c for c in range(n) if counts[c] >= params.min_voxels]
    if not kept or params.max_regions <= 0:
        return []
    # The voxels of each component, grouped once (not one full-volume scan per region), in C order.
    inside = np.flatnonzero(flat)
    inside = inside[np.argsort(flat[inside], kind="stable")]
    starts = np.searchsorted(flat[inside], np.arange(1, n + 2))
    matrix = np.asarray(ijk_to_ras, dtype=float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    doubt = (1.0 - confidence).ravel()
    label_flat = np.asarray(label).ravel()
    detached = np.zeros(flat.shape, bool)
    pieces = []
    for c in kept:
        voxels = inside[starts[c]:starts[c + 1]]
        ijk = np.stack(np.unravel_index(voxels, confidence.shape), axis=1)
        if label_flat[voxels].any():
            box = tuple(slice(max(0, int(a) - 1), int(b) + 2) for a, b in zip(ijk.min(0), ijk.max(0)))
            local = detached_foreground(comps[box] == c + 1, np.asarray(label)[box], components)
            detached.reshape(confidence.shape)[box] |= local
        for rows in split_component(ijk, spacing, params.max_region_ml / voxel_ml, params.max_region_mm,
                                    params.min_voxels):
            pieces.append(voxels[rows])
    scores = np.array([doubt[p].sum(dtype=np.float64) for p in pieces])
    order = np.argsort(-scores, kind="stable")[:params.max_regions]
    chosen = [pieces[i] for i in order]
    errors = likely_errors(chosen, confidence.shape, label_flat, doubt, detached)
    out = []
    for rank, (voxels, score, error) in enumerate(zip(chosen, scores[order], errors), start=1):
        ijk = np.stack(np.unravel_index(voxels, confidence.shape), axis=1)
        centroid = ijk.mean(0)
        ras = matrix @ np.append(centroid, 1.0)
        lps = LPS_TO_RAS @ ras
        present = np.unique(label_flat[voxels]).tolist()
        count = len(voxels)
        out.append(Region(
            rank=rank, voxel_count=count, volume_ml=round(count * voxel_ml, 6),
            mean_confidence=round(float(1.0 - score / count), 4),
            classes=[class_names[v] for v in present if 0 <= v < len(class_names)],
            centroid_ijk=[round(float(v), 3) for v in centroid],
            centroid_ras=[round(float(v), 3) for v in ras[:3]],
            centroid_lps=[round(float(v), 3) for v in lps[:3]],
            bbox_ijk=[ijk.min(0).tolist(), ijk.max(0).tolist()],
            score=round(float(score), 3), likely_error=error,
            seed_ijk=[int(v) for v in np.unravel_index(int(voxels.min()), confidence.shape)]))
    return out


def region_masks(heatmap: np.ndarray, regions: Sequence[Region | Mapping], threshold: float) -> list[np.ndarray]:
    """The voxels (bool arrays) of each region of :func:`flag_regions` (``Region`` or its ``to_dict()``).

    A region is found again as the component of ``heatmap < threshold`` through its ``seed_ijk``, cut to
    its ``bbox_ijk`` (a piece is exactly that, see :func:`split_component`); when it no longer has its
    ``voxel_count`` voxels it is not there any more and gets an empty mask. A region without a seed (older
    documents, hand-made ones) is the component whose bounding box is ``bbox_ijk``.
    """
    comps, n = label_components(np.asarray(heatmap, dtype=np.float32) < threshold)
    shape = np.shape(heatmap)
    by_box = None
    masks = []
    for r in regions:
        entry = r if isinstance(r, Mapping) else r.to_dict()
        box, seed, count = entry.get("bbox_ijk"), entry.get("seed_ijk"), entry.get("voxel_count")
        mask = np.zeros(shape, bool)
        if box and seed:
            c = comps[tuple(int(v) for v in seed)]
            window = tuple(slice(int(a), int(b) + 1) for a, b in zip(box[0], box[1]))
            if c:
                mask[window] = comps[window] == c
            if count is not None and int(mask.sum()) != int(count):
                mask[:] = False
        elif box:
            by_box = _components_by_box(comps, n) if by_box is None else by_box
            c = by_box.get((tuple(box[0]), tuple(box[1])))
            if c:
                mask = comps == c
        masks.append(mask)
    return masks


def _components_by_box(comps: np.ndarray, n: int) -> dict:
    """{(low corner, high corner): component} of a component labelling."""
    by_box = {}
    if n:
        ijk = np.argwhere(comps > 0)
        ids = comps[tuple(ijk.T)]
        order = np.argsort(ids, kind="stable")
        ijk, ids = ijk[order], ids[order]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        for c, lo, hi in zip(ids[starts], np.minimum.reduceat(ijk, starts), np.maximum.reduceat(ijk, starts)):
            by_box[(tuple(lo.tolist()), tuple(hi.tolist()))] = int(c)
    return by_box


def keep_reviewed(previous: Sequence[Region], current: list[Region]) -> list[Region]:
    """Carry the reviewed ticks over to the regions that did not change."""
    reviewed = {r.key for r in previous if r.reviewed}
    for region in current:
        region.reviewed = region.key in reviewed
    return current


def summary(regions: Sequence[Region]) -> str:
    """'3 of 7 reviewed' style summary for the panel."""
    if not regions:
        return "No flagged regions."
    done = sum(1 for r in regions if r.reviewed)
    return f"{done} of {len(regions)} reviewed"
