"""Segmentation quality of one case: Dice, HD95 and ASD per foreground class (MONAI).

- Dice: :func:`monai.metrics.compute_dice` on the label maps.
- HD95: :func:`monai.metrics.compute_hausdorff_distance` with ``percentile=95``: MONAI takes the 95th
  percentile (``torch.quantile``, linear interpolation) of each directed set of boundary distances and
  returns the larger of the two.
- ASD: :func:`monai.metrics.compute_average_surface_distance` with ``symmetric=True``: the mean over the
  union of both directed distance sets (``(sum d(P->T) + sum d(T->P)) / (|dP| + |dT|)``).

Boundaries are the mask voxels removed by a 6-connected binary erosion; distances join voxel centres,
in millimetres through ``spacing``.

Empty classes: Dice is 1 when prediction and truth are both empty and 0 when only one is. HD95 and
ASD are NaN when either is empty (no finite distance exists); the ``*_mean`` entries are NaN-ignoring
means over foreground classes (NaN only when every class is NaN).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    ok = ~np.isnan(arr)
    return float(arr[ok].mean()) if ok.any() else float("nan")


def segmentation_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Dice, HD95 and ASD of a predicted label map against the truth, per foreground class.

    In: ``pred`` and ``truth`` integer label maps of the same shape (I, J, K) with values in
    ``0..num_classes-1`` (0 = background); ``spacing`` in mm along i, j, k (``Volume.spacing``);
    ``class_names`` (optional, all ``num_classes`` names, background first) to key the results by name.
    Out: ``{"dice": {key: float}, "hd95": {...}, "asd": {...}, "dice_mean", "hd95_mean", "asd_mean"}``
    where the keys are the foreground class indices ``1..C-1`` (or their names); distances in mm.
    Empty-class rules are in the module docstring.
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    if num_classes < 2:
        raise ValueError("num_classes must count the background and at least one foreground class")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    for name, arr in (("prediction", pred), ("truth", truth)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} values must lie in 0..{num_classes - 1}")
    spacing = [float(s) for s in spacing]
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} does not match the {pred.ndim}D label maps")
    keys = list(range(1, num_classes)) if class_names is None else list(class_names[1:])

    p_lab = torch.as_tensor(pred.astype(np.int64))[None, None]
    t_lab = torch.as_tensor(truth.astype(np.int64))[None, None]
    dice = compute_dice(p_lab, t_lab, include_background=False, ignore_empty=False, num_classes=num_classes)
    dice_list = [float(d) for d in dice[0]]

    hd95_list: list[float] = []
    asd_list: list[float] = []
    for c in range(1, num_classes):
        p_c = torch.as_tensor(pred == c)[None, None]
        t_c = torch.as_tensor(truth == c)[None, None]
        if not bool(p_c.any()) or not bool(t_c.any()):
            hd95_list.append(float("nan"))
            asd_list.append(float("nan"))
            continue
        with warnings.catch_warnings():
            # MONAI 1.5-1.6 passes its own deprecated get_mask_edges(always_return_as_numpy=...) argument
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            hd = compute_hausdorff_distance(p_c, t_c, include_background=True, percentile=95, spacing=spacing)
            asd = compute_average_surface_distance(p_c, t_c, include_background=True, symmetric=True,
                                                   spacing=spacing)
        hd95_list.append(float(hd[0, 0]))
        asd_list.append(float(asd[0, 0]))

    return {
        "dice": dict(zip(keys, dice_list, strict=True)),
        "hd95": dict(zip(keys, hd95_list, strict=True)),
        "asd": dict(zip(keys, asd_list, strict=True)),
        "dice_mean": float(np.mean(dice_list)),
        "hd95_mean": _nanmean(hd95_list),
        "asd_mean": _nanmean(asd_list),
    }
