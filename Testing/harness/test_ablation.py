"""The ablation harness: one config key per variant, scored on the validation split only, and a tiny
real run (16 real hippocampus cases, a few iterations) reusing a benchmark's checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
from bench_support import DATA, TINY_ITERATIONS  # the `tiny` fixture is in conftest.py

from SynergyPLLib.cli import main
from SynergyPLLib.engine.config import profile_config
from SynergyPLLib.harness.ablation import VARIANTS, apply_overrides


def test_every_variant_changes_one_known_key_of_the_defaults():
    for name, (method, overrides) in VARIANTS.items():
        cfg = profile_config("cpu", ["background", "a", "b"])
        assert method in ("supervised", "synergypl", "sgrs")
        assert len(overrides) <= 1, name
        for key, value in overrides.items():
            *path, leaf = key.split(".")
            target = cfg
            for part in path:
                target = getattr(target, part)
            assert getattr(target, leaf) != value, f"{name}: {key} is already {value!r} by default"
            apply_overrides(cfg, overrides)
            assert getattr(target, leaf) == value


def test_unknown_keys_are_refused():
    cfg = profile_config("cpu", ["background", "a"])
    with pytest.raises(ValueError, match="train.synergy.nope"):
        apply_overrides(cfg, {"train.synergy.nope": 1})
    with pytest.raises(ValueError, match="nowhere.mix"):
        apply_overrides(cfg, {"nowhere.mix": 1})


def test_unknown_variant_is_refused(tmp_path):
    from SynergyPLLib.harness.ablation import run_ablation

    with pytest.raises(ValueError, match="no_such_variant"):
        run_ablation(str(DATA), 2, ["no_such_variant"], [0], "cpu", str(tmp_path))


@pytest.mark.skipif(not (DATA / "dataset.json").exists(), reason="../shared/data/hippocampus missing")
def test_tiny_ablation_scores_validation_and_reuses_benchmark_checkpoints(tiny, tmp_path):
    data, bench_out, _ = tiny
    out = tmp_path / "ablation"
    rc = main(["bench-ablation", "--data", str(data), "--labeled", "2", "--variants", "supervised,mixup",
               "--subsets", "2", "--seeds", "0", "--iterations", str(TINY_ITERATIONS),
               "--reference-runs", str(bench_out / "runs"), "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "ablation.json").read_text())
    bench = json.loads((bench_out / "results.json").read_text())
    assert doc["subsets"] == bench["split"]["subsets"]  # the benchmark's labeled subsets
    sup, mix = doc["variants"]["supervised"], doc["variants"]["mixup"]
    assert [r["subset"] for r in sup["runs"]] == [0, 1]
    assert all(r["reused"] and r["reused"].endswith(f"supervised_subset{r['subset']}_seed0/model.pt")
               for r in sup["runs"])  # scored, not retrained
    assert all(r["reused"] is None and r["train_seconds"] > 0 for r in mix["runs"])
    assert mix["overrides"] == {"train.synergy.mix": "mixup"}
    assert mix["config"]["train.synergy.mix"] == "mixup" and sup["config"]["train.method"] == "supervised"
    assert all("config" not in r for r in mix["runs"])  # recorded once per row, from the trained checkpoints
    for v in (sup, mix):
        assert 0.0 <= v["val_dice_mean"] <= 1.0
        assert set(v["val_dice_per_class"]) == set(bench["classes"])
    from SynergyPLLib.engine.model import load_checkpoint

    trained = load_checkpoint(out / "runs" / "mixup_subset0_seed0" / "model.pt")
    assert trained["config"]["train"]["synergy"]["mix"] == "mixup"  # the override reached the training
    assert "error_model" not in trained and "skipped" in trained["metrics"]["heatmap_validation"]  # no heatmap fit
    table = (out / "ablation.md").read_text()
    assert "| mixup | `train.synergy.mix: \"mixup\"` |" in table and "validation" in table
    # running one variant again keeps the other rows of the same table (nothing measured is lost)
    rc = main(["bench-ablation", "--data", str(data), "--labeled", "2", "--variants", "supervised",
               "--subsets", "2", "--seeds", "0", "--iterations", str(TINY_ITERATIONS),
               "--reference-runs", str(bench_out / "runs"), "--out", str(out)])
    again = json.loads((out / "ablation.json").read_text())
    assert rc == 0 and list(again["variants"]) == ["supervised", "mixup"] and again["iterations"] == TINY_ITERATIONS
    assert again["variants"]["mixup"] == doc["variants"]["mixup"]
    # another iteration budget: the benchmark's checkpoints do not match it, and the earlier rows are another table
    rc = main(["bench-ablation", "--data", str(data), "--labeled", "2", "--variants", "supervised",
               "--subsets", "1", "--seeds", "0", "--iterations", str(TINY_ITERATIONS + 1),
               "--reference-runs", str(bench_out / "runs"), "--out", str(out)])
    longer = json.loads((out / "ablation.json").read_text())
    assert rc == 0 and longer["iterations"] == TINY_ITERATIONS + 1 and list(longer["variants"]) == ["supervised"]
    assert longer["variants"]["supervised"]["runs"][0]["reused"] is None  # trained, not the shorter checkpoint
    shutil.rmtree(out / "runs")


def test_rows_of_another_table_are_not_merged(tmp_path):
    from SynergyPLLib.harness.ablation import merged_variants

    table = {"dataset": "D", "labeled": 3, "profile": "cpu", "split_seed": 1, "subsets": [["a"]], "seeds": [0],
             "plan": {"iterations": 600}, "iterations": 600}
    row = {"val_dice_mean": 0.5}
    previous = tmp_path / "ablation.json"
    previous.write_text(json.dumps({**table, "variants": {"mixup": row, "supervised": row}}))
    new = {"synergypl": {"val_dice_mean": 0.6}}
    assert list(merged_variants(previous, table, new)) == ["supervised", "synergypl", "mixup"]  # VARIANTS order
    assert merged_variants(previous, {**table, "plan": {"iterations": 300}}, new) == new  # another plan
    # a table planned before the plan recorded these fields planned with their defaults; timings are not compared
    written_now = {"iterations": 600, "resolution": "full", "warmup_fraction": None, "seconds_per_iteration": 0.3}
    assert list(merged_variants(previous, {**table, "plan": written_now}, new)) == ["supervised", "synergypl", "mixup"]
    assert merged_variants(previous, {**table, "plan": {**written_now, "resolution": "low"}}, new) == new
    assert merged_variants(previous, {**table, "plan": {**written_now, "warmup_fraction": 0.5}}, new) == new
    assert merged_variants(previous, {**table, "iterations": 1200}, new) == new  # --iterations
    assert merged_variants(previous, {**table, "subsets": [["b"]]}, new) == new  # other labeled cases
    previous.write_text("{not json")
    assert merged_variants(previous, table, new) == new


def test_rows_measured_under_other_defaults_are_marked(tmp_path):
    from SynergyPLLib.harness.ablation import NOT_A_SETTING, beyond_override, flat_config, write_markdown

    ref = flat_config({"train": {"seed": 0, "warmup_fraction": None, "synergy": {"mix": "copy_paste",
                                                                               "select_offset": True}}})
    assert ref == {"train.warmup_fraction": None, "train.synergy.mix": "copy_paste",
                   "train.synergy.select_offset": True}  # the seed is not part of a variant
    # a config just trained has tuples, one read back from ablation.json lists: the same setting
    fresh = flat_config({"train": {"patch_size": (40, 40, 40), "synergy": {"tau_grid": (0.9, 0.95)}}})
    assert fresh == json.loads(json.dumps(fresh)) == {"train.patch_size": [40, 40, 40],
                                                      "train.synergy.tau_grid": [0.9, 0.95]}
    row = {"runs": [{}], "val_dice_mean": 0.7, "val_dice_std": 0.0, "val_dice_per_class": {"a": 0.7}}
    doc = {"dataset": "D", "labeled": 4, "profile": "cpu", "seeds": [0], "subsets": [["x"]], "split_seed": 1,
           "plan": {"iterations": 10}, "iterations": 10, "classes": ["a"], "variants": {
               "supervised": {**row, "method": "supervised", "overrides": {}, "config": {"train.method": "supervised"}},
               "synergypl": {**row, "method": "synergypl", "overrides": {}, "config": ref},
               "mixup": {**row, "method": "synergypl", "overrides": {"train.synergy.mix": "mixup"},
                         "config": {**ref, "train.synergy.mix": "mixup"}},
               "warm_start_0.5": {**row, "method": "synergypl", "overrides": {"train.warmup_fraction": 0.5},
                                  "config": {**ref, "train.warmup_fraction": 0.5,
                                             "train.synergy.select_offset": False}},
               "warm_start_0.7": {**row, "method": "synergypl", "overrides": {"train.warmup_fraction": 0.7},
                                  "config": {"train.warmup_fraction": 0.7, "train.synergy.mix": "copy_paste"}},
               "no_similarity": {**row, "method": "synergypl", "overrides": {"train.soft.similarity": False},
                                 "config": None}}}
    assert beyond_override(doc) == {"mixup": {}, "warm_start_0.5": {"train.synergy.select_offset": False},
                                    "warm_start_0.7": {"train.synergy.select_offset": NOT_A_SETTING},
                                    "no_similarity": None}
    write_markdown(doc, tmp_path)
    table = (tmp_path / "ablation.md").read_text()
    assert "| mixup | " in table and "| supervised | " in table  # one change each: no mark
    assert "| warm_start_0.5 (1) | " in table and "| no_similarity (3) | " in table
    assert "1. `warm_start_0.5`: measured under other defaults; it also differs from the synergypl row in " \
           "`train.synergy.select_offset: false`" in table
    assert "2. `warm_start_0.7`: measured under other defaults; it also differs from the synergypl row in " \
           "`train.synergy.select_offset` (not a setting then)." in table
    assert "3. `no_similarity`: no recorded config" in table
