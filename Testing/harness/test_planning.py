"""Dataset-aware planning (engine/planning.py) on the three shared datasets and on a user's own folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from SynergyPLLib.engine.config import profile_config
from SynergyPLLib.engine.data import Preprocessor
from SynergyPLLib.engine.io import read_volume
from SynergyPLLib.engine.planning import (
    CPU_BUDGET_SECONDS,
    GRID_VOXELS,
    LOWRES_COVERAGE,
    LOWRES_MAX_FACTOR,
    PATCH_VOXELS,
    Fingerprint,
    Plan,
    fingerprint,
    patch_coverage,
    plan,
    plan_dataset,
    resolutions,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _needs(name: str) -> Path:
    folder = SHARED / name
    if not (folder / "dataset.json").exists():
        pytest.skip(f"../shared/data/{name} missing")
    return folder


@pytest.fixture(scope="module")
def plans():
    out = {}
    for name in ("hippocampus", "left_atrium", "chaos_mr"):
        if (SHARED / name / "dataset.json").exists():
            fp = fingerprint(SHARED / name)
            out[name] = (fp, plan(fp, "cpu"), plan(fp, "gpu"))
    return out


def _check_common(p, fp):
    assert all(s % 8 == 0 and s >= 8 for s in p.patch_size)  # the network's total stride 2*2*2
    assert math.prod(p.patch_size) <= PATCH_VOXELS[p.profile]
    assert all(ps <= g for ps, g in zip(p.patch_size, p.grid_shape, strict=True))  # fits the median case
    assert p.batch_labeled >= 2 and p.batch_unlabeled >= 2
    if p.profile == "cpu":
        assert p.estimated_train_seconds <= CPU_BUDGET_SECONDS
        assert p.iterations % p.val_every == 0 and p.iterations > 0
    assert json.loads(json.dumps(p.to_dict()))["fingerprint"]["cases"] == fp.cases


def test_hippocampus_plan(plans):
    _needs("hippocampus")
    fp, cpu, gpu = plans["hippocampus"]
    assert fp.cases == 200 and fp.median_spacing == [1.0, 1.0, 1.0]
    assert cpu.spacing is None  # 1 mm everywhere: the images' own grid
    assert cpu.patch_size == [32, 48, 32]  # fits about 35 x 50 x 35
    assert cpu.iterations == 2 * 600 and gpu.iterations == 6000  # small patches: the schedule cap, not the budget
    assert fp.class_frequency["Anterior"] == pytest.approx(0.028, abs=0.005)
    _check_common(cpu, fp)
    _check_common(gpu, fp)


def test_chaos_mr_plan_coarsens_in_plane(plans):
    _needs("chaos_mr")
    fp, cpu, gpu = plans["chaos_mr"]
    assert fp.median_spacing == pytest.approx([1.25, 1.25, 7.7], abs=0.01)
    assert cpu.spacing[0] > 1.25 and cpu.spacing[1] > 1.25 and cpu.spacing[2] == pytest.approx(7.7, abs=0.01)
    assert math.prod(cpu.grid_shape) <= GRID_VOXELS["cpu"] * 1.02
    assert cpu.patch_size[2] <= min(s[2] for s in fp.shapes) <= 31  # every case's 30-46 slices hold it
    assert gpu.spacing is None  # the full-resolution grid fits the gpu budget
    assert fp.class_frequency["liver"] == pytest.approx(0.06, abs=0.01)
    assert 0.005 < fp.class_frequency["right kidney"] < 0.01
    _check_common(cpu, fp)
    _check_common(gpu, fp)


def test_left_atrium_plan(plans):
    _needs("left_atrium")
    fp, cpu, gpu = plans["left_atrium"]
    assert cpu.spacing is None and fp.median_spacing == pytest.approx([1.25] * 3)
    assert all(p <= s for p, s in zip(cpu.patch_size, (90, 70, 44), strict=True))  # fits about 90 x 70 x 44
    _check_common(cpu, fp)
    _check_common(gpu, fp)
    # 40^3 patches see a fifth of the median case: a low-resolution candidate, isotropic, seeing half of it
    assert resolutions(fp, "cpu") == ["full", "low"]
    low = plan(fp, "cpu", resolution="low")
    assert low.resolution == "low" and cpu.resolution == "full"
    assert low.spacing == pytest.approx([1.70] * 3, abs=0.01)
    assert patch_coverage(fp, low.spacing, low.patch_size) >= LOWRES_COVERAGE > patch_coverage(fp, [1.25] * 3, cpu.patch_size)
    _check_common(low, fp)


def test_only_datasets_whose_patch_sees_little_of_a_case_get_a_low_resolution_candidate(plans):
    _needs("hippocampus")
    _needs("chaos_mr")
    hippo = plans["hippocampus"][0]
    assert resolutions(hippo, "cpu") == ["full"]  # 32x48x32 patches see 78% of a 35x50x36 case
    with pytest.raises(ValueError, match="no low-resolution plan"):
        plan(hippo, "cpu", resolution="low")
    with pytest.raises(ValueError, match="unknown resolution 'medium'"):
        plan(hippo, "cpu", resolution="medium")
    chaos, cpu, _ = plans["chaos_mr"]
    low = plan(chaos, "cpu", resolution="low")  # anisotropic: in-plane only, the slices stay 7.7 mm
    assert low.spacing[0] == low.spacing[1] > cpu.spacing[0] and low.spacing[2] == pytest.approx(7.7, abs=0.01)
    _check_common(low, chaos)


def test_low_resolution_spacing_on_hand_made_fingerprints():
    def case(shape, spacing=(1.0, 1.0, 1.0)):
        return Fingerprint("c", ["background", "organ"], 20, 20, spacings=[list(spacing)] * 20, shapes=[list(shape)] * 20)

    mid = case((96, 72, 44))  # a 40^3 patch sees 21%: coarsened until it sees half, short of twice as coarse
    low = plan(mid, "cpu", resolution="low")
    assert 1.0 < low.spacing[0] == low.spacing[1] == low.spacing[2] < LOWRES_MAX_FACTOR
    assert patch_coverage(mid, low.spacing, low.patch_size) >= LOWRES_COVERAGE
    big = case((200, 200, 200))  # coarsened from the working spacing (already coarse to fit the grid budget)
    full, low = plan(big, "cpu"), plan(big, "cpu", resolution="low")
    assert full.spacing[0] < low.spacing[0] <= LOWRES_MAX_FACTOR * full.spacing[0]
    assert patch_coverage(big, low.spacing, low.patch_size) >= LOWRES_COVERAGE
    thick = case((400, 400, 60), (0.8, 0.8, 4.0))  # anisotropic: only the fine axes, never beyond the coarsest
    full, low = plan(thick, "cpu"), plan(thick, "cpu", resolution="low")
    assert low.spacing[2] == pytest.approx(full.spacing[2]) and full.spacing[0] < low.spacing[0] <= 4.0
    assert resolutions(case((30, 40, 30))) == ["full"]


def test_plan_is_deterministic():
    folder = _needs("hippocampus")
    assert plan_dataset(folder, "cpu").to_dict() == plan_dataset(folder, "cpu").to_dict()


def test_iterations_shrink_to_the_time_budget():
    big = Fingerprint("big", ["background", "organ"], 100, 100, spacings=[[1.0, 1.0, 1.0]] * 100,
                      shapes=[[300, 300, 300]] * 100)
    p = plan(big, "cpu", n_validation=200)  # validation passes over 200 large cases dominate
    assert p.iterations < profile_config("cpu").train.iterations
    assert p.estimated_train_seconds <= CPU_BUDGET_SECONDS
    assert math.prod(p.grid_shape) <= GRID_VOXELS["cpu"] * 1.02


def test_iterations_fill_the_time_budget():
    """A plan uses the budget it has: more voxels per step, fewer iterations, each just inside the budget."""
    from SynergyPLLib.engine.planning import BUDGET_MARGIN, MAX_SCHEDULE_FACTOR, estimate_train_seconds

    def case(side):
        return Fingerprint("c", ["background", "organ"], 40, 40, spacings=[[1.0, 1.0, 1.0]] * 40,
                           shapes=[[side, side, side]] * 40)

    small, mid, large = (plan(case(s), "cpu", n_validation=4) for s in (24, 40, 48))
    schedule = profile_config("cpu").train.iterations
    assert small.iterations == MAX_SCHEDULE_FACTOR * schedule  # capped: a tiny patch would run for ever
    assert schedule < mid.iterations < small.iterations and large.iterations < mid.iterations
    budget = CPU_BUDGET_SECONDS * (1 - BUDGET_MARGIN)
    for p in (mid, large):
        assert p.estimated_train_seconds <= budget
        longer = Plan(**{**p.to_dict(), "iterations": p.iterations + p.val_every})
        assert estimate_train_seconds(longer, 4, p.seconds_per_iteration) > budget  # one step more: over


def test_apply_writes_the_engine_config(plans):
    _needs("chaos_mr")
    _, cpu, _ = plans["chaos_mr"]
    cfg = cpu.apply(profile_config("cpu", ["background", "a", "b", "c", "d"]))
    assert cfg.preprocess.spacing == tuple(cpu.spacing) and cfg.train.patch_size == tuple(cpu.patch_size)
    assert (cfg.train.batch_labeled, cfg.train.iterations) == (cpu.batch_labeled, cpu.iterations)
    assert cfg.train.warmup_fraction is None  # no warm start chosen: the method's default
    warm = Plan(**{**cpu.to_dict(), "warmup_fraction": 0.5})
    for method, share in (("synergypl", 0.5), ("mean_teacher", 0.5), ("sgrs", None), ("supervised", None)):
        cfg = profile_config("cpu", ["background", "a", "b", "c", "d"])
        cfg.train.method = method
        assert warm.apply(cfg).train.warmup_fraction == share  # sgrs stays as published


def test_users_own_folder_in_network_axis_order(tmp_path):
    """A user's dataset stored with swapped axes: the fingerprint's spacing and shape are those the
    network sees after the Preprocessor's RAS re-orientation."""
    sitk = pytest.importorskip("SimpleITK")
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    training = []
    rng = np.random.default_rng(0)
    for i in range(3):
        arr = rng.normal(100, 10, (12, 40, 30)).astype(np.float32)  # numpy (k, j, i): size i=30, j=40, k=12
        lab = np.zeros(arr.shape, np.uint8)
        lab[4:8, 10:20, 10:20] = 1
        for a, sub in ((arr, "imagesTr"), (lab, "labelsTr")):
            img = sitk.GetImageFromArray(a)
            img.SetSpacing((0.8, 0.9, 4.0))
            img.SetDirection((0, 0, 1, 0, 1, 0, 1, 0, 0))  # voxel axis i runs along S, k along L
            sitk.WriteImage(img, str(tmp_path / sub / f"c{i}.nii.gz"))
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "mine", "labels": {"0": "background", "1": "x"},
                                                      "training": training}))
    fp = fingerprint(tmp_path)
    vol = read_volume(tmp_path / "imagesTr" / "c0.nii.gz")
    seen = Preprocessor(profile_config("cpu").preprocess).image(vol)
    assert fp.shapes[0] == list(seen.shape[1:])
    assert fp.spacings[0] == pytest.approx([4.0, 0.9, 0.8])  # R-L is the file's k, S-I its i
    assert fp.class_frequency["x"] == pytest.approx(400 / (12 * 40 * 30))
    p = plan(fp, "cpu")
    assert all(s % 8 == 0 for s in p.patch_size) and p.estimated_train_seconds <= CPU_BUDGET_SECONDS
