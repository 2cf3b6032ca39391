"""Ablations of ``synergypl`` on the validation split: what each piece of the method is worth.

Each variant changes one config key from the ``synergypl`` defaults (``VARIANTS``); every variant is
trained on the same labeled subsets and seeds as the benchmark (:func:`..bench.draw_subsets` on the
same split) and scored on the **validation** split only (mean Dice and Dice per class, with the same
metrics as the benchmark's test figures), so the table can be used to choose defaults without looking
at test cases. ``supervised`` and ``synergypl`` (all on) are the reference rows.

``reuse`` points at a benchmark's ``runs/`` folder: a reference row whose checkpoint is there
(``supervised_subset0_seed0/model.pt``...) and was trained with the same iteration budget is scored on
validation without training it again.

Each row also records the config its checkpoints were trained with (``config``, dotted keys). Defaults move
between measurements, and a table keeps rows measured earlier: ``ablation.md`` marks a synergypl row whose
config differs from the ``synergypl`` row in more than its own override, and names the keys.

Out: ``OUT/ablation.json`` ``{"dataset", "labeled", "profile", "split_seed", "subsets", "plan", "iterations"
(what each run trained: the plan's or ``iterations``), "variants":
{name: {"overrides", "runs": [{"subset", "seed", "val_dice", "val_dice_per_class", "train_seconds",
"reused"}], "val_dice_mean", "val_dice_std", "val_dice_per_class", "config"}}}`` and ``OUT/ablation.md``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.config import EngineConfig
from ..engine.data import LoadedCase, load_decathlon
from ..engine.planning import comparable_plan
from ..engine.trainer import Trainer
from .bench import (
    SPLIT_SEED,
    _dataset_name,
    _loaded,
    bench_plan,
    draw_subsets,
    evaluate,
    make_split,
    run_config,
    trained_as,
)
from .parallel import run_jobs

# name -> (method, {dotted config key: value}); one change each from the synergypl defaults
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "supervised": ("supervised", {}),
    "synergypl": ("synergypl", {}),
    "no_warm_start": ("synergypl", {"train.warmup_fraction": 0.0}),
    "warm_start_0.5": ("synergypl", {"train.warmup_fraction": 0.5}),
    "warm_start_0.7": ("synergypl", {"train.warmup_fraction": 0.7}),
    "unlabeled_weight_0.5": ("synergypl", {"train.unlabeled_weight": 0.5}),
    "mixup": ("synergypl", {"train.synergy.mix": "mixup"}),
    "margin_bar": ("synergypl", {"train.synergy.bar": "margin"}),
    "fixed_tau": ("synergypl", {"train.synergy.select_tau": False}),
    "no_offset": ("synergypl", {"train.synergy.select_offset": False}),
    "track_offset": ("synergypl", {"train.synergy.track_offset": True}),
    "no_similarity": ("synergypl", {"train.soft.similarity": False}),
    "no_rare_boost": ("synergypl", {"train.soft.rare_boost": False}),
    "no_calibration": ("synergypl", {"train.soft.calibrate": False}),
    "no_augmentation": ("synergypl", {"train.augment.enabled": False}),
    "no_lr_decay": ("synergypl", {"train.lr_schedule": "none"}),
    "sgrs": ("sgrs", {}),
}
# what must match for an existing ablation.json's rows to stay in the same table
_SAME_TABLE = ("dataset", "labeled", "profile", "split_seed", "subsets", "seeds", "plan", "iterations")


def apply_overrides(cfg: EngineConfig, overrides: dict[str, Any]) -> EngineConfig:
    """Set dotted keys (``"train.synergy.mix"``) on ``cfg`` in place; an unknown key is a ValueError."""
    for key, value in overrides.items():
        *path, name = key.split(".")
        target = cfg
        for part in path:
            target = getattr(target, part, None)
            if target is None:
                raise ValueError(f"unknown config key {key!r}")
        if not hasattr(target, name):
            raise ValueError(f"unknown config key {key!r}")
        setattr(target, name, value)
    return cfg


# not part of what a variant is: the seed varies by run, the heatmap's fit is off for every ablation run
_NOT_COMPARED = ("train.seed", "inference.fit_error_model")
NOT_A_SETTING = "<not a setting then>"  # :func:`beyond_override`'s value for a key the row's config lacks


def flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """A checkpoint's nested ``config`` as ``{"train.synergy.mix": "copy_paste", ...}`` (sequences kept whole,
    as lists: a row just trained compares equal to one read back from ablation.json)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif name not in _NOT_COMPARED:
            flat[name] = json.loads(json.dumps(value))
    return flat


def trained_config(checkpoint: Path) -> dict[str, Any]:
    """The flat config a checkpoint was trained with (:func:`flat_config`)."""
    from ..engine.model import load_checkpoint

    return flat_config(load_checkpoint(checkpoint)["config"])


def shared_config(configs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The keys on which all ``configs`` agree, with their values; ``None`` for no configs."""
    if not configs:
        return None
    return {k: v for k, v in configs[0].items() if all(c.get(k) == v for c in configs)}


def beyond_override(doc: dict) -> dict[str, dict[str, Any] | None]:
    """For each synergypl variant but ``synergypl``: the keys (and its values; ``NOT_A_SETTING`` for a key its
    config lacks) where its config differs from the ``synergypl`` row's besides its own override, i.e. rows
    measured under other defaults; ``None`` when either row has no recorded config. Empty when the table has
    no ``synergypl`` row."""
    variants = doc["variants"]
    ref = variants.get("synergypl", {}).get("config")
    out: dict[str, dict[str, Any] | None] = {}
    if "synergypl" not in variants:
        return out
    for name, row in variants.items():
        if name == "synergypl" or row.get("method", VARIANTS.get(name, ("",))[0]) != "synergypl":
            continue
        mine = row.get("config")
        if ref is None or mine is None:
            out[name] = None
            continue
        out[name] = {k: mine.get(k, NOT_A_SETTING) for k in sorted(set(ref) | set(mine))
                     if k not in row["overrides"] and (k not in mine or k not in ref or mine[k] != ref[k])}
    return out


def run_variant(data: str, variant: str, subset: int, labeled_ids: list[str], seed: int, profile: str,
                plan: dict, iterations: int | None, split_seed: int, work_dir: str, threads: int,
                reuse: str | None = None) -> dict:
    """Train one (variant, subset, seed), or reuse its benchmark checkpoint; score it on validation."""
    torch.set_num_threads(threads)
    method, overrides = VARIANTS[variant]
    classes, _ = load_decathlon(data)
    cfg = apply_overrides(run_config(profile, classes, method, seed, plan, iterations), overrides)
    cfg.inference.fit_error_model = False  # the table is about Dice; the heatmap's fit would cost a minute a run
    classes, split, pool, val = _loaded(data, split_seed, cfg.preprocess)
    reused = None
    if reuse and not overrides:
        candidate = Path(reuse) / f"{method}_subset{subset}_seed{seed}" / "model.pt"
        reused = candidate if candidate.exists() and trained_as(candidate, cfg) else None
    t0 = time.perf_counter()
    if reused is None:
        chosen = set(labeled_ids)
        lab = [c for c in pool if c.id in chosen]
        unl = [] if method == "supervised" else [LoadedCase(c.id, c.image, None, c.volume)
                                                 for c in pool if c.id not in chosen]
        out_dir = Path(work_dir) / f"{variant}_subset{subset}_seed{seed}"
        checkpoint = Trainer(cfg, lab, unl, val, out_dir).run().checkpoint
    else:
        checkpoint = reused
    train_seconds = time.perf_counter() - t0 if reused is None else None
    m = evaluate(Path(checkpoint), split.validation, classes, uncertainty=False)
    return {"variant": variant, "subset": subset, "seed": seed, "val_dice": m["dice_mean"],
            "val_dice_per_class": m["dice"], "train_seconds": None if train_seconds is None else round(train_seconds, 1),
            "reused": str(reused) if reused else None, "config": trained_config(Path(checkpoint))}


def summarize_variant(runs: list[dict], classes: list[str]) -> dict:
    """Mean and std over runs of the validation Dice, the mean per class, and the config the runs share
    (``config``: keys on which the runs disagree, other than the seed, are left out)."""
    d = np.array([r["val_dice"] for r in runs], dtype=float)
    shared = shared_config([r.pop("config") for r in runs if "config" in r])
    return {"val_dice_mean": float(d.mean()), "val_dice_std": float(d.std(ddof=0)),
            "val_dice_per_class": {c: float(np.mean([r["val_dice_per_class"][c] for r in runs])) for c in classes},
            "config": shared}


def write_markdown(doc: dict, out: Path) -> None:
    classes = doc["classes"]
    ref = doc["variants"].get("synergypl", {}).get("val_dice_mean")
    lines = [f"# Ablation of synergypl: {doc['dataset']}, {doc['labeled']} labeled (validation split)", "",
             f"{len(doc['subsets'])} labeled subset(s) x seeds {doc['seeds']}, profile `{doc['profile']}`, "
             f"{doc.get('iterations', doc['plan'].get('iterations'))} iterations per run, "
             f"split seed {doc['split_seed']}; validation Dice (mean ± std over runs). Never test cases.", "",
             "| variant | overrides | val Dice | vs synergypl | " + " | ".join(classes) + " | runs |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in classes) + " | --- |"]
    stale = beyond_override(doc)
    notes = []
    for name, v in doc["variants"].items():
        keys = ", ".join(f"`{k}: {json.dumps(x)}`" for k, x in v["overrides"].items()) or \
            ("`method: supervised`" if name == "supervised" else "defaults")
        vs = "" if ref is None or name == "synergypl" else f"{100 * (v['val_dice_mean'] - ref):+.2f}"
        per = " | ".join(f"{v['val_dice_per_class'][c]:.4f}" for c in classes)
        mark = ""
        if name in stale and stale[name] != {}:
            notes.append(f"{len(notes) + 1}. `{name}`: " + (
                "no recorded config (measured before the table recorded them); it may differ from the synergypl "
                "row in more than its override." if stale[name] is None else
                "measured under other defaults; it also differs from the synergypl row in "
                + ", ".join(f"`{k}` ({x[1:-1]})" if x == NOT_A_SETTING else f"`{k}: {json.dumps(x)}`"
                            for k, x in stale[name].items())
                + ". Compare it with a row that shares those settings."))
            mark = f" ({len(notes)})"
        lines.append(f"| {name}{mark} | {keys} | {v['val_dice_mean']:.4f} ± {v['val_dice_std']:.4f} | {vs} | {per} | "
                     f"{len(v['runs'])} |")
    if notes:
        lines += ["", "Rows that differ from synergypl in more than their override:", "", *notes]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")


def merged_variants(previous: Path, doc: dict, measured: dict[str, dict]) -> dict[str, dict]:
    """``measured`` plus the rows of an earlier ``ablation.json`` of the same table (``_SAME_TABLE``: dataset,
    subsets, seeds, split, plan, iterations) not re-run, in ``VARIANTS`` order: running one variant again never
    drops the others. A table of other settings is replaced whole (its rows are not comparable)."""
    rows = dict(measured)
    if previous.exists():
        try:
            old = json.loads(previous.read_text())
        except ValueError:
            old = {}
        same_plan = comparable_plan(old.get("plan") or {}) == comparable_plan(doc["plan"])
        if same_plan and all(old.get(k) == doc[k] for k in _SAME_TABLE if k != "plan"):
            for name, row in old.get("variants", {}).items():
                rows.setdefault(name, row)
    order = list(VARIANTS)
    return dict(sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def fill_recorded_configs(variants: dict[str, dict], runs_dir: Path) -> None:
    """Give rows measured before configs were recorded their ``config``, read from their checkpoints when these
    are still on disk (``runs_dir/<variant>_subset<k>_seed<s>/model.pt``, or the reused benchmark checkpoint)."""
    for name, row in variants.items():
        if row.get("config") is not None:
            continue
        paths = [Path(r["reused"]) if r.get("reused") else runs_dir / f"{name}_subset{r['subset']}_seed{r['seed']}"
                 / "model.pt" for r in row.get("runs", [])]
        if paths and all(p.exists() for p in paths):
            row["config"] = shared_config([trained_config(p) for p in paths])


def run_ablation(data: str, labeled: int, variants: list[str], seeds: list[int], profile: str, out: str,
                 subsets: int = 3, workers: int = 1, iterations: int | None = None, reuse: str | None = None,
                 split_seed: int = SPLIT_SEED, progress: bool = True, resolution: str = "full") -> dict:
    """Every (variant, subset, seed) on validation, at the plan's ``resolution`` (``full`` or ``low``);
    writes ablation.json and ablation.md under ``out``."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    classes, cases = load_decathlon(data)
    split = make_split(cases, split_seed)
    plan = bench_plan(data, profile, len(split.validation), resolution=resolution).to_dict()
    plan.pop("fingerprint", None)
    subset_ids = draw_subsets([c.id for c in split.pool], labeled, subsets)
    jobs = [(v, k, s) for s in seeds for k in range(len(subset_ids)) for v in variants]
    args = dict(data=str(data), profile=profile, plan=plan, iterations=iterations, split_seed=split_seed,
                work_dir=str(out_path / "runs"), threads=max(1, (os.cpu_count() or 1) // max(1, workers)),
                reuse=reuse)
    calls = [dict(variant=v, subset=k, labeled_ids=subset_ids[k], seed=s, **args) for v, k, s in jobs]
    done = run_jobs(run_variant, calls, workers=workers, desc=f"ablation {_dataset_name(data)}", progress=progress,
                    describe=lambda r: f"{r['variant']}/subset{r['subset']} val={r['val_dice']:.3f}")
    fg = classes[1:]
    doc = {"dataset": _dataset_name(data), "labeled": labeled, "profile": profile, "split_seed": split_seed,
           "subsets": subset_ids, "seeds": seeds, "classes": fg, "plan": plan,
           "iterations": iterations or plan["iterations"], "variants": {}}
    measured = {}
    for v in variants:
        runs = sorted((r for r in done if r["variant"] == v), key=lambda r: (r["subset"], r["seed"]))
        measured[v] = {"method": VARIANTS[v][0], "overrides": VARIANTS[v][1], "runs": runs,
                       **summarize_variant(runs, fg)}
    doc["variants"] = merged_variants(out_path / "ablation.json", doc, measured)
    fill_recorded_configs(doc["variants"], out_path / "runs")
    (out_path / "ablation.json").write_text(json.dumps(doc, indent=2))
    write_markdown(doc, out_path)
    return doc
