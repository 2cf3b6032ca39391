"""Flagged regions: connected low-confidence components of the heatmap, ranked by expected errors.

The service sends the regions of its own threshold; when the radiologist moves the threshold slider
the panel recomputes them here, instantly and without the server. Same definition as the engine
(``SynergyPLLib.engine.inference.flag_regions``): voxels with confidence below the threshold,
26-connected, ranked by ``sum(1 - confidence)``, at least ``min_voxels`` voxels, at most
``max_regions``. Needs numpy only (scipy is used when Slicer's Python happens to have it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Region:
    """One flagged region as the panel shows it (the engine's ``FlaggedRegion`` plus a reviewed tick)."""

    rank: int
    voxel_count: int
    volume_ml: float
    mean_confidence: float
    classes: list[str] = field(default_factory=list)
    centroid_ijk: list[float] | None = None
    centroid_ras: list[float] | None = None
    centroid_lps: list[float] | None = None
    bbox_ijk: list[list[int]] | None = None
    score: float = 0.0
    reviewed: bool = False

    @classmethod
    def from_dict(cls, entry: Mapping) -> Region:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in entry.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def key(self) -> tuple:
        """Identifies the same region across recomputations (its bounding box and size)."""
        box = tuple(tuple(c) for c in self.bbox_ijk) if self.bbox_ijk else None
        return (box, self.voxel_count)


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
                 threshold: float = 0.5, min_voxels: int = 5, max_regions: int = 50,
                 components=label_components) -> list[Region]:
    """Regions of ``heatmap < threshold`` (arrays ``[i, j, k]``), most expected errors first.

    ``class_names[v]`` names label value ``v`` (index 0 = background). Centroids are given in voxel
    indices, RAS and LPS (through ``ijk_to_ras``), rounded like the engine's.
    """
    confidence = np.asarray(heatmap, dtype=np.float32)
    comps, n = components(confidence < threshold)
    if n == 0:
        return []
    flat = comps.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(float)
    doubt = np.bincount(flat, weights=(1.0 - confidence).ravel().astype(np.float64), minlength=n + 1)[1:]
    order = [i for i in np.argsort(-doubt, kind="stable") if counts[i] >= min_voxels][:max_regions]
    spacing = np.linalg.norm(np.asarray(ijk_to_ras, dtype=float)[:3, :3], axis=0)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    label = np.asarray(label)
    out = []
    for rank, i in enumerate(order, start=1):
        ijk = np.argwhere(comps == i + 1)
        centroid = ijk.mean(0)
        hom = np.append(centroid, 1.0)
        ras = np.asarray(ijk_to_ras, dtype=float) @ hom
        lps = LPS_TO_RAS @ ras
        present = sorted(set(np.unique(label[tuple(ijk.T)]).tolist()))
        out.append(Region(
            rank=rank, voxel_count=int(counts[i]), volume_ml=round(float(counts[i]) * voxel_ml, 6),
            mean_confidence=round(float(1.0 - doubt[i] / counts[i]), 4),
            classes=[class_names[c] for c in present if c < len(class_names)],
            centroid_ijk=[round(float(v), 3) for v in centroid],
            centroid_ras=[round(float(v), 3) for v in ras[:3]],
            centroid_lps=[round(float(v), 3) for v in lps[:3]],
            bbox_ijk=[ijk.min(0).tolist(), ijk.max(0).tolist()],
            score=round(float(doubt[i]), 3)))
    return out


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
