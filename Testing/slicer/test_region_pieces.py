"""Flagged regions a person fixes in one look (SynergyPLLib.common.regions + region_pieces): long
components cut into compact pieces within the size caps, each with its centroid, its voxels found again
by region_masks, ranked by expected wrong voxels, and with what is likely wrong in it."""

from __future__ import annotations

import numpy as np
import pytest

from SynergyPLLib.common import regions as R
from SynergyPLLib.common.region_pieces import LIKELY_ERRORS, dilate, split_component
from SynergyPLLib.common.regions import RegionParams

pytestmark = pytest.mark.portable  # numpy only: also runs on Python 3.9 / 3.12 (make test-pythons)


def _shell(shape=(40, 40, 40), inner=10.0, outer=12.5):
    """A sphere of label 1 (radius ``inner``) whose confidence is low (0.2) in the shell up to ``outer``."""
    grid = np.indices(shape).transpose(1, 2, 3, 0) - (np.array(shape) - 1) / 2.0
    radius = np.linalg.norm(grid, axis=-1)
    shell = (radius >= inner - 1.0) & (radius < outer)
    heat = np.where(shell, 0.2, 0.95).astype(np.float32)
    label = (radius < inner).astype(np.uint8)
    return heat, label, shell


def _affine(spacing, origin, angle=0.5):
    """IJK-to-RAS: a rotation about the axis (1, 1, 1) by ``angle``, anisotropic ``spacing``, ``origin``."""
    axis = np.ones(3) / np.sqrt(3.0)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def _many(params: RegionParams) -> RegionParams:
    return RegionParams(params.threshold, params.min_voxels, 10_000, params.max_region_ml, params.max_region_mm)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.2, 2.0)])
def test_a_thin_shell_becomes_pieces_within_the_caps_that_cover_it(spacing):
    heat, label, shell = _shell()
    matrix = _affine(spacing, (3.0, -4.0, 5.0))
    params = _many(RegionParams(0.5, 5, 50, max_region_ml=0.6, max_region_mm=15.0))
    assert R.label_components(shell)[1] == 1  # the shell is one component ...
    found = R.flag_regions(heat, label, matrix, ["background", "fg"], params)
    assert len(found) >= 8  # ... cut into many pieces
    voxel_ml = np.prod(spacing) / 1000.0
    masks = R.region_masks(heat, found, params.threshold)
    for i, region in enumerate(found):  # no zip(strict=): this file also runs on Python 3.9
        mask = masks[i]
        assert region.volume_ml <= params.max_region_ml + 1e-9
        assert region.voxel_count == mask.sum() and region.volume_ml == pytest.approx(mask.sum() * voxel_ml, abs=1e-6)
        low, high = np.array(region.bbox_ijk)
        assert ((high - low + 1) * np.array(spacing) <= params.max_region_mm + 1e-9).all()
        assert R.label_components(mask)[1] == 1  # a piece is one connected patch of the shell
    assert np.array_equal(np.logical_or.reduce(masks), shell)  # together they cover the whole shell ...
    assert sum(int(m.sum()) for m in masks) == int(shell.sum())  # ... once
    unsplit = R.flag_regions(heat, label, matrix, ["background", "fg"],
                             RegionParams(0.5, 5, 50, max_region_ml=1e9, max_region_mm=1e9))
    assert len(unsplit) == 1 and unsplit[0].voxel_count == shell.sum()


def test_pieces_are_cut_across_the_longest_side_in_mm():
    ijk = np.argwhere(np.ones((4, 4, 12), bool))
    by_k = split_component(ijk, (1.0, 1.0, 3.0), max_voxels=1e9, max_extent_mm=20.0)  # k: 36 mm long
    assert len(by_k) == 2 and all(np.ptp(ijk[rows], axis=0).tolist() == [3, 3, 5] for rows in by_k)
    by_i = split_component(ijk, (10.0, 1.0, 1.0), max_voxels=1e9, max_extent_mm=20.0)  # i: 40 mm long
    assert len(by_i) == 2 and all(np.ptp(ijk[rows], axis=0).tolist() == [1, 3, 11] for rows in by_i)
    by_size = split_component(ijk, (1.0, 1.0, 1.0), max_voxels=50, max_extent_mm=1e9)  # 192 voxels
    assert len(by_size) == 4 and all(len(rows) <= 50 for rows in by_size)
    assert sorted(np.concatenate(by_size).tolist()) == list(range(len(ijk)))


def test_centroids_in_voxels_ras_and_lps_under_an_oblique_anisotropic_grid():
    heat = np.ones((20, 16, 12), np.float32)
    heat[3:6, 4:6, 2:9] = 0.1  # 3 x 2 x 7 voxels
    heat[15, 12, 10] = 0.3
    heat[15, 13, 10] = 0.3  # a second blob of 2 voxels, diagonal neighbours included below
    heat[16, 14, 11] = 0.3
    matrix = _affine((0.7, 1.3, 2.2), (-12.5, 30.25, 7.75), angle=1.1)
    found = R.flag_regions(heat, np.zeros(heat.shape, np.uint8), matrix, ["background"], RegionParams(0.5, 1, 50))
    assert [r.voxel_count for r in found] == [42, 3]
    for region in found:
        ijk = np.argwhere(R.region_masks(heat, [region], 0.5)[0]).astype(float)
        centroid = ijk.mean(0)
        ras = matrix[:3, :3] @ centroid + matrix[:3, 3]
        assert np.allclose(region.centroid_ijk, centroid, atol=1e-3)
        assert np.allclose(region.centroid_ras, ras, atol=1e-3)
        assert np.allclose(region.centroid_lps, [-ras[0], -ras[1], ras[2]], atol=1e-3)
        assert region.volume_ml == pytest.approx(len(ijk) * 0.7 * 1.3 * 2.2 / 1000.0, abs=1e-6)
    assert found[0].centroid_ijk == [4.0, 4.5, 5.0]


def test_region_masks_are_each_pieces_voxels_and_empty_once_it_changed():
    heat, label, shell = _shell()
    params = _many(RegionParams(0.5, 5, 50, max_region_ml=0.5, max_region_mm=12.0))
    found = R.flag_regions(heat, label, np.eye(4), ["background", "fg"], params)
    masks = R.region_masks(heat, [r.to_dict() for r in found], params.threshold)
    for i, region in enumerate(found):
        mask = masks[i]
        low, high = region.bbox_ijk
        box = tuple(slice(low[axis], high[axis] + 1) for axis in range(3))
        expected = np.zeros_like(shell)
        expected[box] = shell[box]  # the shell is one component: a piece is the shell inside its box
        assert np.array_equal(mask, expected)
        assert mask[tuple(region.seed_ijk)] and tuple(region.seed_ijk) == tuple(np.argwhere(mask)[0])
        assert float((1 - heat[mask]).sum()) == pytest.approx(region.score, abs=1e-3)
    changed = heat.copy()
    changed[tuple(found[0].seed_ijk)] = 0.9  # the top piece lost a voxel: it is not there any more
    again = R.region_masks(changed, found[:2], params.threshold)
    assert not again[0].any() and again[1].sum() == found[1].voxel_count


def _case(kind: str):
    """(heatmap, label) of one hand-made error; background 0, classes 1 and 2."""
    heat = np.ones((30, 30, 30), np.float32)
    label = np.zeros(heat.shape, np.uint8)
    if kind == "missed structure":  # doubt in the background, far from any label
        label[2:10, 2:10, 2:10] = 1
        heat[18:25, 18:25, 18:25] = 0.3
    elif kind == "extra structure":  # a labelled blob the model doubts all of, with a doubtful margin
        label[2:10, 2:10, 2:10] = 1
        label[18:23, 18:23, 18:23] = 2
        heat[18:23, 18:23, 18:23] = 0.2
        heat[17:24, 17:24, 17:24] = np.minimum(heat[17:24, 17:24, 17:24], 0.45)
    elif kind == "class swap":  # two classes side by side, doubt at their interface inside the structure
        label[5:25, 5:25, 5:15] = 1
        label[5:25, 5:25, 15:25] = 2
        heat[8:20, 8:20, 13:17] = 0.25
    else:  # boundary: a cube whose edge is doubtful on both sides
        label[8:22, 8:22, 8:22] = 1
        heat[7:9, 10:18, 10:18] = 0.3
    return heat, label


@pytest.mark.parametrize("kind", ["missed structure", "extra structure", "class swap", "boundary"])
def test_likely_error_of_hand_made_cases(kind):
    heat, label = _case(kind)
    found = R.flag_regions(heat, label, np.eye(4), ["background", "A", "B"], RegionParams(0.5, 1, 50))
    assert kind in LIKELY_ERRORS and len(found) == 1
    assert found[0].likely_error == kind
    assert R.Region.from_dict(found[0].to_dict()) == found[0]


def test_ranking_is_by_expected_wrong_voxels_with_min_voxels_and_max_regions():
    heat = np.ones((30, 30, 30), np.float32)
    heat[1:4, 1:4, 1:4] = 0.45      # 27 voxels, sure-ish: 27 * 0.55 = 14.85 expected wrong
    heat[10:14, 10:13, 10:12] = 0.1  # 24 voxels, very unsure: 24 * 0.9 = 21.6
    heat[20, 20, 20:23] = 0.0        # 3 voxels: 3 expected wrong
    heat[25, 2:28, 25] = 0.2         # a 26-voxel rod: 20.8, cut in two by the 20 mm cap
    label = np.zeros(heat.shape, np.uint8)
    found = R.flag_regions(heat, label, np.eye(4), ["background"], RegionParams(0.5, 4, 50))
    assert [r.voxel_count for r in found] == [24, 27, 13, 13]  # the 3 voxels are below min_voxels
    assert [r.score for r in found] == pytest.approx([21.6, 14.85, 10.4, 10.4], abs=1e-3)
    assert [r.rank for r in found] == [1, 2, 3, 4]
    assert [r.voxel_count for r in R.flag_regions(heat, label, np.eye(4), ["background"],
                                                  RegionParams(0.5, 4, 3))] == [24, 27, 13]
    for min_voxels in (1, 4, 10):  # no piece is cut smaller than min_voxels
        params = RegionParams(0.5, min_voxels, 50, max_region_mm=2.0)
        small = R.flag_regions(heat, label, np.eye(4), ["background"], params)
        assert min(r.voxel_count for r in small) == 1 if min_voxels == 1 else \
            min(r.voxel_count for r in small) >= min_voxels
        assert sum(r.voxel_count for r in small) == 24 + 27 + 26 + (3 if min_voxels < 4 else 0)


def test_region_params_carry_the_caps_through_a_server_document():
    sent = RegionParams(0.4, 9, 3, max_region_ml=1.5, max_region_mm=12.0)
    assert RegionParams.from_dict(sent.to_dict()) == sent
    assert RegionParams.from_dict({"threshold": 0.4, "min_voxels": 9, "max_regions": 3}) == \
        RegionParams(0.4, 9, 3)  # an older server: the default caps
    assert RegionParams.from_dict(sent.to_dict(), threshold=0.6) == RegionParams(0.6, 9, 3, 1.5, 12.0)


def test_numpy_dilation_is_the_26_neighbourhood():
    mask = np.zeros((7, 7, 7), bool)
    mask[3, 3, 3] = True
    assert dilate(mask).sum() == 27 and dilate(mask, 2).sum() == 125
    assert dilate(mask)[2:5, 2:5, 2:5].all()


def _cases():
    heat, label, _ = _shell()
    yield heat, label, RegionParams(0.5, 5, 50, 0.5, 12.0)
    for kind in LIKELY_ERRORS:
        yield (*_case(kind), RegionParams(0.5, 1, 50, 0.2, 8.0))
    rng = np.random.default_rng(3)
    noise = rng.random((24, 22, 20))
    for axis in range(3):
        noise = (noise + np.roll(noise, 1, axis) + np.roll(noise, -1, axis)) / 3
    noise = ((noise - noise.min()) / (noise.max() - noise.min())).astype(np.float32)
    yield noise, (noise > 0.55).astype(np.uint8) + (noise > 0.75), RegionParams(0.45, 3, 40, 0.05, 6.0)


def test_the_numpy_fallback_gives_the_same_regions_as_scipy():
    pytest.importorskip("scipy")
    matrix = _affine((0.9, 1.1, 1.7), (1.0, 2.0, 3.0))
    for heat, label, params in _cases():
        names = ["background", "A", "B"]
        with_scipy = R.flag_regions(heat, label, matrix, names, params, components=R._label_components_scipy)
        with_numpy = R.flag_regions(heat, label, matrix, names, params, components=R._label_components_numpy)
        assert with_scipy and with_scipy == with_numpy
