"""The demo's simulated annotator (SynergyPLLib.harness.annotator) on a hand-made case."""

from __future__ import annotations

import numpy as np

from SynergyPLLib.common.regions import region_masks
from SynergyPLLib.harness.annotator import full_review_voxels, simulate_annotator


def _case():
    truth = np.zeros((12, 12, 12), np.uint8)
    truth[2:8, 2:8, 2:8] = 1  # 216 voxels
    pred = truth.copy()
    pred[2:4, 2:8, 2:8] = 0  # the model missed two slabs (72 voxels) ...
    heat = np.ones(truth.shape, np.float32)
    heat[2:4, 2:8, 2:8] = 0.2  # ... and the heatmap doubts exactly them
    regions = [{"rank": 1, "bbox_ijk": [[2, 2, 2], [3, 7, 7]]}]
    return pred, truth, heat, regions


def test_flagged_region_fixes_the_case():
    pred, truth, heat, regions = _case()
    masks = region_masks(heat, regions, 0.5)
    assert len(masks) == 1 and int(masks[0].sum()) == 72
    fixed, res = simulate_annotator(pred, truth, heat, regions, 0.5, 0.99, 2)
    assert np.array_equal(fixed, truth)
    assert res.dice_before < 0.99 and res.dice_after == 1.0 and res.dice_regions_only == 1.0
    assert res.regions_fixed == 1 and res.touched == res.touched_to_target == res.touched_regions == 72
    assert res.full_review == full_review_voxels(pred, truth) == 1000  # the box 2..7 dilated by 2: 10^3


def test_without_regions_the_annotator_sweeps_the_box_by_heatmap():
    pred, truth, heat, _ = _case()
    fixed, res = simulate_annotator(pred, truth, heat, [], 0.5, 0.99, 2)
    assert res.regions_fixed == 0 and res.touched_regions == 0
    # 10 voxels a step (1% of the 1000-voxel box), least confident first: after 70 of the 72 doubted
    # voxels Dice is 2 * 214 / 430 = 0.9953
    assert res.touched_to_target == res.touched == 70 and 0.99 < res.dice_after < 1.0
    assert res.curve[-1] == (70, res.dice_after)  # the curve runs to where it stopped
