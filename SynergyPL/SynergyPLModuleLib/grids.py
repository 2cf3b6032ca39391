"""Moving arrays between two voxel grids that cover the same voxels in a different order.

The service keeps each case on its own grid (the image as it was uploaded); the volume node in Slicer
may index the same voxels differently (e.g. a DICOM series sorted the other way, or Slicer making the
IJK axes right-handed). When the two grids differ only by an axis permutation and flips, arrays map
exactly, with no resampling; anything else is refused with a message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class GridMismatch(ValueError):
    """The two grids do not hold the same voxels; the message says how they differ."""


def case_grid(case: dict) -> tuple[np.ndarray, tuple[int, int, int]]:
    """IJK-to-RAS matrix and shape of a case as the service describes it (``shape``, ``spacing``,
    ``origin``, ``direction`` in LPS, direction as 9 numbers row by row like ITK's GetDirection)."""
    direction = np.asarray(case["direction"], dtype=float).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag([float(s) for s in case["spacing"]])
    lps[:3, 3] = [float(o) for o in case["origin"]]
    return LPS_TO_RAS @ lps, tuple(int(s) for s in case["shape"])


def grid_to_json(ijk_to_ras: np.ndarray, shape: Sequence[int]) -> str:
    return json.dumps({"ijk_to_ras": np.asarray(ijk_to_ras, dtype=float).tolist(), "shape": [int(s) for s in shape]})


def grid_from_json(text: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    data = json.loads(text)
    return np.asarray(data["ijk_to_ras"], dtype=float), tuple(int(s) for s in data["shape"])


def array_mapper(source_ijk_to_ras: np.ndarray, source_shape: Sequence[int], target_ijk_to_ras: np.ndarray,
                 target_shape: Sequence[int], tolerance: float = 1e-3) -> Callable[[np.ndarray], np.ndarray]:
    """A function taking an array on the source grid to the same voxels on the target grid.

    Raises :class:`GridMismatch` unless target index = permutation/flip of source index (positions
    agreeing to ``tolerance`` of a voxel).
    """
    source_shape = tuple(int(s) for s in source_shape)
    target_shape = tuple(int(s) for s in target_shape)
    source_to_target = np.linalg.inv(np.asarray(target_ijk_to_ras, float)) @ np.asarray(source_ijk_to_ras, float)
    rotation = source_to_target[:3, :3]
    rounded = np.round(rotation)
    if not np.allclose(rotation, rounded, atol=tolerance) or \
            sorted(np.abs(rounded).sum(axis=0).tolist()) != [1, 1, 1] or \
            sorted(np.abs(rounded).sum(axis=1).tolist()) != [1, 1, 1]:
        raise GridMismatch("the volume in Slicer and the server's case are on different voxel grids "
                           "(different spacing or orientation); resampling is not done automatically")
    offset = source_to_target[:3, 3]
    if not np.allclose(offset, np.round(offset), atol=tolerance):
        raise GridMismatch("the volume in Slicer and the server's case are shifted by a fraction of a voxel")
    # target axis t comes from source axis axes[t], flipped if sign < 0
    axes = [int(np.nonzero(rounded[t])[0][0]) for t in range(3)]
    signs = [int(rounded[t, axes[t]]) for t in range(3)]
    permuted_shape = tuple(source_shape[a] for a in axes)
    if permuted_shape != target_shape:
        raise GridMismatch(f"the volume in Slicer has shape {source_shape}, the server's case {target_shape}")
    for t in range(3):
        first = int(round(offset[t]))
        last = first + signs[t] * (target_shape[t] - 1)
        if sorted((first, last)) != [0, target_shape[t] - 1]:
            raise GridMismatch("the volume in Slicer and the server's case cover different regions")
    if axes == [0, 1, 2] and signs == [1, 1, 1]:
        return lambda array: array

    def mapper(array: np.ndarray) -> np.ndarray:
        moved = np.transpose(array, axes)
        flips = tuple(t for t in range(3) if signs[t] < 0)
        return np.ascontiguousarray(np.flip(moved, flips) if flips else moved)

    return mapper
