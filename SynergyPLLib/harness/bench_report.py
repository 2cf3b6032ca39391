"""The benchmark's numbers and report: paired bootstrap intervals against the baselines, the summary of
``results.json``, the error-detection summary of ``uncertainty.json`` and ``report.md`` with ``dice.png``.

In: the runs and details :func:`.bench.run_bench` collected. Pure functions of them (no training).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import dice_figure

BOOTSTRAP = 2000
BASELINES = ("supervised", "mean_teacher")
SIGNALS = ("synergy", "entropy", "mc_dropout", "tta", "boundary_distance")  # error-detection signals
RARE_FREQUENCY = 0.02  # a class under 2% of the dataset's voxels counts as rare (chaos_mr's kidneys and spleen)


def rare_classes(class_frequency: dict[str, float] | None, classes: list[str]) -> list[str]:
    """The foreground ``classes`` under :data:`RARE_FREQUENCY` of the voxels in the dataset fingerprint's
    ``class_frequency`` ({name: share of voxels}); empty without a fingerprint or when none is rare."""
    return [c for c in classes if (class_frequency or {}).get(c, 1.0) < RARE_FREQUENCY]


def paired_bootstrap(diffs: np.ndarray, n_boot: int = BOOTSTRAP, seed: int = 0) -> tuple[float, list[float]]:
    """Mean of per-case paired differences and its percentile bootstrap 95% interval over cases."""
    d = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), [float(lo), float(hi)]


def _case_dice(detail: dict, case: str, classes: list[str] | None) -> float:
    """One test case's Dice: the mean over all classes, or over ``classes`` only."""
    if classes is None:
        return detail["per_case_dice"][case]
    return float(np.mean([detail["per_case_class_dice"][case][c] for c in classes]))


def paired_difference(details: list[dict], method: str, baseline: str, classes: list[str] | None = None) -> dict | None:
    """``method`` minus ``baseline``: per test case the Dice difference (mean over all classes, or over
    ``classes``) averaged over the matching (subset, seed) pairs (``full`` matches every subset), then the
    mean over cases with a bootstrap 95% interval."""
    mine = [d for d in details if d["method"] == method]
    base = [d for d in details if d["method"] == baseline]
    pairs = [(a, b) for a in mine for b in base
             if a["seed"] == b["seed"] and (a["subset"] == b["subset"] or "full" in (method, baseline))]
    if not pairs:
        return None
    case_ids = list(pairs[0][0]["per_case_dice"])
    diffs = np.mean([[_case_dice(a, c, classes) - _case_dice(b, c, classes) for c in case_ids] for a, b in pairs],
                    axis=0)
    diff, ci = paired_bootstrap(diffs)
    return {"diff": diff, "ci95": ci}


def _mean_or_none(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize(runs: list[dict], details: list[dict], methods: list[str], classes: list[str],
              rare: list[str] | None = None) -> dict:
    """Per method: Dice mean and std over runs, per-class Dice, HD95, ECE, paired differences to the baselines;
    with ``rare`` classes (:func:`rare_classes`) also ``rare_classes``: their mean Dice (mean and std over runs)
    and its paired differences."""
    out = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        if not rs:
            continue
        d = [r["dice_mean"] for r in rs]
        out[m] = {"dice_mean": float(np.mean(d)), "dice_std": float(np.std(d)),
                  "dice": {c: float(np.mean([r["dice"][c] for r in rs])) for c in classes},
                  "hd95_mean": _mean_or_none([r["hd95_mean"] for r in rs]),
                  "ece": float(np.mean([r["ece"] for r in rs])),
                  "vs_supervised": paired_difference(details, m, "supervised"),
                  "vs_mean_teacher": paired_difference(details, m, "mean_teacher")}
        if rare:
            r_d = [float(np.mean([r["dice"][c] for c in rare])) for r in rs]
            out[m]["rare_classes"] = {"classes": list(rare), "dice_mean": float(np.mean(r_d)),
                                      "dice_std": float(np.std(r_d)),
                                      **{f"vs_{b}": paired_difference(details, m, b, rare) for b in BASELINES}}
    return out


def _signal_means(per_run: list[tuple[int, int, dict]]) -> dict:
    """Mean over runs of each signal's scores, plus the spread of AUROC, AUPRC and recall at 5 %."""
    signals = {}
    for s in SIGNALS:
        keys = per_run[0][2][s].keys()
        signals[s] = {k: float(np.mean([d[s][k] for _, _, d in per_run])) for k in keys}
        for k in ("auroc", "auprc", "error_recall_at_5pct"):
            signals[s][f"{k}_std"] = float(np.std([d[s][k] for _, _, d in per_run]))
    return signals


def uncertainty_summary(per_run: list[tuple[int, int, dict]], others: dict[str, list] | None = None) -> dict:
    """Mean over the synergypl runs of each signal's scores (plus the per-run values and their spread);
    ``others``: {method: its per-run list} for the other models measured, under ``by_model``."""
    by_model = {m: {"signals": _signal_means(runs), "per_seed": [{"subset": k, "seed": seed, "signals": d}
                                                                for k, seed, d in runs]}
                for m, runs in (others or {}).items() if runs}
    if not per_run:
        return {"signals": {}, "per_seed": [], "by_model": by_model}
    return {"signals": _signal_means(per_run),
            "per_seed": [{"subset": k, "seed": seed, "signals": d} for k, seed, d in per_run],
            "model": "synergypl", "error": "voxel whose predicted label differs from the reference",
            "by_model": by_model}


def _fmt(v, spec=".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def _vs(v: dict | None) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v['diff']:+.2f} [{100 * v['ci95'][0]:+.2f}, {100 * v['ci95'][1]:+.2f}]"


def write_report(results: dict, details: list[dict], unc: dict, out: Path) -> None:
    """report.md (the numbers of results.json as tables) and dice.png (:func:`.figures.dice_figure`)."""
    summ, classes, plan, split = results["summary"], results["classes"], results["plan"], results["split"]
    tested = (f"{results['test_cases']} cases of `{split['test_data']['folder']}`" if split.get("test_data")
              else f"{results['test_cases']} test-split cases")
    n_sub = len(split["subsets"])
    lines = [f"# SynergyPL benchmark v2: {results['dataset']}", "",
             f"{results['labeled']} labeled cases, {n_sub} labeled subset(s), profile `{results['profile']}`; "
             f"reported on {tested}. Split seed {split['seed']}: {len(split['test'])} test / "
             f"{len(split['validation'])} validation / {len(split['pool'])} pool. Checkpoints, temperatures and "
             "heatmap error models were selected on the validation split only.", "",
             f"Plan: patch {plan['patch_size']}, spacing {plan['spacing'] or 'each image its own'}, batch "
             f"{plan['batch_labeled']} + {plan['batch_unlabeled']}, {plan['iterations']} iterations"
             + (f", estimated {plan['estimated_train_seconds'] / 60:.1f} min of training per run"
                if plan.get("estimated_train_seconds") else "")
             + (f"; warm start {plan['warmup_fraction']} of the iterations for mean_teacher and synergypl (chosen "
                "on validation)" if plan.get("warmup_fraction") is not None else "") + ".", "",
             "Dice: mean ± std over runs (subsets x seeds). vs supervised / vs mean_teacher: mean paired Dice "
             "difference in points (same test case, subset and seed) with its bootstrap 95% interval over test cases.", "",
             "| method | Dice | " + " | ".join(f"Dice {c}" for c in classes)
             + " | HD95 (mm) | ECE | vs supervised | vs mean_teacher | runs |",
             "| --- | --- | " + " | ".join("---" for _ in classes) + " | --- | --- | --- | --- | --- |"]
    for m, s in summ.items():
        n = sum(r["method"] == m for r in results["runs"])
        lines.append(f"| {m} | {s['dice_mean']:.4f} ± {s['dice_std']:.4f} | "
                     + " | ".join(f"{s['dice'][c]:.4f}" for c in classes)
                     + f" | {_fmt(s['hd95_mean'], '.2f')} | {s['ece']:.4f} | {_vs(s['vs_supervised'])} | "
                       f"{_vs(s['vs_mean_teacher'])} | {n} |")
    rare = next((s["rare_classes"]["classes"] for s in summ.values() if s.get("rare_classes")), None)
    if rare:
        lines += ["", f"## Rare classes ({', '.join(rare)}: under {RARE_FREQUENCY:.0%} of the dataset's voxels)", "",
                  "Dice: the mean over these classes per run, then mean ± std over runs; the paired differences are "
                  "of that mean, per test case.", "",
                  "| method | Dice (rare classes) | vs supervised | vs mean_teacher |", "| --- | --- | --- | --- |"]
        for m, s in summ.items():
            rc = s["rare_classes"]
            lines.append(f"| {m} | {rc['dice_mean']:.4f} ± {rc['dice_std']:.4f} | {_vs(rc['vs_supervised'])} | "
                         f"{_vs(rc['vs_mean_teacher'])} |")
    lines += ["", "## Runs", "", "| method | subset | seed | Dice | HD95 (mm) | ASD (mm) | ECE | iterations | train s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["runs"]:
        lines.append(f"| {r['method']} | {r['subset']} | {r['seed']} | {r['dice_mean']:.4f} | {_fmt(r['hd95_mean'], '.2f')} | "
                     f"{_fmt(r['asd_mean'], '.2f')} | {r['ece']:.4f} | {r['iterations']} | {r['train_seconds']:.0f} |")
    blocks = ([("synergypl", unc["signals"])] if unc.get("signals") else []) + \
        [(m, b["signals"]) for m, b in unc.get("by_model", {}).items() if b.get("signals")]
    for model, signals in blocks:
        lines += ["", f"## Error detection ({model} model, test voxels)", "",
                  "| signal | AUROC | AUPRC | error recall at 5% flagged | seconds per case |", "| --- | --- | --- | --- | --- |"]
        for name, s in signals.items():
            lines.append(f"| {name} | {s['auroc']:.4f} ± {s['auroc_std']:.4f} | {s['auprc']:.4f} ± {s['auprc_std']:.4f} | "
                         f"{s['error_recall_at_5pct']:.4f} ± {s['error_recall_at_5pct_std']:.4f} | "
                         f"{s['seconds_per_case']:.3f} |")
    calibrated = [d for d in details if "ece_before_calibration" in d]
    if calibrated:
        names = list(calibrated[0]["ece_classwise"])
        lines += ["", "## Calibration (test voxels; temperature fitted on the validation split)", "",
                  "| method | subset | seed | T | " + " | ".join(f"class-wise ECE {c} before / after" for c in names) + " |",
                  "| --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]
        for d in calibrated:
            per = [f"{d['ece_classwise_before_calibration'][c]:.4f} / {d['ece_classwise'][c]:.4f}" for c in names]
            lines.append(f"| {d['method']} | {d['subset']} | {d['seed']} | {d['temperature']:.3f} | " + " | ".join(per) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    dice_figure(results, out / "dice.png")
