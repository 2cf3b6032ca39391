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
    assert res.full_review == full_review_voxels(pred, truth) == 216


def test_without_regions_the_annotator_widens_by_heatmap_level():
    pred, truth, heat, _ = _case()
    fixed, res = simulate_annotator(pred, truth, heat, [], 0.5, 0.99, 2)
    assert res.regions_fixed == 0 and res.touched_regions == 0
    assert res.dice_after == 1.0 and res.touched_to_target == 72  # the 0.6 level holds the doubted voxels
    assert [d for _, d in res.curve][-1] == 1.0
