"""Benchmark v2 (shared/BENCHMARK.md): the split rule, the labeled subsets, the paired bootstrap, and the
results.json contract on a tiny real run (16 real hippocampus cases, a few iterations), with --test-data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_support import DATA, TINY_ITERATIONS, tiny_dataset  # the `tiny` fixture is in conftest.py

from SynergyPLLib.cli import main
from SynergyPLLib.engine.data import CaseSpec
from SynergyPLLib.engine.model import atomic_torch_save
from SynergyPLLib.harness.bench import RUN_KEYS, draw_subsets, make_split, split_sizes
from SynergyPLLib.harness.bench_report import (
    SIGNALS,
    paired_bootstrap,
    paired_difference,
    rare_classes,
    summarize,
)

needs_data = pytest.mark.skipif(not (DATA / "dataset.json").exists(), reason="../shared/data/hippocampus missing")


def _cases(n: int) -> list[CaseSpec]:
    return [CaseSpec(f"case_{i:03d}", Path(f"/nowhere/case_{i:03d}.nii.gz")) for i in range(n)]


@pytest.mark.parametrize(("n", "sizes"), [(200, (40, 20, 140)), (80, (16, 8, 56)), (16, (3, 2, 11))])
def test_split_sizes_follow_the_rule(n, sizes):
    assert split_sizes(n) == sizes
    split = make_split(_cases(n), seed=3)
    ids = split.ids()
    assert tuple(len(ids[k]) for k in ("test", "validation", "pool")) == sizes
    every = ids["test"] + ids["validation"] + ids["pool"]
    assert sorted(every) == [c.id for c in _cases(n)]  # disjoint and complete
    assert make_split(_cases(n), seed=3).ids() == ids  # fixed by the seed
    assert make_split(_cases(n), seed=4).ids() != ids


def test_split_refuses_too_few_cases():
    with pytest.raises(ValueError, match="too few"):
        split_sizes(3)


def test_subsets_differ_are_from_the_pool_and_fixed():
    pool = [f"p{i}" for i in range(11)]
    subsets = draw_subsets(pool, 2, 3)
    assert len(subsets) == 3 and all(len(s) == 2 and set(s) <= set(pool) for s in subsets)
    assert len({tuple(s) for s in subsets}) == 3
    assert draw_subsets(pool, 2, 3) == subsets
    with pytest.raises(ValueError):
        draw_subsets(pool, 12, 1)
    with pytest.raises(ValueError, match="different subsets"):
        draw_subsets(pool[:3], 3, 2)  # only one subset of 3 out of 3 exists


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.6, 0.9, 40)
    clear = base + 0.03 + rng.normal(0, 0.01, 40)
    diff, (lo, hi) = paired_bootstrap(clear - base)
    assert diff == pytest.approx(0.03, abs=0.005)
    assert lo < 0.03 < hi and lo > 0
    noise = rng.normal(0, 0.02, 40)
    noise -= noise.mean()  # a method that differs from the baseline only by noise
    diff, (lo, hi) = paired_bootstrap(noise)
    assert diff == pytest.approx(0.0, abs=1e-12) and lo < 0 < hi
    # pairing: a large between-case spread does not widen the interval of a constant paired difference
    diff, (lo, hi) = paired_bootstrap(np.full(40, 0.01))
    assert (diff, lo, hi) == pytest.approx((0.01, 0.01, 0.01))


def test_paired_difference_pairs_subset_and_seed():
    cases = [f"c{i}" for i in range(30)]
    rng = np.random.default_rng(2)

    def detail(method, subset, seed, values):
        return {"method": method, "subset": subset, "seed": seed, "per_case_dice": dict(zip(cases, values, strict=True))}

    base = {(k, s): rng.uniform(0.3, 0.9, 30) for k in (0, 1) for s in (0, 1)}  # subsets differ a lot
    details = [detail("supervised", k, s, v) for (k, s), v in base.items()]
    details += [detail("synergypl", k, s, v + 0.02) for (k, s), v in base.items()]
    details += [detail("full", 0, s, np.full(30, 0.95)) for s in (0, 1)]
    out = paired_difference(details, "synergypl", "supervised")
    assert out["diff"] == pytest.approx(0.02) and out["ci95"] == pytest.approx([0.02, 0.02])
    full = paired_difference(details, "full", "supervised")  # full is paired with every subset of the seed
    expected = np.mean([0.95 - v for v in base.values()], axis=0)
    assert full["diff"] == pytest.approx(float(expected.mean()))
    assert paired_difference(details, "synergypl", "mean_teacher") is None


def test_rare_classes_get_their_own_mean_and_paired_difference():
    # chaos_mr's fingerprint: the kidneys and the spleen are under 2% of the voxels, the liver is not
    freq = {"background": 0.918, "liver": 0.059, "right kidney": 0.0067, "left kidney": 0.0067, "spleen": 0.009}
    classes = ["liver", "right kidney", "left kidney", "spleen"]
    assert rare_classes(freq, classes) == ["right kidney", "left kidney", "spleen"]
    assert rare_classes({"background": 0.9, "left atrium": 0.1}, ["left atrium"]) == []
    assert rare_classes(None, classes) == []  # no fingerprint: no rare group
    cases = ["a", "b", "c", "d"]

    def run_and_detail(method, liver, rare):  # per case: liver Dice, the same Dice for each rare organ
        per = {c: {"liver": liver[i], **dict.fromkeys(classes[1:], rare[i])} for i, c in enumerate(cases)}
        detail = {"method": method, "subset": 0, "seed": 0, "per_case_class_dice": per,
                  "per_case_dice": {c: float(np.mean(list(per[c].values()))) for c in cases}}
        run = {"method": method, "dice_mean": float(np.mean(list(detail["per_case_dice"].values()))),
               "dice": {k: float(np.mean([per[c][k] for c in cases])) for k in classes},
               "hd95_mean": None, "ece": 0.01}
        return run, detail

    # synergypl loses 4 points of liver and gains 3 on every rare organ: the overall mean hides the gain
    sup = run_and_detail("supervised", [0.9, 0.8, 0.85, 0.7], [0.5, 0.6, 0.4, 0.55])
    syn = run_and_detail("synergypl", [0.86, 0.76, 0.81, 0.66], [0.53, 0.63, 0.43, 0.58])
    runs, details = [sup[0], syn[0]], [sup[1], syn[1]]
    summ = summarize(runs, details, ["supervised", "synergypl"], classes, rare_classes(freq, classes))
    rc = summ["synergypl"]["rare_classes"]
    assert rc["classes"] == ["right kidney", "left kidney", "spleen"]
    assert rc["dice_mean"] == pytest.approx(0.5425) and rc["dice_std"] == 0.0
    assert rc["vs_supervised"]["diff"] == pytest.approx(0.03) and rc["vs_supervised"]["ci95"] == pytest.approx([0.03, 0.03])
    assert rc["vs_mean_teacher"] is None
    assert summ["synergypl"]["vs_supervised"]["diff"] == pytest.approx(0.0125)  # (3 * 3 - 4) / 4 points
    assert "rare_classes" not in summarize(runs, details, ["supervised", "synergypl"], classes)["synergypl"]


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@needs_data
def test_results_json_matches_the_contract(tiny):
    data, out, _ = tiny
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"dataset", "test_cases", "labeled", "profile", "classes", "split", "plan", "runs", "summary"}
    assert res["dataset"] == "Hippocampus" and res["test_cases"] == 3 and res["labeled"] == 2
    assert res["profile"] == "cpu" and res["classes"] == ["Anterior", "Posterior"]
    split = res["split"]
    assert {"test", "validation", "pool"} <= set(split) and isinstance(split["seed"], int)
    assert (len(split["test"]), len(split["validation"]), len(split["pool"])) == (3, 2, 11)
    plan = res["plan"]
    assert {"patch_size", "spacing", "iterations", "batch_labeled", "batch_unlabeled", "fingerprint"} <= set(plan)
    assert plan["patch_size"] == [32, 48, 32] and plan["spacing"] is None and plan["iterations"] == TINY_ITERATIONS
    assert plan["fingerprint"]["cases"] == 16
    runs = res["runs"]
    assert [(r["method"], r["subset"], r["seed"]) for r in runs] == [
        ("supervised", 0, 0), ("supervised", 1, 0), ("mean_teacher", 0, 0), ("mean_teacher", 1, 0)]
    for r in runs:
        assert tuple(r) == RUN_KEYS
        assert isinstance(r["method"], str) and isinstance(r["subset"], int) and isinstance(r["seed"], int)
        assert isinstance(r["labeled_ids"], list) and len(r["labeled_ids"]) == 2
        assert set(r["labeled_ids"]) <= set(split["pool"])  # never a test or validation case
        assert set(r["dice"]) == set(res["classes"]) and all(_is_num(v) for v in r["dice"].values())
        assert all(_is_num(r[k]) for k in ("dice_mean", "ece", "train_seconds"))
        assert all(r[k] is None or _is_num(r[k]) for k in ("hd95_mean", "asd_mean"))
        assert isinstance(r["iterations"], int) and r["iterations"] == TINY_ITERATIONS
    # each method sees the same subsets, and the subsets differ
    by = {(r["method"], r["subset"]): r["labeled_ids"] for r in runs}
    assert by[("supervised", 0)] == by[("mean_teacher", 0)] and by[("supervised", 1)] == by[("mean_teacher", 1)]
    assert by[("supervised", 0)] != by[("supervised", 1)]
    assert split["subsets"] == [by[("supervised", 0)], by[("supervised", 1)]]
    summ = res["summary"]
    assert list(summ) == ["supervised", "mean_teacher"]
    for m, s in summ.items():
        rare = rare_classes(plan["fingerprint"].get("class_frequency"), res["classes"])
        assert set(s) == {"dice_mean", "dice_std", "dice", "hd95_mean", "ece", "vs_supervised", "vs_mean_teacher"} | (
            {"rare_classes"} if rare else set())
        ds = [r["dice_mean"] for r in runs if r["method"] == m]
        assert s["dice_mean"] == pytest.approx(np.mean(ds)) and s["dice_std"] == pytest.approx(np.std(ds))
        for key in ("vs_supervised", "vs_mean_teacher"):
            assert set(s[key]) == {"diff", "ci95"} and _is_num(s[key]["diff"]) and len(s[key]["ci95"]) == 2
            assert s[key]["ci95"][0] <= s[key]["diff"] <= s[key]["ci95"][1]
    assert summ["supervised"]["vs_supervised"] == {"diff": 0.0, "ci95": [0.0, 0.0]}
    det = json.loads((out / "details.json").read_text())["runs"]
    assert all(set(d["per_case_dice"]) == set(split["test"]) for d in det)
    # the other outputs: the report carries the same numbers, the figure and uncertainty.json exist
    report = (out / "report.md").read_text()
    assert f"{summ['supervised']['dice_mean']:.4f}" in report and "vs supervised" in report
    assert (out / "dice.png").stat().st_size > 1000
    unc = json.loads((out / "uncertainty.json").read_text())
    assert isinstance(unc["signals"], dict)


@needs_data
def test_test_data_replaces_only_the_test_cases(tiny, tmp_path):
    data, out, ids = tiny
    base = json.loads((out / "results.json").read_text())
    held_out = tiny_dataset(tmp_path / "held_out", ids[100:102])  # cases outside the 16
    out2 = tmp_path / "out"
    assert main(["bench", "--data", str(data), "--labeled", "2", "--methods", "supervised", "--subsets", "2",
                 "--seeds", "0", "--iterations", str(TINY_ITERATIONS), "--test-data", str(held_out),
                 "--out", str(out2)]) == 0
    res = json.loads((out2 / "results.json").read_text())
    assert res["test_cases"] == 2
    assert res["split"]["test_data"]["cases"] == ids[100:102]
    for k in ("test", "validation", "pool", "subsets", "seed"):  # training and validation unchanged
        assert res["split"][k] == base["split"][k]
    assert [r["labeled_ids"] for r in res["runs"]] == [r["labeled_ids"] for r in base["runs"][:2]]
    det = json.loads((out2 / "details.json").read_text())["runs"]
    assert all(sorted(d["per_case_dice"]) == ids[100:102] for d in det)


@needs_data
def test_test_data_overlapping_training_is_refused(tiny, tmp_path, capsys):
    data, _, _ = tiny
    rc = main(["bench", "--data", str(data), "--labeled", "2", "--methods", "supervised", "--subsets", "1",
               "--seeds", "0", "--iterations", "1", "--test-data", str(data), "--out", str(tmp_path / "o")])
    assert rc == 2  # the training folder itself as --test-data: its pool cases would be reported on
    assert "among the training/validation cases" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


@needs_data
def test_reuse_runs_evaluates_finished_runs_without_training(tiny, tmp_path):
    data, out, _ = tiny
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    base = json.loads((out2 / "results.json").read_text())
    older = out2 / "runs" / "supervised_subset0_seed0" / "model.pt"  # as saved before the error model
    ckpt = torch.load(older, map_location="cpu", weights_only=False)
    assert "error_model" in ckpt and ckpt["metrics"]["iterations"] == TINY_ITERATIONS
    del ckpt["error_model"]
    for key in ("heatmap_validation", "train_seconds", "iterations"):
        ckpt["metrics"].pop(key)
    atomic_torch_save(ckpt, older)
    stale = out2 / "runs" / "supervised_subset1_seed0" / "model.pt"  # fitted before the view pass's own overlap
    ckpt = torch.load(stale, map_location="cpu", weights_only=False)
    del ckpt["error_model"]["settings"]["view_overlap"]
    atomic_torch_save(ckpt, stale)
    states = {p: p.stat().st_mtime_ns for p in (out2 / "runs").glob("*/state.pt")}
    assert main(["bench", "--data", str(data), "--labeled", "2", "--methods", "supervised,mean_teacher",
                 "--subsets", "2", "--seeds", "0", "--profile", "cpu", "--iterations", str(TINY_ITERATIONS),
                 "--reuse-runs", "--out", str(out2)]) == 0
    assert {p: p.stat().st_mtime_ns for p in states} == states  # nothing trained again
    res = json.loads((out2 / "results.json").read_text())
    for key in ("dice_mean", "train_seconds", "iterations", "labeled_ids"):
        assert [r[key] for r in res["runs"]] == [r[key] for r in base["runs"]]
    assert all(d["reused"] for d in json.loads((out2 / "details.json").read_text())["runs"])
    refitted = torch.load(older, map_location="cpu", weights_only=False)
    assert "error_model" in refitted and refitted["metrics"]["heatmap_validation"]["cases"] == 2
    refitted = torch.load(stale, map_location="cpu", weights_only=False)  # its heatmap is measured: refitted
    assert refitted["error_model"]["settings"]["view_overlap"] == 0.0
    unc = json.loads((out2 / "uncertainty.json").read_text())
    sup = unc["by_model"]["supervised"]
    assert tuple(sup["signals"]) == SIGNALS and len(sup["per_seed"]) == 2
    for s in sup["signals"].values():
        assert 0.0 <= s["auprc"] <= 1.0 and 0.0 <= s["error_recall_at_5pct"] <= 1.0 and s["seconds_per_case"] >= 0
    assert "## Error detection (supervised model" in (out2 / "report.md").read_text()


@needs_data
def test_update_reruns_some_methods_and_keeps_the_others(tiny, tmp_path, capsys):
    data, out, _ = tiny
    out2 = tmp_path / "out"
    shutil.copytree(out, out2, ignore=shutil.ignore_patterns("runs"))  # the earlier runs' checkpoints are gone
    base = json.loads((out2 / "results.json").read_text())
    base_details = json.loads((out2 / "details.json").read_text())["runs"]
    args = ["bench", "--data", str(data), "--labeled", "2", "--seeds", "0", "--profile", "cpu",
            "--iterations", str(TINY_ITERATIONS), "--update", "--out", str(out2)]
    # refused, nothing written: another subset count, or without a method whose error detection is measured
    assert main([*args, "--methods", "supervised,synergypl", "--subsets", "1"]) == 2
    assert "measured a different split" in capsys.readouterr().err
    assert main([*args, "--methods", "synergypl", "--subsets", "2"]) == 2
    assert "must include synergypl, supervised" in capsys.readouterr().err
    assert json.loads((out2 / "results.json").read_text()) == base and not (out2 / "runs").exists()  # nor trained
    broken = tmp_path / "broken"  # an earlier bench whose per-case results lost a run
    shutil.copytree(out2, broken)
    (broken / "details.json").write_text(json.dumps({"runs": base_details[:-1]}))
    assert main([*args[:-1], str(broken), "--methods", "supervised,synergypl", "--subsets", "2"]) == 2
    assert "has no per-case results for [('mean_teacher', 1, 0)]" in capsys.readouterr().err

    assert main([*args, "--methods", "supervised,synergypl", "--subsets", "2"]) == 0
    res = json.loads((out2 / "results.json").read_text())
    assert [(r["method"], r["subset"]) for r in res["runs"]] == [
        ("supervised", 0), ("supervised", 1), ("mean_teacher", 0), ("mean_teacher", 1), ("synergypl", 0),
        ("synergypl", 1)]
    assert list(res["summary"]) == ["supervised", "mean_teacher", "synergypl"]
    assert res["runs"][2:4] == base["runs"][2:4]  # carried over as they were
    details = json.loads((out2 / "details.json").read_text())["runs"]
    assert details[2:4] == base_details[2:4] and not any(d["reused"] for d in details[:2] + details[4:])
    # supervised was trained again from scratch: the same code, split and seed give the same model
    for again, before in zip(res["runs"][:2], base["runs"][:2], strict=True):
        assert again["dice_mean"] == pytest.approx(before["dice_mean"], abs=1e-6)
    assert res["summary"]["mean_teacher"]["dice_mean"] == pytest.approx(base["summary"]["mean_teacher"]["dice_mean"])
    unc = json.loads((out2 / "uncertainty.json").read_text())
    assert len(unc["per_seed"]) == 2 and len(unc["by_model"]["supervised"]["per_seed"]) == 2


@needs_data
def test_warmup_is_planned_for_the_warm_starting_methods_and_guards_update_and_reuse(tiny, tmp_path, capsys):
    data, out, _ = tiny
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    base = json.loads((out2 / "results.json").read_text())
    assert base["plan"]["warmup_fraction"] is None  # the methods' defaults
    args = ["bench", "--data", str(data), "--labeled", "2", "--subsets", "2", "--seeds", "0", "--profile", "cpu",
            "--iterations", str(TINY_ITERATIONS), "--update", "--reuse-runs", "--out", str(out2)]
    states = {p.parent.name: p.stat().st_mtime_ns for p in (out2 / "runs").glob("*/state.pt")}
    assert main([*args, "--methods", "supervised,synergypl", "--warmup", "1.2"]) == 2
    assert "--warmup must lie in [0, 1)" in capsys.readouterr().err
    # the carried mean_teacher runs were trained with their default warm start: refused before training
    assert main([*args, "--methods", "supervised,synergypl", "--warmup", "0.5"]) == 2
    assert "trained mean_teacher with another warm start (None against 0.5" in capsys.readouterr().err
    assert json.loads((out2 / "results.json").read_text()) == base
    assert not (out2 / "runs" / "synergypl_subset0_seed0").exists()

    assert main([*args, "--methods", "supervised,mean_teacher,synergypl", "--warmup", "0.5"]) == 0
    res = json.loads((out2 / "results.json").read_text())
    assert res["plan"]["warmup_fraction"] == 0.5
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out2 / "runs").glob("*/state.pt")}
    for k in (0, 1):  # supervised does not warm-start: reused; mean_teacher had another warm start: trained again
        assert after[f"supervised_subset{k}_seed0"] == states[f"supervised_subset{k}_seed0"]
        assert after[f"mean_teacher_subset{k}_seed0"] != states[f"mean_teacher_subset{k}_seed0"]
    for method, share, warm_iterations in (("mean_teacher", 0.5, 2), ("synergypl", 0.5, 2), ("supervised", None, 0)):
        ckpt = torch.load(out2 / "runs" / f"{method}_subset0_seed0" / "model.pt", map_location="cpu",
                          weights_only=False)
        assert ckpt["config"]["train"]["warmup_fraction"] == share
        assert ckpt["metrics"]["warmup_iterations"] == warm_iterations  # 0.5 of 4 (the default 0.3 gives 1)
    assert "warm start 0.5 of the iterations for mean_teacher and synergypl" in (out2 / "report.md").read_text()


@needs_data
def test_a_run_is_reused_only_when_trained_with_the_same_budget_and_warm_start(tiny):
    from SynergyPLLib.harness.bench import run_config, trained_as

    data, out, _ = tiny
    res = json.loads((out / "results.json").read_text())
    checkpoint = out / "runs" / "mean_teacher_subset0_seed0" / "model.pt"

    def cfg(method="mean_teacher", iterations=None, warmup=None):
        return run_config("cpu", ["background", *res["classes"]], method, 0,
                          {**res["plan"], "warmup_fraction": warmup}, iterations)

    assert trained_as(checkpoint, cfg())
    assert trained_as(checkpoint, cfg(warmup=0.3))  # the default written out is the same warm start
    assert not trained_as(checkpoint, cfg(warmup=0.5))
    assert not trained_as(checkpoint, cfg(iterations=TINY_ITERATIONS + 1))
    # the plan's warm start is for the methods that warm-start: sgrs stays as published, from scratch
    assert cfg("sgrs", warmup=0.5).train.warmup_fraction is None
    assert cfg("synergypl", warmup=0.5).train.warmup_fraction == 0.5
