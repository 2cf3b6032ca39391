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


def rotation(degrees: float, axis=(0.3, 0.2, 1.0)) -> np.ndarray:
    """The 3x3 rotation by ``degrees`` about ``axis``."""
    versor = sitk.VersorTransform(tuple(float(a) for a in np.asarray(axis) / np.linalg.norm(axis)),
                                  float(np.deg2rad(degrees)))
    return np.array(versor.GetMatrix()).reshape(3, 3)


def oblique(img: sitk.Image, degrees: float = 20.0, axis=(0.3, 0.2, 1.0), expand: bool = False) -> sitk.Image:
    """``img`` resampled (linear) onto a grid of the same spacing rotated by ``degrees`` about ``axis``
    through its centre: of the same size (corners outside the image take its minimum), or with ``expand``
    large enough to hold the whole image (more background around it)."""
    r = rotation(degrees, axis)
    direction = r @ np.array(img.GetDirection()).reshape(3, 3)
    spacing = np.array(img.GetSpacing())
    size = np.array(img.GetSize())
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))
    new_size = np.ceil(np.abs(r) @ (size * spacing) / spacing).astype(int) + 2 if expand else size
    origin = centre - direction @ (spacing * (new_size - 1) / 2)
    return sitk.Resample(img, new_size.tolist(), sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                         spacing.tolist(), direction.flatten().tolist(), float(np.min(sitk.GetArrayViewFromImage(img))),
                         img.GetPixelID())


def tilted(img: sitk.Image, degrees: float = 10.0, axis=(0.3, 0.2, 1.0)) -> sitk.Image:
    """The same voxels with an oblique direction matrix (rotated about the first voxel): another
    physical image, whose reorderings are then all the same oblique image."""
    out = sitk.Image(img)
    out.SetDirection((rotation(degrees, axis) @ np.array(img.GetDirection()).reshape(3, 3)).flatten().tolist())
    return out


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
