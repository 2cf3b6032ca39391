"""Flagged regions, the one definition (SynergyPLLib.common.regions): the panel's threshold slider and the
engine (what the server returns) give the same regions, with the region parameters honoured."""

from __future__ import annotations

import numpy as np
import pytest

from SynergyPLLib.common import regions as panel_regions
from SynergyPLLib.common.regions import RegionParams

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
        got = panel_regions.flag_regions(heatmap, label, heat_volume.ijk_to_ras, names,
                                         RegionParams(threshold, min_voxels=3, max_regions=20), components=components)
        assert len(got) == len(expected)
        for mine, theirs in zip(got, expected, strict=True):
            assert mine == theirs  # the engine's FlaggedRegion is the common Region
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
    first = panel_regions.flag_regions(heatmap, label, np.eye(4), ["bg"], RegionParams(0.5))
    assert [r.voxel_count for r in first] == [27, 8]
    first[1].reviewed = True
    heatmap[6:9, 6:9, 6:9] = 0.6          # the big region disappears at 0.5 ...
    second = panel_regions.keep_reviewed(first, panel_regions.flag_regions(heatmap, label, np.eye(4), ["bg"], RegionParams(0.5)))
    assert [(r.voxel_count, r.reviewed) for r in second] == [(8, True)]   # ... the reviewed one stays reviewed
    assert panel_regions.summary(second) == "1 of 1 reviewed"
    assert panel_regions.summary([]) == "No flagged regions."
    assert panel_regions.Region.from_dict({**second[0].to_dict(), "unknown": 1}) == second[0]


def _blobs():
    """Three low-confidence blobs of 27, 8 and 2 voxels, the big one across two label classes."""
    heatmap = np.ones((12, 12, 12), np.float32)
    heatmap[1:4, 1:4, 1:4] = 0.2      # 27 voxels
    heatmap[1:3, 1:3, 1] = 0.05       # its most doubtful corner (still the same component)
    heatmap[7:9, 7:9, 7:9] = 0.4      # 8 voxels
    heatmap[10, 10, 10:12] = 0.1      # 2 voxels
    label = np.zeros(heatmap.shape, np.uint8)
    label[1:4, 1:4, 2:4] = 1
    label[7:9, 7:9, 7:9] = 2
    return heatmap, label


NAMES = ["background", "Anterior", "Posterior"]


def test_region_params_are_honoured():
    heatmap, label = _blobs()
    everything = panel_regions.flag_regions(heatmap, label, np.eye(4), NAMES, RegionParams(0.5, 1, 50))
    assert [r.voxel_count for r in everything] == [27, 8, 2]
    assert [r.voxel_count for r in panel_regions.flag_regions(heatmap, label, np.eye(4), NAMES,
                                                              RegionParams(0.5, 5, 50))] == [27, 8]
    assert [r.voxel_count for r in panel_regions.flag_regions(heatmap, label, np.eye(4), NAMES,
                                                              RegionParams(0.5, 1, 1))] == [27]
    assert [r.voxel_count for r in panel_regions.flag_regions(heatmap, label, np.eye(4), NAMES,
                                                              RegionParams(0.3, 1, 50))][0] == 27
    assert panel_regions.flag_regions(heatmap, label, np.eye(4), NAMES, RegionParams(0.01, 1, 50)) == []
    assert panel_regions.flag_regions(heatmap, label, np.eye(4), NAMES) == \
        panel_regions.flag_regions(heatmap, label, np.eye(4), NAMES, RegionParams(0.5, 5, 50))  # the defaults


def test_region_params_from_a_server_document():
    assert RegionParams.from_dict(None) == RegionParams()
    assert RegionParams.from_dict({"threshold": 0.4, "min_voxels": 9, "max_regions": 3, "new": 1}) == \
        RegionParams(0.4, 9, 3)
    sent = RegionParams(0.4, 9, 3)
    assert RegionParams.from_dict(sent.to_dict(), threshold=0.7, min_voxels=None) == RegionParams(0.7, 9, 3)
    assert sent.with_threshold(0.2) == RegionParams(0.2, 9, 3)


def test_classes_are_the_labels_inside_and_do_not_change_with_the_threshold():
    heatmap, label = _blobs()
    by_threshold = {}
    for threshold in (0.3, 0.5, 0.9):
        regions = panel_regions.flag_regions(heatmap, label, np.eye(4), NAMES, RegionParams(threshold, 1, 50))
        by_threshold[threshold] = {r.bbox_ijk[0][0]: r.classes for r in regions}
    assert by_threshold[0.3][1] == by_threshold[0.5][1] == by_threshold[0.9][1] == ["background", "Anterior"]
    assert by_threshold[0.5][7] == by_threshold[0.9][7] == ["Posterior"]


def test_the_engine_adapter_is_the_common_function():
    inference = pytest.importorskip("SynergyPLLib.engine.inference")
    from SynergyPLLib.engine.io import Volume

    heatmap, label = _blobs()
    volume = Volume(heatmap, spacing=(0.5, 1.0, 2.0), origin=(1.0, 2.0, 3.0), direction=np.eye(3))
    for params in (RegionParams(0.5, 1, 50), RegionParams(0.3, 5, 1), RegionParams(0.9, 2, 2)):
        engine = inference.flag_regions(volume, volume.with_array(label), NAMES, params.threshold,
                                        params.min_voxels, params.max_regions)
        assert engine == panel_regions.flag_regions(heatmap, label, volume.ijk_to_ras, NAMES, params)
        assert all(not r.reviewed and "reviewed" not in r.to_dict() for r in engine)


@pytest.mark.parametrize("seed", [0, 1])
def test_region_masks_are_the_flagged_regions_voxels(seed):
    """The simulated annotator reviews region by region through region_masks: each mask is exactly its
    region (voxel count, bounding box, below the threshold), and masks do not overlap."""
    heat = _smooth_random_heatmap((20, 18, 16), seed)
    label = (heat > 0.6).astype(np.uint8)
    params = RegionParams(threshold=0.4, min_voxels=3, max_regions=10)
    found = panel_regions.flag_regions(heat, label, np.eye(4), ["background", "fg"], params)
    assert found, "the blurred noise must give some regions below 0.4"
    masks = panel_regions.region_masks(heat, [r.to_dict() for r in found], params.threshold)
    assert sum(m.sum() for m in masks) == np.logical_or.reduce(masks).sum()  # disjoint
    assert len(masks) == len(found)
    for i, region in enumerate(found):  # no zip(strict=): this file also runs on Python 3.9
        mask = masks[i]
        ijk = np.argwhere(mask)
        assert mask.sum() == region.voxel_count
        assert [ijk.min(0).tolist(), ijk.max(0).tolist()] == region.bbox_ijk
        assert (heat[mask] < params.threshold).all()
    gone = panel_regions.region_masks(heat, [{"bbox_ijk": [[0, 0, 0], [0, 0, 0]]}], params.threshold)
    assert not gone[0].any() or heat[0, 0, 0] < params.threshold
