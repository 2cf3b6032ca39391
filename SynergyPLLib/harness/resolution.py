"""Choose the plan's resolution on the validation split, as nnU-Net chooses between its configurations.

The planner (engine/planning.py) offers a low-resolution candidate when the full-resolution patch sees less
than a quarter of the median case (:func:`~..engine.planning.resolutions`). Which one segments better is an
empirical question, so :func:`choose_resolution` trains **supervised** (the baseline, so the choice favours
no semi-supervised method) on the benchmark's own labeled subsets and seeds at each candidate, scores each
on the **validation** split, and keeps the higher mean Dice (``full`` on a tie, or when there is one
candidate: nothing is trained then). Every method of a benchmark then trains at the chosen plan.

Out: ``OUT/resolution.json`` ``{"dataset", "labeled", "profile", "split_seed", "subsets", "seeds", "method":
"supervised", "candidates": {resolution: {"plan", "runs": [{"subset", "seed", "val_dice", "train_seconds"}],
"val_dice_mean", "val_dice_std"}}, "chosen"}``. A later bench into the same folder with the same settings
reads the choice instead of training again (:func:`resolution_for`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..engine.data import load_decathlon
from ..engine.planning import fingerprint, plan, resolutions
from .ablation import run_variant
from .bench import SPLIT_SEED, _dataset_name, draw_subsets, make_split
from .parallel import run_jobs

_SAME_CHOICE = ("dataset", "labeled", "profile", "split_seed", "subsets", "seeds", "iterations")


def _settings(data: str, labeled: int, profile: str, split_seed: int, subsets: int, seeds, iterations) -> tuple:
    """(what a choice was made with, the ``_SAME_CHOICE`` keys, the split)."""
    _, cases = load_decathlon(data)
    split = make_split(cases, split_seed)
    return ({"dataset": _dataset_name(data), "labeled": labeled, "profile": profile, "split_seed": split_seed,
             "subsets": draw_subsets([c.id for c in split.pool], labeled, subsets), "seeds": list(seeds),
             "iterations": iterations}, split)


def choose_resolution(data: str, labeled: int, profile: str, out: str, subsets: int = 3, seeds: list[int] = (0,),
                      split_seed: int = SPLIT_SEED, workers: int = 1, progress: bool = True,
                      iterations: int | None = None) -> dict:
    """Train supervised at every candidate resolution, score on validation; write and return the choice.
    ``iterations`` overrides each plan's budget (tests, quick looks; recorded)."""
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    settings, split = _settings(data, labeled, profile, split_seed, subsets, seeds, iterations)
    subset_ids = settings["subsets"]
    fp = fingerprint(data)
    doc = {**settings, "method": "supervised", "candidates": {}, "chosen": "full"}
    candidates = resolutions(fp, profile)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    for resolution in candidates:
        p = plan(fp, profile, n_validation=len(split.validation), resolution=resolution).to_dict()
        p.pop("fingerprint")
        entry = {"plan": p, "runs": []}
        if len(candidates) > 1:
            calls = [dict(data=str(data), variant="supervised", subset=k, labeled_ids=subset_ids[k], seed=s,
                          profile=profile, plan=p, iterations=iterations, split_seed=split_seed,
                          work_dir=str(out_path / "runs" / resolution), threads=threads)
                     for s in seeds for k in range(len(subset_ids))]
            done = run_jobs(run_variant, calls, workers=workers, desc=f"resolution {resolution}", progress=progress,
                            describe=lambda r: f"subset{r['subset']} val={r['val_dice']:.3f}")
            entry["runs"] = sorted(({k: r[k] for k in ("subset", "seed", "val_dice", "train_seconds")} for r in done),
                                   key=lambda r: (r["subset"], r["seed"]))
            d = np.array([r["val_dice"] for r in entry["runs"]], dtype=float)
            entry["val_dice_mean"], entry["val_dice_std"] = float(d.mean()), float(d.std(ddof=0))
        doc["candidates"][resolution] = entry
    if len(candidates) > 1:
        doc["chosen"] = max(candidates, key=lambda r: (doc["candidates"][r]["val_dice_mean"], r == "full"))
    (out_path / "resolution.json").write_text(json.dumps(doc, indent=2))
    return doc


def resolution_for(data: str, labeled: int, profile: str, out: str, subsets: int, seeds: list[int],
                   split_seed: int = SPLIT_SEED, workers: int = 1, progress: bool = True,
                   iterations: int | None = None) -> str:
    """The chosen resolution: read from ``OUT/resolution.json`` when it was chosen with these settings,
    else chosen now (:func:`choose_resolution`)."""
    path = Path(out) / "resolution.json"
    try:
        before = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        before = None
    if before is not None:
        now, _ = _settings(data, labeled, profile, split_seed, subsets, seeds, iterations)
        if all(before.get(k) == now[k] for k in _SAME_CHOICE):
            return before["chosen"]
    return choose_resolution(data, labeled, profile, out, subsets, seeds, split_seed, workers, progress,
                             iterations)["chosen"]
