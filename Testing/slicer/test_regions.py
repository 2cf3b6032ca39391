"""The panel's own flagged-region computation (threshold slider) must match the engine's definition."""

from __future__ import annotations

import numpy as np
import pytest
from SynergyPLModuleLib import regions as panel_regions

pytestmark = pytest.mark.portable  # numpy only: also runs on Python 3.9 / 3.12 (make test-pythons)


def _smooth_random_heatmap(shape, seed):
    rng = np.random.default_rng(seed)
    noise = rng.random(shape)
    # a cheap blur so that low-confidence voxels form blobs of various sizes, some touching diagonally
    for axis in range(3):
        noise = (noise + np.roll(noise, 1, axis) + np.roll(noise, -1, axis)) / 3
    return ((noise - noise.min()) / (noise.max() - noise.min())).astype(np.float32)


@pytest.mark.parametrize("components", [panel_regions._label_components_numpy, panel_regions.label_components])
def test_numpy_components_are_26_connected_and_ordered_like_scipy(components):
    mask = np.zeros((6, 6, 6), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True     # corner-touching: one component
    mask[4, 4, 4] = True                      # isolated
    mask[0, 5, 0] = mask[0, 4, 1] = True      # edge-touching: one component
    labels, n = components(mask)
    assert n == 3
    assert labels[0, 0, 0] == labels[1, 1, 1] == 1
    assert labels[0, 4, 1] == labels[0, 5, 0] == 2
    assert labels[4, 4, 4] == 3
    assert (labels[~mask] == 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.45])
def test_regions_match_the_engine(seed, threshold, oblique_geometry):
    inference = pytest.importorskip("SynergyPLLib.engine.inference")
    from SynergyPLLib.engine.io import Volume

    shape = (19, 24, 15)
    heatmap = _smooth_random_heatmap(shape, seed)
    label = (np.random.default_rng(seed + 10).random(shape) * 3).astype(np.uint8)
    geometry = {"spacing": (0.8, 1.1, 2.0), "origin": (4.0, -7.5, 12.0), "direction": oblique_geometry["direction"]}
    heat_volume = Volume(heatmap, **geometry)
    names = ["background", "Anterior", "Posterior"]
    expected = inference.flag_regions(heat_volume, heat_volume.with_array(label), names, threshold=threshold,
                                      min_voxels=3, max_regions=20)
    assert expected, "the test heatmap should produce regions"
    for components in (panel_regions._label_components_numpy, panel_regions.label_components):
        got = panel_regions.flag_regions(heatmap, label, heat_volume.ijk_to_ras, names, threshold=threshold,
                                         min_voxels=3, max_regions=20, components=components)
        assert len(got) == len(expected)
        for mine, theirs in zip(got, expected, strict=True):
            assert mine.rank == theirs.rank and mine.voxel_count == theirs.voxel_count
            assert mine.bbox_ijk == theirs.bbox_ijk
            assert mine.classes == theirs.classes
            assert mine.mean_confidence == pytest.approx(theirs.mean_confidence, abs=1e-4)
            assert mine.score == pytest.approx(theirs.score, abs=2e-3)
            assert mine.volume_ml == pytest.approx(theirs.volume_ml, abs=1e-6)
            assert np.allclose(mine.centroid_ijk, theirs.centroid_ijk, atol=1e-3)
            assert np.allclose(mine.centroid_ras, theirs.centroid_ras, atol=2e-3)
            assert np.allclose(mine.centroid_lps, theirs.centroid_lps, atol=2e-3)


def test_reviewed_ticks_survive_recomputation_of_unchanged_regions():
    heatmap = np.ones((10, 10, 10), np.float32)
    heatmap[1:3, 1:3, 1:3] = 0.1
    heatmap[6:9, 6:9, 6:9] = 0.3
    label = np.zeros_like(heatmap, dtype=np.uint8)
    first = panel_regions.flag_regions(heatmap, label, np.eye(4), ["bg"], threshold=0.5)
    assert [r.voxel_count for r in first] == [27, 8]
    first[1].reviewed = True
    heatmap[6:9, 6:9, 6:9] = 0.6          # the big region disappears at 0.5 ...
    second = panel_regions.keep_reviewed(first, panel_regions.flag_regions(heatmap, label, np.eye(4), ["bg"], 0.5))
    assert [(r.voxel_count, r.reviewed) for r in second] == [(8, True)]   # ... the reviewed one stays reviewed
    assert panel_regions.summary(second) == "1 of 1 reviewed"
    assert panel_regions.summary([]) == "No flagged regions."
    assert panel_regions.Region.from_dict({**second[0].to_dict(), "unknown": 1}) == second[0]
