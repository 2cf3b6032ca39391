"""The same physical image stored in other voxel orders, and predictions compared in physical space.

Used by test_orientation.py and orientation_table.py. SimpleITK's PermuteAxes and Flip move the voxels
and update origin and direction together, so each variant is the same image in patient space; the
oblique variant is the image resampled (linear) onto a rotated grid.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SynergyPLLib.engine.data import axcodes_of
from SynergyPLLib.engine.inference import Predictor
from SynergyPLLib.engine.io import _to_sitk, read_volume


def all_orders() -> list[tuple[tuple[int, int, int], tuple[bool, bool, bool]]]:
    """The 48 voxel orders of a 3D grid: 6 axis permutations x 8 flip patterns."""
    return [(perm, flips) for perm in itertools.permutations(range(3))
            for flips in itertools.product((False, True), repeat=3)]


def reordered(img: sitk.Image, perm, flips) -> sitk.Image:
    """``img`` with its voxel axes permuted and flipped; the same image in patient space."""
    return sitk.Flip(sitk.PermuteAxes(img, [int(p) for p in perm]), [bool(f) for f in flips])


def axcodes(img: sitk.Image) -> str:
    return axcodes_of(np.array(img.GetDirection()))


def oblique(img: sitk.Image, degrees: float = 20.0, axis=(0.3, 0.2, 1.0)) -> sitk.Image:
    """``img`` resampled (linear) onto a grid rotated by ``degrees`` about ``axis`` through its centre,
    large enough to hold the whole image."""
    rot = sitk.VersorTransform(tuple(float(a) for a in np.asarray(axis) / np.linalg.norm(axis)),
                               float(np.deg2rad(degrees)))
    r = np.array(rot.GetMatrix()).reshape(3, 3)
    direction = r @ np.array(img.GetDirection()).reshape(3, 3)
    spacing = np.array(img.GetSpacing())
    size = np.array(img.GetSize())
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))
    extent = np.abs(r) @ (size * spacing)  # the rotated box's bounding size along the new axes
    new_size = np.ceil(extent / spacing).astype(int) + 2
    origin = centre - direction @ (spacing * (new_size - 1) / 2)
    return sitk.Resample(img, new_size.tolist(), sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                         spacing.tolist(), direction.flatten().tolist(), float(np.min(sitk.GetArrayViewFromImage(img))),
                         img.GetPixelID())


def on_grid(label: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """``label`` resampled (nearest neighbour) onto ``reference``'s grid, as an [i, j, k] array."""
    out = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))


def predict_label(predictor: Predictor, img: sitk.Image, folder: Path, name: str) -> sitk.Image:
    """Write ``img`` as NRRD, read it the way every input is read, predict; the label as a SimpleITK image."""
    path = folder / f"{name}.nrrd"
    sitk.WriteImage(img, str(path))
    vol = read_volume(path)
    pred = predictor.predict(vol, heatmap=False)
    assert pred.label.same_geometry(vol) is None and np.array_equal(pred.label.direction, vol.direction)
    return _to_sitk(pred.label)


def dice(a: np.ndarray, b: np.ndarray, classes=(1, 2)) -> float:
    """Mean Dice over ``classes`` of two label arrays (1 for a class absent from both)."""
    out = []
    for c in classes:
        x, y = a == c, b == c
        denom = x.sum() + y.sum()
        out.append(1.0 if denom == 0 else 2.0 * (x & y).sum() / denom)
    return float(np.mean(out))
