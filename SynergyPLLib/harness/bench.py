"""The benchmark of ``../shared/BENCHMARK.md``: methods x seeds on a fixed split, test metrics,
error detection of the heatmap against baselines, and the report.

Split (fixed by ``SPLIT_SEED``, written to the results): 40 test, 20 validation, 140 training pool; the
labeled subset is the first ``labeled`` cases of the shuffled pool (the same for every method and seed,
so seeds vary only training randomness). Checkpoints and temperatures are chosen on validation only.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..engine.calibration import classwise_ece, expected_calibration_error
from ..engine.config import EngineConfig, profile_config
from ..engine.data import CaseSpec, LoadedCase, Preprocessor, load_cases, load_decathlon
from ..engine.inference import Predictor
from ..engine.io import read_volume
from ..engine.metrics import segmentation_metrics
from ..engine.trainer import Trainer
from ..engine.uncertainty import (
    ErrorDetectionAccumulator,
    entropy_confidence,
    mc_dropout_confidence,
    tta_flip_confidence,
)
from .figures import dice_figure

SPLIT_SEED = 20240611
N_TEST, N_VAL = 40, 20
SIGNALS = ("synergy", "entropy", "mc_dropout", "tta_flip")


@dataclass
class Split:
    test: list[CaseSpec]
    validation: list[CaseSpec]
    pool: list[CaseSpec]

    def ids(self) -> dict[str, list[str]]:
        return {k: [c.id for c in getattr(self, k)] for k in ("test", "validation", "pool")}


def make_split(cases: list[CaseSpec], seed: int = SPLIT_SEED, n_test: int = N_TEST, n_val: int = N_VAL) -> Split:
    """Shuffle case order with ``seed`` and cut test / validation / pool."""
    if len(cases) < n_test + n_val + 2:
        raise ValueError(f"{len(cases)} cases are too few for {n_test} test + {n_val} validation + a pool")
    order = np.random.default_rng(seed).permutation(len(cases))
    shuffled = [cases[i] for i in order]
    return Split(shuffled[:n_test], shuffled[n_test:n_test + n_val], shuffled[n_test + n_val:])


def run_config(profile: str, classes: list[str], method: str, seed: int, iterations: int | None) -> EngineConfig:
    cfg = profile_config(profile, classes)
    cfg.train.method = method
    cfg.train.seed = seed
    if iterations:
        cfg.train.iterations = iterations
    return cfg


# ---- one (method, seed) run: train, then evaluate on the test cases -----------------------------
_CACHE: dict = {}


def _loaded(data: str, test_data: str | None, labeled: int, full: bool):
    """Per-process cache of preprocessed cases (the bench runs many jobs on the same data)."""
    key = (data, test_data, labeled)
    if key not in _CACHE:
        classes, cases = load_decathlon(data)
        split = make_split(cases)
        pre = Preprocessor(EngineConfig(classes=classes).preprocess)
        pool = load_cases(split.pool, pre, len(classes))
        val = load_cases(split.validation, pre, len(classes))
        _CACHE[key] = (classes, split, pool, val)
    classes, split, pool, val = _CACHE[key]
    lab = pool if full else pool[:labeled]
    unl = [] if full else [LoadedCase(c.id, c.image, None, c.volume) for c in pool[labeled:]]
    return classes, split, lab, unl, val


def test_cases(split: Split, test_data: str | None) -> list[CaseSpec]:
    if test_data:
        return load_decathlon(test_data)[1]
    return split.test


def evaluate(model_path: Path, cases: list[CaseSpec], classes: list[str], uncertainty: bool) -> dict:
    """Test metrics of one checkpoint; with ``uncertainty``, error detection of every signal."""
    predictor = Predictor.from_checkpoint(model_path)
    per_case, probs_all, labels_all = [], [], []
    acc = {s: ErrorDetectionAccumulator() for s in SIGNALS} if uncertainty else {}
    seconds = {s: 0.0 for s in SIGNALS}
    predict_probs = lambda x: predictor.window.probabilities(x, predictor.temperature)  # noqa: E731
    for spec in cases:
        image = read_volume(spec.image)
        truth = read_volume(spec.label, allow_constant=True).array.astype(np.int64)
        t0 = time.perf_counter()
        pred = predictor.predict(image, heatmap=False)
        plain_seconds = time.perf_counter() - t0
        per_case.append(segmentation_metrics(pred.label.array, truth, len(classes), image.spacing, class_names=classes))
        probs_all.append(pred.probabilities.reshape(len(classes), -1).T)
        labels_all.append(truth.reshape(-1))
        if not uncertainty:
            continue
        is_error = pred.label.array != truth
        t0 = time.perf_counter()
        full = predictor.predict(image, heatmap=True)
        seconds["synergy"] += time.perf_counter() - t0
        acc["synergy"].add(full.heatmap.array, is_error)
        t0 = time.perf_counter()
        acc["entropy"].add(entropy_confidence(pred.probabilities), is_error)
        seconds["entropy"] += plain_seconds + time.perf_counter() - t0
        x = predictor.pre.image(image).as_tensor()[None]
        t0 = time.perf_counter()
        conf, _ = mc_dropout_confidence(predictor.net, predict_probs, x, passes=10)
        seconds["mc_dropout"] += time.perf_counter() - t0
        acc["mc_dropout"].add(_to_grid(predictor, conf, image), is_error)
        t0 = time.perf_counter()
        conf = tta_flip_confidence(predict_probs, x)
        seconds["tta_flip"] += time.perf_counter() - t0
        acc["tta_flip"].add(_to_grid(predictor, conf, image), is_error)
    probs = np.concatenate(probs_all)
    labels = np.concatenate(labels_all)
    fg = range(1, len(classes))
    out = {
        "dice": {classes[c]: float(np.mean([m["dice"][classes[c]] for m in per_case])) for c in fg},
        "dice_mean": float(np.mean([m["dice_mean"] for m in per_case])),
        "hd95_mean": float(np.nanmean([m["hd95_mean"] for m in per_case])),
        "asd_mean": float(np.nanmean([m["asd_mean"] for m in per_case])),
        "ece": float(expected_calibration_error(probs, labels)),
        "ece_classwise": dict(zip(classes, map(float, classwise_ece(probs, labels)), strict=True)),
        "temperature": predictor.temperature,
    }
    if predictor.temperature != 1.0:  # the same model before calibration: softmax(T * log p_T) = softmax(z)
        raw = torch.softmax(predictor.temperature * torch.log(torch.from_numpy(probs).clamp_min(1e-12)), 1).numpy()
        out["ece_before_calibration"] = float(expected_calibration_error(raw, labels))
        out["ece_classwise_before_calibration"] = dict(zip(classes, map(float, classwise_ece(raw, labels)), strict=True))
    if uncertainty:
        out["signals"] = {s: {**acc[s].scores(), "seconds_per_case": seconds[s] / len(cases)} for s in SIGNALS}
    return out


def _to_grid(predictor: Predictor, conf, image) -> np.ndarray:
    """A confidence map on the network grid back onto the image grid."""
    t = torch.as_tensor(np.asarray(conf, dtype=np.float32)).reshape(1, *np.asarray(conf).shape[-3:])
    x = predictor.pre.image(image)
    return predictor.pre.invert(t, x)[0].numpy()


def run_one(data: str, test_data: str | None, labeled: int, method: str, seed: int, profile: str,
            iterations: int | None, work_dir: str, threads: int) -> dict:
    """Train and evaluate one (method, seed); runs in a worker process."""
    torch.set_num_threads(threads)
    classes, split, lab, unl, val = _loaded(data, test_data, labeled, method == "full")
    cfg = run_config(profile, classes, method, seed, iterations)
    out_dir = Path(work_dir) / f"{method}_seed{seed}"
    trainer = Trainer(cfg, lab, unl if method not in ("supervised", "full") else [], val, out_dir)
    result = trainer.run()
    metrics = evaluate(result.checkpoint, test_cases(split, test_data), classes, uncertainty=method == "synergypl")
    return {"method": method, "seed": seed, **{k: v for k, v in metrics.items() if k != "signals"},
            "iterations": result.iterations, "train_seconds": round(result.train_seconds, 2),
            "val_dice": result.best_val_dice, "best_iteration": result.best_iteration,
            "labeled_cases": len(lab), "unlabeled_cases": len(unl) if method not in ("supervised", "full") else 0,
            "_signals": metrics.get("signals")}


def run_bench(data: str, labeled: int, methods: list[str], seeds: list[int], profile: str, out: str,
              test_data: str | None = None, iterations: int | None = None, workers: int = 1,
              progress: bool = True) -> dict:
    """Run every (method, seed), write results.json, uncertainty.json, report.md and dice.png."""
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    classes, cases = load_decathlon(data)
    split = make_split(cases)
    n_test = len(test_cases(split, test_data))
    jobs = [(m, s) for s in seeds for m in methods]
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    runs = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="bench", unit="run")
    args = dict(data=str(data), test_data=test_data, labeled=labeled, profile=profile, iterations=iterations,
                work_dir=str(out_path / "runs"), threads=threads)
    if workers <= 1:
        for m, s in jobs:
            runs.append(run_one(method=m, seed=s, **args))
            if bar:
                bar.update(1)
                bar.set_postfix(last=f"{m}/{s} dice={runs[-1]['dice_mean']:.3f}")
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_one, method=m, seed=s, **args): (m, s) for m, s in jobs}
            for f in as_completed(futures):
                runs.append(f.result())
                if bar:
                    bar.update(1)
                    m, s = futures[f]
                    bar.set_postfix(last=f"{m}/{s} dice={runs[-1]['dice_mean']:.3f}")
    if bar:
        bar.close()
    order = {m: i for i, m in enumerate(methods)}
    runs.sort(key=lambda r: (order[r["method"]], r["seed"]))
    signals = [(r["seed"], r.pop("_signals")) for r in runs]
    results = {
        "dataset": _dataset_name(data), "test_cases": n_test, "labeled": labeled, "profile": profile,
        "classes": classes[1:], "split_seed": SPLIT_SEED, "split": split.ids(),
        "test_data": str(test_data) if test_data else None,
        "runs": runs, "summary": summarize(runs, methods),
    }
    (out_path / "results.json").write_text(json.dumps(results, indent=2))
    unc = uncertainty_summary([s for s in signals if s[1]])
    (out_path / "uncertainty.json").write_text(json.dumps(unc, indent=2))
    write_report(results, unc, out_path)
    return results


def _dataset_name(data: str) -> str:
    try:
        return json.loads((Path(data) / "dataset.json").read_text()).get("name", Path(data).name)
    except (OSError, json.JSONDecodeError):
        return Path(data).name


def summarize(runs: list[dict], methods: list[str]) -> dict:
    out = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        if not rs:
            continue
        d = [r["dice_mean"] for r in rs]
        out[m] = {"dice_mean": float(np.mean(d)), "dice_std": float(np.std(d)),
                  "hd95_mean": float(np.mean([r["hd95_mean"] for r in rs])),
                  "asd_mean": float(np.mean([r["asd_mean"] for r in rs])),
                  "ece": float(np.mean([r["ece"] for r in rs])), "seeds": len(rs),
                  "train_seconds": float(np.mean([r["train_seconds"] for r in rs]))}
    return out


def uncertainty_summary(per_seed: list[tuple[int, dict]]) -> dict:
    """Mean over seeds of each signal's scores (plus the per-seed values and their spread)."""
    if not per_seed:
        return {"signals": {}, "per_seed": []}
    signals = {}
    for s in SIGNALS:
        keys = per_seed[0][1][s].keys()
        signals[s] = {k: float(np.mean([d[s][k] for _, d in per_seed])) for k in keys}
        signals[s]["auroc_std"] = float(np.std([d[s]["auroc"] for _, d in per_seed]))
    return {"signals": signals, "per_seed": [{"seed": seed, "signals": d} for seed, d in per_seed],
            "model": "synergypl", "error": "voxel whose predicted label differs from the reference"}


def write_report(results: dict, unc: dict, out: Path) -> None:
    """report.md (tables) and dice.png (per-method Dice, one dot per seed: :func:`.figures.dice_figure`)."""
    summ, classes = results["summary"], results["classes"]
    lines = [f"# SynergyPL benchmark: {results['dataset']}", "",
             f"{results['labeled']} labeled cases, profile `{results['profile']}`, {results['test_cases']} test cases, "
             f"split seed {results['split_seed']}; mean ± std over seeds. Checkpoints and temperatures were "
             "selected on the validation split only.", "",
             "| method | Dice | " + " | ".join(f"Dice {c}" for c in classes) + " | HD95 (mm) | ASD (mm) | ECE | seeds | train s |",
             "| --- | --- | " + " | ".join("---" for _ in classes) + " | --- | --- | --- | --- | --- |"]
    for m, s in summ.items():
        per = [np.mean([r["dice"][c] for r in results["runs"] if r["method"] == m]) for c in classes]
        lines.append(f"| {m} | {s['dice_mean']:.4f} ± {s['dice_std']:.4f} | " + " | ".join(f"{v:.4f}" for v in per)
                     + f" | {s['hd95_mean']:.2f} | {s['asd_mean']:.2f} | {s['ece']:.4f} | {s['seeds']} | {s['train_seconds']:.0f} |")
    if unc.get("signals"):
        lines += ["", "## Error detection (synergypl model, test voxels)", "",
                  "| signal | AUROC | AUPRC | error recall at 5% flagged | seconds per case |", "| --- | --- | --- | --- | --- |"]
        for name, s in unc["signals"].items():
            lines.append(f"| {name} | {s['auroc']:.4f} ± {s['auroc_std']:.4f} | {s['auprc']:.4f} | "
                         f"{s['error_recall_at_5pct']:.4f} | {s['seconds_per_case']:.3f} |")
    calibrated = [r for r in results["runs"] if "ece_before_calibration" in r]
    if calibrated:
        lines += ["", "## Calibration (test voxels; temperature fitted on the validation split)", "",
                  "| method | seed | T | ECE before | ECE after | " + " | ".join(f"class-wise ECE {c} before / after" for c in ["background", *classes]) + " |",
                  "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in range(len(classes) + 1)) + " |"]
        for r in calibrated:
            per = [f"{r['ece_classwise_before_calibration'][c]:.4f} / {r['ece_classwise'][c]:.4f}"
                   for c in r["ece_classwise"]]
            lines.append(f"| {r['method']} | {r['seed']} | {r['temperature']:.3f} | {r['ece_before_calibration']:.4f} | "
                         f"{r['ece']:.4f} | " + " | ".join(per) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")

    dice_figure(results, out / "dice.png")
