"""Dice, HD95 and ASD on hand-computed cases (SynergyPLLib.engine.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from SynergyPLLib.engine.metrics import segmentation_metrics


def _cube(shape, lo, size, value=1, out=None):
    out = np.zeros(shape, dtype=np.int64) if out is None else out
    out[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = value
    return out


def test_dice_of_known_overlaps():
    truth = _cube((12, 12, 12), (2, 2, 2), 4)
    pred = _cube((12, 12, 12), (3, 2, 2), 4)  # shifted by one voxel: overlap 3 * 16 = 48 of 64
    m = segmentation_metrics(pred, truth, 2, (1.0, 1.0, 1.0))
    assert m["dice"][1] == pytest.approx(2 * 48 / 128)
    same = segmentation_metrics(truth, truth, 2, (1.0, 1.0, 1.0))
    assert same["dice"][1] == 1.0 and same["hd95"][1] == 0.0 and same["asd"][1] == 0.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_offset_cubes_anisotropic(axis):
    # Two disjoint 4x4x4 cubes, d = 6 voxels apart along `axis`. The facing face of the other cube is
    # all boundary, so each boundary voxel's distance is its layer's offset along `axis` times the spacing:
    # per cube 16 voxels at d-3, 12 at d-2, 12 at d-1, 16 at d (56 boundary voxels of 64).
    # HD95 = d * s; ASD = s * (16(d-3) + 12(d-2) + 12(d-1) + 16d) / 56 = s * (d - 1.5).
    spacing = (0.7, 2.5, 1.3)
    d, s = 6, spacing[axis]
    lo_t, lo_p = [1, 1, 1], [1, 1, 1]
    lo_p[axis] += d
    truth = _cube((14, 14, 14), lo_t, 4)
    pred = _cube((14, 14, 14), lo_p, 4)
    m = segmentation_metrics(pred, truth, 2, spacing)
    assert m["dice"][1] == 0.0
    assert m["hd95"][1] == pytest.approx(d * s, rel=1e-5)
    assert m["asd"][1] == pytest.approx(s * (d - 1.5), rel=1e-5)


def test_hd95_ignores_one_outlier_voxel_but_asd_does_not():
    spacing = (1.0, 0.5, 1.5)
    truth = _cube((16, 16, 16), (2, 2, 2), 4)
    pred = truth.copy()
    pred[2, 2, 12] = 1  # 7 voxels along k from the corner (2, 2, 5): 10.5 mm
    m = segmentation_metrics(pred, truth, 2, spacing)
    # directed pred->truth: 56 zeros and one 10.5; its 95th percentile is 0; truth->pred: 56 zeros
    assert m["hd95"][1] == 0.0
    assert m["asd"][1] == pytest.approx(10.5 / 113, rel=1e-5)
    assert m["dice"][1] == pytest.approx(128 / 129, rel=1e-6)


def test_empty_classes_and_nan_means():
    shape = (10, 10, 10)
    truth = _cube(shape, (1, 1, 1), 3)  # class 1 only
    pred = _cube(shape, (1, 1, 1), 3)
    pred[8, 8, 8] = 2  # class 2 predicted, absent in truth; class 3 absent in both; class 4 missed
    truth[6, 6, 6] = 4
    m = segmentation_metrics(pred, truth, 5, (1.0, 1.0, 1.0))
    assert m["dice"] == {1: 1.0, 2: 0.0, 3: 1.0, 4: 0.0}
    assert m["hd95"][1] == 0.0 and m["asd"][1] == 0.0
    for c in (2, 3, 4):
        assert math.isnan(m["hd95"][c]) and math.isnan(m["asd"][c])
    assert m["dice_mean"] == 0.5
    assert m["hd95_mean"] == 0.0 and m["asd_mean"] == 0.0  # NaN-ignoring means

    nothing = segmentation_metrics(np.zeros(shape, int), truth, 5, (1.0, 1.0, 1.0))
    assert math.isnan(nothing["hd95_mean"]) and math.isnan(nothing["asd_mean"])


def test_class_names_key_results():
    truth = _cube((8, 8, 8), (1, 1, 1), 3)
    m = segmentation_metrics(truth, truth, 2, (1, 1, 1), class_names=["background", "Anterior"])
    assert m["dice"] == {"Anterior": 1.0}


def test_bad_inputs_raise():
    a = np.zeros((4, 4, 4), int)
    with pytest.raises(ValueError):
        segmentation_metrics(a, np.zeros((4, 4, 5), int), 2, (1, 1, 1))
    with pytest.raises(ValueError):
        segmentation_metrics(a + 2, a, 2, (1, 1, 1))
    with pytest.raises(ValueError):
        segmentation_metrics(a, a, 2, (1, 1))
