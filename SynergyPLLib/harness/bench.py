"""Benchmark v2 of ``../shared/BENCHMARK.md``: methods x labeled subsets x seeds on a fixed split, the
dataset's plan, test metrics with paired bootstrap intervals, error detection of the heatmap, the report.

Split (fixed by ``split_seed``, written to the results): test = round(20%) of the cases, validation =
max(2, round(10%)), training pool = the rest. ``--subsets K`` draws K different labeled subsets of
``labeled`` cases from the pool (the same K for every method; the rest of the pool is unlabeled);
seeds vary only training randomness. ``full`` labels the whole pool: it does not depend on the subset,
so it runs once per seed (recorded as subset 0) and is paired with every subset of the other methods.
Patch, working spacing, batch and iterations come from :func:`~..engine.planning.plan_dataset`.

Nothing is chosen on test cases: training sees the pool, and checkpoints, temperatures and the heatmap's
error model are chosen by the engine on the validation split; :func:`run_one` checks that no test case
(or ``--test-data`` case) is among the cases it trains or validates on.

Error detection (``uncertainty.json``) is measured for the synergypl and the supervised models, with the
signals of :data:`SIGNALS`: ``synergy`` (the heatmap), ``entropy``, ``mc_dropout`` (10 passes), ``tta`` (8
views with the training's label-preserving augmentations: 1 - normalised entropy of the mean) and
``boundary_distance`` (``d / (1 + d)`` of the distance to the predicted boundary). ``--reuse-runs``
evaluates the runs that finished in an earlier bench into the same folder again without training them.

``results.json`` holds exactly the keys of BENCHMARK.md; what else a run measured (per-case Dice, the
validation Dice, the selected iteration, temperatures, ECE before calibration) is in ``details.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..engine.calibration import classwise_ece, expected_calibration_error
from ..engine.config import DEFAULT_WARMUP, EngineConfig, profile_config, warmup_fraction_for
from ..engine.data import CaseSpec, LoadedCase, Preprocessor, load_cases, load_decathlon
from ..engine.error_model import default_settings, fit_error_model_for_checkpoint
from ..engine.inference import Predictor
from ..engine.io import read_volume
from ..engine.metrics import segmentation_metrics
from ..engine.model import load_checkpoint
from ..engine.planning import Plan, comparable_plan, plan_dataset
from ..engine.trainer import Trainer
from ..engine.uncertainty import (
    ErrorDetectionAccumulator,
    boundary_distance_confidence,
    entropy_confidence,
    mc_dropout_confidence,
    tta_confidence,
)
from .bench_report import SIGNALS, rare_classes, summarize, uncertainty_summary, write_report
from .parallel import run_jobs

SPLIT_SEED = 20240611
SUBSET_SEED = 7
UNCERTAINTY_MODELS = ("synergypl", "supervised")  # the methods whose error detection is measured
RUN_KEYS = ("method", "subset", "labeled_ids", "seed", "dice_mean", "dice", "hd95_mean", "asd_mean", "ece",
            "iterations", "train_seconds")


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_sizes(n: int) -> tuple[int, int, int]:
    """(test, validation, pool) sizes of BENCHMARK.md for ``n`` cases."""
    n_test = _round_half_up(0.2 * n)
    n_val = max(2, _round_half_up(0.1 * n))
    if n - n_test - n_val < 1:
        raise ValueError(f"{n} cases are too few for {n_test} test + {n_val} validation cases and a pool")
    return n_test, n_val, n - n_test - n_val


@dataclass
class Split:
    test: list[CaseSpec]
    validation: list[CaseSpec]
    pool: list[CaseSpec]
    seed: int = SPLIT_SEED

    def ids(self) -> dict[str, list[str]]:
        return {k: [c.id for c in getattr(self, k)] for k in ("test", "validation", "pool")}


def make_split(cases: list[CaseSpec], seed: int = SPLIT_SEED) -> Split:
    """Shuffle the cases with ``seed`` and cut test / validation / pool by :func:`split_sizes`."""
    n_test, n_val, _ = split_sizes(len(cases))
    order = np.random.default_rng(seed).permutation(len(cases))
    shuffled = [cases[i] for i in order]
    return Split(shuffled[:n_test], shuffled[n_test:n_test + n_val], shuffled[n_test + n_val:], seed)


def draw_subsets(pool_ids: list[str], labeled: int, k: int, seed: int = SUBSET_SEED) -> list[list[str]]:
    """``k`` different labeled subsets of ``labeled`` pool cases (in pool order), fixed by ``seed``."""
    if not 0 < labeled <= len(pool_ids):
        raise ValueError(f"--labeled {labeled}: the pool has {len(pool_ids)} cases")
    if k > math.comb(len(pool_ids), labeled):
        raise ValueError(f"only {math.comb(len(pool_ids), labeled)} different subsets of {labeled} exist")
    rng = np.random.default_rng(seed)
    out: list[list[str]] = []
    while len(out) < k:
        idx = sorted(rng.choice(len(pool_ids), size=labeled, replace=False).tolist())
        ids = [pool_ids[i] for i in idx]
        if ids not in out:
            out.append(ids)
    return out


def run_config(profile: str, classes: list[str], method: str, seed: int, plan: dict | None,
               iterations: int | None) -> EngineConfig:
    """The profile's config with the dataset's plan applied (``iterations`` overrides the plan's)."""
    cfg = profile_config(profile, classes)
    cfg.train.method = method  # first: the plan's warm start applies to the methods that warm-start
    cfg.train.seed = seed
    if plan:
        Plan(**plan).apply(cfg)
    if iterations:
        cfg.train.iterations = iterations
        cfg.train.val_every = min(cfg.train.val_every, iterations)
    return cfg


# ---- one (method, subset, seed) run: train, then evaluate on the test cases ----------------------
_CACHE: dict = {}


def _loaded(data: str, split_seed: int, preprocess) -> tuple:
    """Per-process cache of the preprocessed pool and validation cases (many runs share them)."""
    key = (data, split_seed, json.dumps(preprocess.__dict__, default=str))
    if key not in _CACHE:
        classes, cases = load_decathlon(data)
        split = make_split(cases, split_seed)
        pre = Preprocessor(preprocess)
        pool = load_cases(split.pool, pre, len(classes))
        val = load_cases(split.validation, pre, len(classes))
        _CACHE[key] = (classes, split, pool, val)
    return _CACHE[key]


def test_cases(split: Split, test_data: str | None) -> list[CaseSpec]:
    """The cases reported on: ``test_data``'s labeled cases, else the test split."""
    if test_data:
        return load_decathlon(test_data)[1]
    return split.test


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def evaluate(model_path: Path, cases: list[CaseSpec], classes: list[str], uncertainty: bool) -> dict:
    """Test metrics of one checkpoint (with per-case Dice); with ``uncertainty``, error detection of every signal."""
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
        conf = tta_confidence(predict_probs, x, views=8, augment=predictor.config.train.augment)
        seconds["tta"] += time.perf_counter() - t0
        acc["tta"].add(_to_grid(predictor, conf, image), is_error)
        t0 = time.perf_counter()
        acc["boundary_distance"].add(boundary_distance_confidence(pred.label.array), is_error)
        seconds["boundary_distance"] += plain_seconds + time.perf_counter() - t0
    probs = np.concatenate(probs_all)
    labels = np.concatenate(labels_all)
    fg = range(1, len(classes))
    out = {
        "dice": {classes[c]: float(np.mean([m["dice"][classes[c]] for m in per_case])) for c in fg},
        "dice_mean": float(np.mean([m["dice_mean"] for m in per_case])),
        "hd95_mean": _finite(float(np.nanmean([m["hd95_mean"] for m in per_case]))
                             if any(np.isfinite(m["hd95_mean"]) for m in per_case) else float("nan")),
        "asd_mean": _finite(float(np.nanmean([m["asd_mean"] for m in per_case]))
                            if any(np.isfinite(m["asd_mean"]) for m in per_case) else float("nan")),
        "ece": float(expected_calibration_error(probs, labels)),
        "per_case_dice": {spec.id: float(m["dice_mean"]) for spec, m in zip(cases, per_case, strict=True)},
        "per_case_class_dice": {spec.id: {classes[c]: float(m["dice"][classes[c]]) for c in fg}
                                for spec, m in zip(cases, per_case, strict=True)},
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


def check_no_leak(train_ids: list[str], train_images: list[Path], split: Split, tests: list[CaseSpec]) -> None:
    """ValueError when a case reported on is among the cases trained or validated on."""
    ids = set(train_ids)
    paths = {Path(p).resolve() for p in train_images}
    leaked = [c.id for c in split.test if c.id in ids] + [c.id for c in tests if Path(c.image).resolve() in paths]
    if leaked:
        raise ValueError(f"test cases {sorted(set(leaked))} are among the training/validation cases")


def finished_run(run_dir: Path, iterations: int) -> bool:
    """Whether ``run_dir`` holds a run that trained to ``iterations`` and wrote its final (calibrated) model.pt."""
    state, model = run_dir / "state.pt", run_dir / "model.pt"
    if not (state.exists() and model.exists()):
        return False
    try:
        done = torch.load(state, map_location="cpu", weights_only=False).get("iteration", -1) >= iterations
        return done and "ece_before" in load_checkpoint(model).get("metrics", {})
    except (OSError, ValueError, RuntimeError):
        return False


@dataclass
class ReusedRun:
    """What :func:`run_one` takes from an earlier run instead of training (``--reuse-runs``)."""

    checkpoint: Path
    best_val_dice: float | None
    best_iteration: int | None
    iterations: int
    train_seconds: float


def trained_as(checkpoint: Path, cfg: EngineConfig) -> bool:
    """Whether ``checkpoint`` was trained with ``cfg``'s iteration budget and warm start: what a run reused in
    ``cfg``'s place must share (the rest of a bench's config is fixed by its plan, checked by ``--update``)."""
    train = EngineConfig.from_dict(load_checkpoint(checkpoint)["config"]).train
    return train.iterations == cfg.train.iterations and warmup_fraction_for(train) == warmup_fraction_for(cfg.train)


def reuse_run(run_dir: Path, cfg: EngineConfig, data: str, split_seed: int, previous: dict | None,
              heatmap: bool = True) -> ReusedRun | None:
    """The finished run in ``run_dir`` trained as ``cfg`` (:func:`trained_as`; None when there is none), its
    error model fitted on the validation
    split first if its checkpoint has none, or (``heatmap``: its heatmap is measured) one fitted with other
    settings than today's (:func:`~SynergyPLLib.engine.error_model.default_settings`, e.g. before the view
    pass had its own window overlap).
    Iterations and train seconds: the checkpoint's metrics, else
    ``previous`` (the run's entry in the earlier results.json), else the state's iteration and 0 s."""
    path = run_dir / "model.pt"
    if not finished_run(run_dir, cfg.train.iterations) or not trained_as(path, cfg):
        return None
    ckpt = load_checkpoint(path)
    trained = EngineConfig.from_dict(ckpt["config"])
    stored = ckpt.get("error_model")
    if stored is None or (heatmap and stored.get("settings") != default_settings(trained)):
        val = _loaded(data, split_seed, trained.preprocess)[3]
        fit_error_model_for_checkpoint(path, val)
        ckpt = load_checkpoint(path)
    m, previous = ckpt.get("metrics", {}), previous or {}
    its = m.get("iterations", previous.get("iterations"))
    if its is None:
        its = torch.load(run_dir / "state.pt", map_location="cpu", weights_only=False)["iteration"]
    secs = m.get("train_seconds", previous.get("train_seconds", 0.0))
    return ReusedRun(path, m.get("val_dice"), m.get("best_iteration"), int(its), float(secs))


def run_one(data: str, test_data: str | None, method: str, subset: int, labeled_ids: list[str], seed: int,
            profile: str, plan: dict | None, iterations: int | None, split_seed: int, work_dir: str,
            threads: int, progress: bool = False, reuse: bool = False, previous: dict | None = None) -> dict:
    """Train and evaluate one (method, subset, seed); runs in a worker process. ``progress``: an
    iteration bar (with the best validation Dice so far) under the bench's run bar. ``reuse``: a finished
    run of an earlier bench in the same folder is evaluated again instead of trained (:func:`reuse_run`)."""
    torch.set_num_threads(threads)
    classes, _ = load_decathlon(data)
    cfg = run_config(profile, classes, method, seed, plan, iterations)
    classes, split, pool, val = _loaded(data, split_seed, cfg.preprocess)
    full = method == "full"
    chosen = set(labeled_ids)
    lab = pool if full else [c for c in pool if c.id in chosen]
    unl = [] if method in ("supervised", "full") else \
        [LoadedCase(c.id, c.image, None, c.volume) for c in pool if c.id not in chosen]
    tests = test_cases(split, test_data)
    check_no_leak([c.id for c in (*pool, *val)], [c.image for c in (*split.pool, *split.validation)], split, tests)
    out_dir = Path(work_dir) / f"{method}_subset{subset}_seed{seed}"
    result = (reuse_run(out_dir, cfg, data, split_seed, previous, method in UNCERTAINTY_MODELS)
              if reuse else None)
    if result is None:
        result = Trainer(cfg, lab, unl, val, out_dir).run(on_progress=_iteration_bar(cfg.train.iterations, method)
                                                          if progress else None)
    m = evaluate(result.checkpoint, tests, classes, uncertainty=method in UNCERTAINTY_MODELS)
    run = {"method": method, "subset": subset, "labeled_ids": [c.id for c in lab], "seed": seed,
           "dice_mean": m["dice_mean"], "dice": m["dice"], "hd95_mean": m["hd95_mean"], "asd_mean": m["asd_mean"],
           "ece": m["ece"], "iterations": int(result.iterations), "train_seconds": round(result.train_seconds, 2)}
    detail = {k: v for k, v in m.items() if k not in run and k != "signals"}
    detail.update(method=method, subset=subset, seed=seed, val_dice=result.best_val_dice,
                  best_iteration=result.best_iteration, labeled_cases=len(lab), unlabeled_cases=len(unl),
                  reused=isinstance(result, ReusedRun))
    return {"run": run, "detail": detail, "signals": m.get("signals")}


def _iteration_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="it", leave=False)

    def on_progress(ev) -> None:
        bar.n = ev.iteration
        if ev.best_val_dice is not None:
            bar.set_postfix(best_val_dice=f"{ev.best_val_dice:.3f}", refresh=False)
        bar.refresh()
        if ev.phase in ("done", "cancelled"):
            bar.close()

    return on_progress


def bench_plan(data: str, profile: str, n_validation: int, measure: bool = False, resolution: str = "full") -> Plan:
    """The dataset's plan for ``profile`` at ``resolution`` (see engine/planning.py)."""
    return plan_dataset(data, profile, n_validation=n_validation, measure=measure, resolution=resolution)


def run_bench(data: str, labeled: int, methods: list[str], seeds: list[int], profile: str, out: str,
              test_data: str | None = None, iterations: int | None = None, workers: int = 1,
              progress: bool = True, subsets: int = 3, split_seed: int = SPLIT_SEED,
              measure_plan: bool = False, reuse_runs: bool = False, update: bool = False,
              resolution: str = "full", warmup: float | None = None) -> dict:
    """Run every (method, subset, seed); write results.json, details.json, uncertainty.json, report.md, dice.png.

    ``reuse_runs``: runs that finished in an earlier bench into the same ``out`` are not trained again,
    only evaluated (their error model fitted first when the checkpoint has none).
    ``update``: re-run only ``methods`` and keep every other method's runs and per-case details from the
    results.json already in ``out`` (:func:`carried_methods`: same dataset, split, subsets, seeds and plan,
    else a ValueError); the methods whose error detection is measured must be among ``methods``.
    ``resolution``: ``full``, ``low`` (the planner's low-resolution candidate) or ``auto`` (chosen on validation
    by :func:`.resolution.resolution_for`, recorded in ``out/resolution.json``).
    ``warmup``: the warm-start share of mean_teacher and synergypl (``DEFAULT_WARMUP``'s methods) when one was
    chosen for the dataset on validation (the ablation table); recorded as the plan's ``warmup_fraction``.
    """
    if warmup is not None and not 0.0 <= warmup < 1.0:
        raise ValueError(f"--warmup must lie in [0, 1) (a share of the iterations), got {warmup}")
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    if update and not set(UNCERTAINTY_MODELS) <= set(methods):
        raise ValueError(f"--update re-measures error detection: --methods must include {', '.join(UNCERTAINTY_MODELS)}")
    previous = _previous_runs(out_path / "results.json") if reuse_runs else {}
    classes, cases = load_decathlon(data)
    split = make_split(cases, split_seed)
    tests = test_cases(split, test_data)
    if resolution == "auto":  # imported here: harness/resolution.py trains through ablation.py, which imports this
        from .resolution import resolution_for

        resolution = resolution_for(data, labeled, profile, out, subsets, seeds, split_seed, workers, progress,
                                    iterations)
    plan = bench_plan(data, profile, len(split.validation), measure_plan, resolution)
    if iterations:
        plan.iterations = iterations  # an explicit budget (tests, quick looks); recorded in the plan
        plan.val_every = min(plan.val_every, iterations)
        plan.estimated_train_seconds = None
    plan.warmup_fraction = warmup
    pool_ids = [c.id for c in split.pool]
    subset_ids = draw_subsets(pool_ids, labeled, subsets) if any(m != "full" for m in methods) else [pool_ids]
    jobs = [(m, k, s) for s in seeds for k in range(len(subset_ids)) for m in methods if not (m == "full" and k)]
    split_doc = {"seed": split_seed, **split.ids(), "subsets": subset_ids,
                 "test_data": ({"folder": str(test_data), "cases": [c.id for c in tests]} if test_data else None)}
    carried = carried_methods(out_path, _dataset_name(data), labeled, split_doc, seeds, plan.to_dict(), methods) \
        if update else {"methods": [], "runs": [], "details": []}  # checked before anything is trained
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    args = dict(data=str(data), test_data=test_data, profile=profile, plan=plan.to_dict(), iterations=None,
                split_seed=split_seed, work_dir=str(out_path / "runs"), threads=threads, reuse=reuse_runs)
    args["plan"].pop("fingerprint")
    calls = [dict(method=m, subset=k, labeled_ids=subset_ids[k], seed=s, previous=previous.get((m, k, s)), **args)
             for m, k, s in jobs]
    done = run_jobs(run_one, calls, workers=workers, desc=f"bench {_dataset_name(data)}", progress=progress,
                    serial_extra={"progress": progress},
                    describe=lambda r: f"{r['run']['method']}/subset{r['run']['subset']}/seed{r['run']['seed']} "
                                       f"dice={r['run']['dice_mean']:.3f}")
    # the earlier bench's method order, then any method it did not have
    all_methods = carried["methods"] + [m for m in methods if m not in carried["methods"]]
    order = {m: i for i, m in enumerate(all_methods)}
    items = [(r["run"], r["detail"]) for r in done] + list(zip(carried["runs"], carried["details"], strict=True))
    items.sort(key=lambda rd: (order[rd[0]["method"]], rd[0]["subset"], rd[0]["seed"]))
    runs = [r for r, _ in items]
    details = [d for _, d in items]
    methods = all_methods
    results = {
        "dataset": _dataset_name(data), "test_cases": len(tests), "labeled": labeled, "profile": profile,
        "classes": classes[1:], "split": split_doc, "plan": plan.to_dict(),
        "runs": runs, "summary": summarize(runs, details, methods, classes[1:],
                                           rare_classes(plan.fingerprint.get("class_frequency"), classes[1:])),
    }
    (out_path / "results.json").write_text(json.dumps(results, indent=2))
    (out_path / "details.json").write_text(json.dumps({"runs": details}, indent=2))
    unc = uncertainty_summary([(r["run"]["subset"], r["run"]["seed"], r["signals"]) for r in done
                               if r["signals"] and r["run"]["method"] == "synergypl"],
                              {m: [(r["run"]["subset"], r["run"]["seed"], r["signals"]) for r in done
                                   if r["signals"] and r["run"]["method"] == m]
                               for m in UNCERTAINTY_MODELS if m != "synergypl"})
    (out_path / "uncertainty.json").write_text(json.dumps(unc, indent=2))
    write_report(results, details, unc, out_path)
    return results


def carried_methods(out: Path, dataset: str, labeled: int, split_doc: dict, seeds: list[int], plan: dict,
                    rerun: list[str]) -> dict:
    """What ``--update`` keeps from ``out``'s results.json and details.json: ``{"methods": the earlier method
    order, "runs": [...], "details": [...]}`` of every method not in ``rerun``. Raises ValueError naming what
    differs when the earlier bench measured something else (dataset, labeled count, split, subsets, seeds,
    or plan; a warm start of its own only where a method that warm-starts is carried), or when there is no
    earlier bench to update."""
    try:
        before = json.loads((out / "results.json").read_text())
        before_details = json.loads((out / "details.json").read_text())["runs"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"--update needs an earlier bench in {out} (results.json and details.json): {e}") from None
    plan_now, plan_then = comparable_plan(plan), comparable_plan(before.get("plan", {}))
    warmup_then, warmup_now = plan_then.pop("warmup_fraction"), plan_now.pop("warmup_fraction")
    if warmup_then != warmup_now and (stale := [m for m in before.get("summary", {})
                                                if m in DEFAULT_WARMUP and m not in rerun]):
        raise ValueError(f"--update: the bench in {out} trained {', '.join(stale)} with another warm start "
                         f"({warmup_then} against {warmup_now}; None: the method's default); add "
                         f"{', '.join(stale)} to --methods")
    differs = [name for name, then, now in (
        ("dataset", before.get("dataset"), dataset), ("labeled", before.get("labeled"), labeled),
        ("split", before.get("split"), split_doc),
        ("seeds", sorted({r["seed"] for r in before.get("runs", [])}), sorted(seeds)),
        ("plan", plan_then, plan_now)) if then != now]
    if differs:
        raise ValueError(f"--update: the bench in {out} measured a different {', '.join(differs)}; "
                         "run the whole bench into a new --out instead")
    kept = [r for r in before["runs"] if r["method"] not in rerun]
    key = {(d["method"], d["subset"], d["seed"]): d for d in before_details}
    missing = [(r["method"], r["subset"], r["seed"]) for r in kept if (r["method"], r["subset"], r["seed"]) not in key]
    if missing:
        raise ValueError(f"--update: {out / 'details.json'} has no per-case results for {missing}")
    return {"methods": list(before.get("summary", {})), "runs": kept,
            "details": [key[(r["method"], r["subset"], r["seed"])] for r in kept]}


def _previous_runs(path: Path) -> dict:
    """{(method, subset, seed): run} of an earlier results.json (empty when there is none)."""
    try:
        runs = json.loads(path.read_text()).get("runs", [])
    except (OSError, json.JSONDecodeError):
        return {}
    return {(r["method"], r["subset"], r["seed"]): r for r in runs}


def _dataset_name(data: str) -> str:
    try:
        return json.loads((Path(data) / "dataset.json").read_text()).get("name", Path(data).name)
    except (OSError, json.JSONDecodeError):
        return Path(data).name
