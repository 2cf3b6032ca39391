"""``synergypl bench-loop``: labeling rounds, SynergyPL against a manual workflow (BENCHMARK.md, "Labeling
rounds").

Both workflows start from the benchmark's first labeled subset (:func:`.bench.draw_subsets` of the pool of
:func:`.bench.make_split`), train on the bench's plan and profile (:func:`.bench.run_config`), select
checkpoints on the validation split and are scored on the test split (or ``--test-data``) with
:func:`.bench.evaluate`.

- ``synergypl``: round 0 trains with SynergyPL's method (``synergypl``: the start labels + the rest of
  the pool unlabeled). Each round its model predicts every waiting pool case with the heatmap, the
  service's next-case policy (:func:`~..service.domain.next_case.rank_by_disagreement` of the cases'
  :func:`~..service.domain.next_case.disagreement`) picks ``cases_per_round``, the simulated annotator
  corrects each to ``target`` along the ``synergy`` guide (:mod:`.review`; effort as in bench-effort),
  the corrected label (not necessarily the truth everywhere; written as NIfTI under ``OUT/work/labels``)
  joins the labeled set, and the model fine-tunes from the previous round (``init_checkpoint``) with
  SynergyPL's method.
- ``manual``: the same rounds with its own model chosen by the same policy: round 0 and every fine-tune
  are ``supervised`` (labeled cases only); every chosen case is fully reviewed (effort 1.0, label = truth).

Iterations: round 0 gets the plan's budget (``iterations`` overrides it); a fine-tuning round a third of
round 0's (``round_iterations`` overrides it): it starts from a trained model, and the rounds should cost
what a person waits for between labeling sessions.

Out: ``loop.json`` (exactly the keys of BENCHMARK.md; effort cumulative, round 0 at 0), ``loop.png`` and
``loop_details.json`` (the cases chosen, each case's effort, validation Dice, iterations and the seconds
of choosing and correcting, training and scoring per round, the plan and settings).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.data import CaseSpec, LoadedCase, Preprocessor, load_cases, load_decathlon
from ..engine.inference import Predictor
from ..engine.io import read_volume, write_volume
from ..engine.trainer import Trainer
from ..service.domain.next_case import disagreement, rank_by_disagreement
from .bench import (
    SPLIT_SEED,
    _iteration_bar,
    bench_plan,
    check_no_leak,
    draw_subsets,
    evaluate,
    make_split,
    run_config,
    test_cases,
)
from .figures import loop_figure
from .review import review_case

WORKFLOWS = {"synergypl": "synergypl", "manual": "supervised"}  # workflow -> training method
FINE_TUNE_SHARE = 1 / 3  # a fine-tuning round's iterations, as a share of round 0's


@dataclass
class LoopOptions:
    data: str
    out: str
    start_labeled: int = 3
    rounds: int = 5
    cases_per_round: int = 4
    test_data: str | None = None
    profile: str = "cpu"
    iterations: int | None = None  # round 0 (default: the plan's)
    round_iterations: int | None = None  # each fine-tuning round (default: FINE_TUNE_SHARE of round 0's)
    target: float = 0.90
    candidates: int | None = None  # rank only the first N waiting pool cases (quick looks)
    seed: int = 0
    split_seed: int = SPLIT_SEED
    progress: bool = True


@dataclass
class Workflow:
    """One workflow's state: its labeled cases (id -> case with the label it was given), model, effort."""

    name: str
    method: str
    labeled: dict[str, LoadedCase]
    checkpoint: Path | None = None
    effort: float = 0.0
    rounds: list[dict] = field(default_factory=list)


def fine_tune_iterations(round0: int, override: int | None) -> int:
    """A fine-tuning round's budget: ``override``, else :data:`FINE_TUNE_SHARE` of round 0's (at least 1)."""
    return int(override) if override else max(1, int(round(round0 * FINE_TUNE_SHARE)))


def choose_next(checkpoint: Path, waiting: list[CaseSpec], k: int) -> list[tuple[CaseSpec, object]]:
    """Predict every waiting case with the heatmap and take the first ``k`` in the service's next-case
    order; returns (case, prediction) pairs (probabilities dropped)."""
    predictor = Predictor.from_checkpoint(checkpoint)
    preds, docs = {}, []
    for spec in waiting:
        pred = predictor.predict(read_volume(spec.image), heatmap=True)
        pred.probabilities = None
        preds[spec.id] = (spec, pred)
        docs.append({"id": spec.id, "prediction": {"disagreement": disagreement(pred.regions)}})
    return [preds[d["id"]] for d in rank_by_disagreement(docs)[:k]]


def correct(wf: Workflow, chosen: list, truth_cases: dict[str, LoadedCase], pre: Preprocessor, num_classes: int,
            target: float, label_dir: Path) -> list[dict]:
    """Add the chosen cases to ``wf``'s labeled set: guided correction (synergypl) or full review (manual).
    Returns one entry per case (id, effort, Dice before/after, voxels reviewed)."""
    out = []
    for spec, pred in chosen:
        if wf.name == "manual":
            wf.labeled[spec.id] = truth_cases[spec.id]
            out.append({"case": spec.id, "effort": 1.0})
            continue
        truth = read_volume(spec.label, allow_constant=True).array.astype(np.int64)
        params = pred.region_params
        fixed, r = review_case(pred.label.array.astype(np.int64), truth, "synergy", pred.heatmap.array, pred.regions,
                               params.threshold, target, num_classes, case_id=spec.id)
        label_dir.mkdir(parents=True, exist_ok=True)
        path = write_volume(pred.label.with_array(fixed.astype(np.uint8)), label_dir / f"{spec.id}.nii.gz")
        wf.labeled[spec.id] = load_cases([CaseSpec(spec.id, spec.image, path)], pre, num_classes)[0]
        out.append({"case": spec.id, "effort": r.effort, "reached": r.reached, "dice_before": r.dice_before,
                    "dice_after": r.dice_after, "reviewed_voxels": r.reviewed, "box_voxels": r.box_voxels,
                    "regions_visited": r.regions_visited})
    return out


def run_loop(opts: LoopOptions) -> dict:
    """Round 0 and ``opts.rounds`` labeling rounds of both workflows; writes loop.json, loop.png and
    loop_details.json in ``opts.out`` and returns the loop.json document."""
    out = Path(opts.out)
    work = out / "work"
    out.mkdir(parents=True, exist_ok=True)
    classes, cases = load_decathlon(opts.data)
    split = make_split(cases, opts.split_seed)
    tests = test_cases(split, opts.test_data)
    plan = bench_plan(opts.data, opts.profile, len(split.validation))
    plan_doc = plan.to_dict()
    plan_doc.pop("fingerprint")
    round0 = opts.iterations or plan.iterations
    later = fine_tune_iterations(round0, opts.round_iterations)
    need = opts.start_labeled + opts.rounds * opts.cases_per_round
    if need > len(split.pool):
        raise ValueError(f"{need} labeled cases needed, the pool has {len(split.pool)}")
    start_ids = draw_subsets([c.id for c in split.pool], opts.start_labeled, 1)[0]
    cfg0 = run_config(opts.profile, classes, "synergypl", opts.seed, plan_doc, None)
    pre = Preprocessor(cfg0.preprocess)
    check_no_leak([c.id for c in (*split.pool, *split.validation)],
                  [c.image for c in (*split.pool, *split.validation)], split, tests)
    truth_cases = {c.id: c for c in load_cases(split.pool, pre, len(classes), progress=opts.progress)}
    val = load_cases(split.validation, pre, len(classes))
    flows = [Workflow(name, method, {i: truth_cases[i] for i in start_ids}) for name, method in WORKFLOWS.items()]
    bar = None
    if opts.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=(opts.rounds + 1) * len(flows), desc="bench-loop", unit="round")
    for r in range(opts.rounds + 1):
        for wf in flows:
            if bar:
                bar.set_description(f"bench-loop {wf.name} round {r}")
            t0 = time.perf_counter()
            chosen_doc = []
            if r:
                waiting = [c for c in split.pool if c.id not in wf.labeled][:opts.candidates or None]
                chosen = choose_next(wf.checkpoint, waiting, opts.cases_per_round)
                chosen_doc = correct(wf, chosen, truth_cases, pre, len(classes), opts.target,
                                     work / "labels" / wf.name / f"round{r}")
                wf.effort += float(sum(c["effort"] for c in chosen_doc))
            review_seconds = time.perf_counter() - t0
            iters = round0 if r == 0 else later
            cfg = run_config(opts.profile, classes, wf.method, opts.seed, plan_doc, iters)
            unlabeled = [] if wf.method == "supervised" else \
                [LoadedCase(c.id, c.image, None, c.volume) for c in truth_cases.values() if c.id not in wf.labeled]
            res = Trainer(cfg, list(wf.labeled.values()), unlabeled, val, work / wf.name / f"round{r}",
                          init_checkpoint=wf.checkpoint).run(
                on_progress=_iteration_bar(iters, f"{wf.name} round {r}") if opts.progress else None)
            wf.checkpoint = res.checkpoint
            t0 = time.perf_counter()
            m = evaluate(res.checkpoint, tests, classes, uncertainty=False)
            eval_seconds = time.perf_counter() - t0
            wf.rounds.append({"round": r, "labeled": len(wf.labeled), "dice": m["dice_mean"], "effort": wf.effort,
                              "cases": chosen_doc, "val_dice": res.best_val_dice, "iterations": int(res.iterations),
                              "train_seconds": round(res.train_seconds, 2), "review_seconds": round(review_seconds, 2),
                              "eval_seconds": round(eval_seconds, 2),
                              "per_case_dice": m["per_case_dice"]})
            if bar:
                bar.update(1)
                bar.set_postfix({wf.name: f"dice={m['dice_mean']:.3f} effort={wf.effort:.2f}"}, refresh=False)
    if bar:
        bar.close()
    doc = {"rounds": [{"round": r, "labeled": flows[0].rounds[r]["labeled"],
                       **{wf.name: {"dice": wf.rounds[r]["dice"], "effort": wf.rounds[r]["effort"]} for wf in flows}}
                      for r in range(opts.rounds + 1)]}
    details = {"data": str(opts.data), "test_data": opts.test_data, "split_seed": opts.split_seed,
               "test_cases": [c.id for c in tests], "start_labeled_ids": start_ids, "profile": opts.profile,
               "plan": plan_doc, "iterations": {"round0": round0, "fine_tune": later}, "target": opts.target,
               "candidates": opts.candidates, "seed": opts.seed,
               "workflows": {wf.name: {"method": wf.method, "rounds": wf.rounds} for wf in flows}}
    (out / "loop.json").write_text(json.dumps(doc, indent=2))
    (out / "loop_details.json").write_text(json.dumps(details, indent=1))
    loop_figure(doc, out / "loop.png")
    return doc
