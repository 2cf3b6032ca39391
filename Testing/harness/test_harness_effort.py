"""Review accounting (SynergyPLLib.harness.review) on hand-made cases, and effort.json on a real model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SynergyPLLib.common.metrics import mean_dice
from SynergyPLLib.harness.effort import GUIDES, case_reviews, summarize
from SynergyPLLib.harness.review import (
    box_voxels,
    review_box,
    review_case,
    simulate_review,
)


def _case():
    """A 20^3 volume: truth = two classes; the prediction misses a 4x8x6 blob of class 1 (192 voxels) and
    the heatmap doubts exactly that blob."""
    truth = np.zeros((20, 20, 20), np.int64)
    truth[5:12, 6:14, 4:10] = 1  # (7, 8, 6)
    truth[12:15, 6:14, 4:10] = 2
    pred = truth.copy()
    pred[5:9, 6:14, 4:10] = 0  # the missed blob: Dice 0.6 and 1, mean 0.8
    heat = np.ones(truth.shape, np.float32)
    heat[5:9, 6:14, 4:10] = 0.1
    regions = [{"rank": 1, "voxel_count": 192, "bbox_ijk": [[5, 6, 4], [8, 13, 9]]}]
    return pred, truth, heat, regions


def test_review_box_is_the_dilated_union_bounding_box_clipped():
    pred, truth, _, _ = _case()
    box = review_box(pred, truth)
    assert box == (slice(3, 17), slice(4, 16), slice(2, 12))
    assert box_voxels(box) == 14 * 12 * 10
    edge = np.zeros((6, 6, 6), np.int64)
    edge[0, 0, 0] = 1  # clipped at the volume's faces
    assert review_box(edge, edge * 0) == (slice(0, 3), slice(0, 3), slice(0, 3))
    assert review_box(edge * 0, edge * 0) is None and box_voxels(None) == 0


def test_full_review_costs_exactly_one_and_gives_the_truth():
    pred, truth, heat, regions = _case()
    fixed, r = review_case(pred, truth, "full_review", heat, regions, 0.5, 0.9, 3)
    assert r.effort == 1.0 and r.reached and r.reviewed == r.box_voxels == 1680
    assert np.array_equal(fixed, truth) and r.dice_after == 1.0 and r.edited == 192
    # even a prediction that already meets the target is charged the whole box
    _, r = review_case(truth, truth, "full_review", heat, regions, 0.5, 0.9, 3)
    assert r.effort == 1.0 and r.edited == 0


def test_a_first_region_on_exactly_the_error_reaches_dice_one():
    pred, truth, heat, regions = _case()
    assert mean_dice(pred, truth, 3) < 0.9
    fixed, r = review_case(pred, truth, "synergy", heat, regions, 0.5, 0.9, 3)
    assert np.array_equal(fixed, truth) and r.dice_after == 1.0
    assert r.effort == 192 / 1680 and r.reviewed == r.region_voxels == r.edited == 192
    assert r.regions_visited == 1 and r.stop == 1 and r.dice_regions == 1.0


def test_dice_after_each_step_matches_mean_dice():
    pred, truth, heat, _ = _case()
    rng = np.random.default_rng(3)
    steps = [rng.choice(pred.size, 50, replace=False) for _ in range(10)]
    _, r = simulate_review(pred, truth, steps, 1680, 1.01, 3)  # never reached: every step on the curve
    fixed, seen = pred.copy(), np.zeros(pred.size, bool)
    for (reviewed, dice), step in zip(r.curve[1:], steps, strict=True):
        fixed.ravel()[step] = truth.ravel()[step]
        seen[step] = True
        assert reviewed == seen.sum()  # a voxel reviewed twice counts once
        assert dice == pytest.approx(mean_dice(fixed, truth, 3), abs=1e-12)


def test_a_case_that_never_reaches_the_target_counts_one():
    pred, truth, heat, _ = _case()
    wrong_place = [np.ravel_multi_index(np.nonzero(truth == 2), truth.shape)]  # reviews only right voxels
    fixed, r = simulate_review(pred, truth, wrong_place, 1680, 0.9, 3)
    assert not r.reached and r.effort == 1.0 and r.reviewed == 1680
    assert np.array_equal(fixed, truth) and r.edited == 192  # it was fully reviewed instead
    # reaching the target only after more than a box's worth of voxels counts 1.0 as well
    everything = [np.arange(pred.size)]
    _, r = simulate_review(pred, truth, everything, 1680, 0.9, 3)
    assert not r.reached and r.effort == 1.0


def test_sweep_after_the_regions_covers_the_box_least_confident_first():
    pred, truth, heat, _ = _case()
    fixed, r = review_case(pred, truth, "synergy", heat, [], 0.5, 0.999, 3)  # no regions: the sweep alone
    # 17 voxels a step (1% of 1680, rounded up): the 192 doubted voxels come first, Dice 1 after 12 steps
    assert r.regions_visited == 0 and r.reached and r.reviewed == 204 and r.dice_after == 1.0
    assert r.curve[-1][0] == 1680 and r.curve[-1][1] == 1.0  # the whole way covers exactly the box


def test_random_guide_is_deterministic_for_its_seed():
    pred, truth, heat, regions = _case()

    def run(seed):
        _, r = review_case(pred, truth, "random", heat, regions, 0.5, 0.9, 3, block_voxels=27,
                           rng=np.random.default_rng(seed))
        return r

    a, b, c = run(5), run(5), run(6)
    assert a.curve == b.curve and a.effort == b.effort
    assert a.curve != c.curve
    assert a.reached and 0 < a.effort <= 1.0 and a.regions_visited == a.stop > 1  # blocks visited
    assert a.curve[-1] == (1680, 1.0)  # 3x3x3 blocks (clipped at the far faces) tile the box once


def test_summary_has_the_benchmark_keys():
    pred, truth, heat, regions = _case()
    maps = {"synergy": (heat, regions), "entropy": (heat, regions), "mc_dropout": (1 - heat, [])}
    from SynergyPLLib.common.regions import RegionParams

    reviews = case_reviews(pred, truth, maps, RegionParams(), GUIDES, 0.9, 3, "c0", 0) + \
        case_reviews(truth, truth, maps, RegionParams(), GUIDES, 0.9, 3, "c1", 0)
    s = summarize(reviews, GUIDES)
    assert list(s) == list(GUIDES)
    for g in GUIDES:
        assert {"median_effort", "mean_effort", "cases_reaching", "regions_visited", "edited_voxels"} <= set(s[g])
        assert s[g]["cases_reaching"] == 2
    assert s["synergy"]["median_effort"] == pytest.approx(96 / 1680)  # 192/1680 and 0
    assert s["full_review"]["median_effort"] == 1.0 and s["full_review"]["edited_voxels"] == 192
    assert s["synergy"]["regions_visited"] == 0.5 and s["synergy"]["edited_voxels"] == 192
    assert s["synergy"]["curve"]["median_dice"][-1] == 1.0


@pytest.mark.data
def test_bench_effort_writes_effort_json(tiny, tmp_path):
    """On a model the tiny real benchmark trained (with its heatmap's error model), not a developer's file."""
    from SynergyPLLib.cli import main

    data, bench_out, _ = tiny
    checkpoint = bench_out / "runs" / "supervised_subset0_seed0" / "model.pt"
    assert main(["bench-effort", "--model", str(checkpoint), "--data", str(data), "--cases", "1",
                 "--guides", "synergy,random,full_review", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "effort.json").read_text())
    assert doc["target"] == 0.9 and doc["cases"] == 1
    assert list(doc["guides"]) == ["synergy", "random", "full_review"]
    assert doc["guides"]["full_review"]["median_effort"] == 1.0
    assert 0 <= doc["guides"]["synergy"]["median_effort"] <= 1.0
    assert (tmp_path / "effort.png").stat().st_size > 0
