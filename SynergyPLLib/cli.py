"""The ``synergypl`` command: train, infer, plan (engine); init, serve, token (service); bench, bench-latency,
bench-effort, bench-loop, demo (harnesses; this file is the only importer of SynergyPLLib.harness)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="it")

    def on_progress(ev) -> None:
        bar.n = ev.iteration
        post = {k: f"{v:.3f}" for k, v in ev.losses.items() if k in ("total", "supervised", "unlabeled")}
        if ev.best_val_dice is not None:
            post["best_val_dice"] = f"{ev.best_val_dice:.3f}"
        bar.set_postfix(post, refresh=False)
        bar.refresh()
        if ev.phase in ("done", "cancelled"):
            bar.close()

    return on_progress


def cmd_train(args) -> int:
    import numpy as np

    from .engine.config import EngineConfig, profile_config
    from .engine.data import CaseSpec, load_decathlon
    from .engine.distributed import env_rank, shutdown
    from .engine.trainer import train

    main_rank = env_rank() == 0  # under torchrun only rank 0 reports (see engine/distributed.py)

    classes, cases = load_decathlon(args.data)
    cfg = EngineConfig.load(args.config) if args.config else profile_config(args.profile, classes)
    cfg.classes = classes
    cfg.train.method = args.method
    cfg.train.seed = args.seed
    if args.iterations:
        cfg.train.iterations = args.iterations
    order = np.random.default_rng(args.seed).permutation(len(cases))
    cases = [cases[i] for i in order]
    n_lab = len(cases) if args.labeled in (None, 0) else args.labeled
    n_val = max(1, int(round(args.val_fraction * len(cases))))
    val, rest = cases[:n_val], cases[n_val:]
    labeled = rest[:n_lab]
    unlabeled = [CaseSpec(c.id, c.image) for c in rest[n_lab:]]
    if cfg.train.method in ("supervised", "full"):
        unlabeled = []
    if main_rank:
        print(f"{cfg.train.method}: {len(labeled)} labeled, {len(unlabeled)} unlabeled, {len(val)} validation "
              f"cases; {cfg.train.iterations} iterations", file=sys.stderr)
    try:
        res = train(cfg, labeled, unlabeled, val, args.out, init_checkpoint=args.init, resume=args.resume,
                    on_progress=_progress_bar(cfg.train.iterations, "train") if main_rank else None,
                    progress_bar=main_rank)
    finally:
        shutdown()
    if not main_rank:
        return 0
    print(json.dumps({"checkpoint": str(res.checkpoint), "best_val_dice": res.best_val_dice,
                      "best_iteration": res.best_iteration, "temperature": res.temperature,
                      "ece_before": res.ece_before, "ece_after": res.ece_after,
                      "train_seconds": round(res.train_seconds, 1)}, indent=2))
    return 0


def cmd_infer(args) -> int:
    from tqdm.auto import tqdm

    from .engine.inference import Predictor
    from .engine.io import read_volume
    from .engine.outputs import output_stems, write_prediction

    out_dir = Path(args.out) if args.out else None
    inputs = [Path(p) for p in args.inputs]
    stems = output_stems(inputs, out_dir)  # before any work: same-named inputs must not overwrite each other
    predictor = Predictor.from_checkpoint(args.model)
    threshold = predictor.config.inference.flag_threshold if args.threshold is None else args.threshold
    for path, stem in tqdm(list(zip(inputs, stems, strict=True)), desc="infer", unit="case"):
        image = read_volume(path)
        pred = predictor.predict(image, heatmap=True, flag_threshold=threshold)
        written = write_prediction(pred, image, path, out_dir, predictor.classes, flag_threshold=threshold,
                                   stem=stem)
        print(json.dumps({"input": str(path), "seconds": round(pred.seconds, 3),
                          "flagged_regions": len(pred.regions), **{k: str(v) for k, v in written.items()}}))
    return 0


def cmd_bench(args) -> int:
    from .harness.bench import SPLIT_SEED, run_bench

    labeled = args.labeled
    methods = args.methods.split(",")
    results = run_bench(args.data, labeled, methods, [int(s) for s in args.seeds.split(",")],
                        args.profile, args.out, test_data=args.test_data, iterations=args.iterations,
                        workers=args.workers, subsets=args.subsets,
                        split_seed=SPLIT_SEED if args.split_seed is None else args.split_seed,
                        measure_plan=args.measure_plan, reuse_runs=args.reuse_runs, update=args.update,
                        resolution=args.resolution, warmup=args.warmup)
    plan = results["plan"]
    print(f"plan ({plan.get('resolution', 'full')} resolution): patch {plan['patch_size']}, spacing {plan['spacing']}, batch {plan['batch_labeled']}+"
          f"{plan['batch_unlabeled']}, {plan['iterations']} iterations"
          + (f", warm start {plan['warmup_fraction']}" if plan.get("warmup_fraction") is not None else ""))
    for m, s in results["summary"].items():
        vs = s["vs_supervised"]
        vs_text = f"  vs supervised {vs['diff']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}]" if vs else ""
        hd = "n/a" if s["hd95_mean"] is None else f"{s['hd95_mean']:.2f}"
        print(f"{m:14s} dice {s['dice_mean']:.4f} ± {s['dice_std']:.4f}  hd95 {hd}  ece {s['ece']:.4f}{vs_text}")
    print(f"wrote {Path(args.out) / 'results.json'}, details.json, uncertainty.json, report.md, dice.png")
    return 0


def cmd_bench_ablation(args) -> int:
    from .harness.ablation import VARIANTS, run_ablation
    from .harness.bench import SPLIT_SEED

    variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    doc = run_ablation(args.data, args.labeled, variants, [int(s) for s in args.seeds.split(",")], args.profile,
                       args.out, subsets=args.subsets, workers=args.workers, iterations=args.iterations,
                       reuse=args.reference_runs, split_seed=SPLIT_SEED if args.split_seed is None else args.split_seed,
                       resolution=args.resolution)
    for name, v in doc["variants"].items():
        print(f"{name:16s} val dice {v['val_dice_mean']:.4f} ± {v['val_dice_std']:.4f}")
    print(f"wrote {Path(args.out) / 'ablation.json'} and ablation.md")
    return 0


def cmd_plan(args) -> int:
    from .engine.planning import plan_dataset

    print(json.dumps(plan_dataset(args.data, args.profile, measure=args.measure,
                                  resolution=args.resolution).to_dict(), indent=2))
    return 0


def cmd_choose_resolution(args) -> int:
    from .harness.bench import SPLIT_SEED
    from .harness.resolution import choose_resolution

    doc = choose_resolution(args.data, args.labeled, args.profile, args.out, subsets=args.subsets,
                            seeds=[int(s) for s in args.seeds.split(",")], workers=args.workers,
                            split_seed=SPLIT_SEED if args.split_seed is None else args.split_seed)
    for name, c in doc["candidates"].items():
        p = c["plan"]
        score = f"validation Dice {c['val_dice_mean']:.4f} ± {c['val_dice_std']:.4f}" if c["runs"] else "the only candidate"
        print(f"{name:5s} spacing {p['spacing']}, patch {p['patch_size']}, {p['iterations']} iterations: {score}")
    print(f"chosen: {doc['chosen']} (wrote {Path(args.out) / 'resolution.json'})")
    return 0


def cmd_bench_latency(args) -> int:
    from .harness.latency import run_latency

    out = run_latency(tuple(args.shape), args.out, data=args.data, repeats=args.repeats,
                      round_iterations=args.round_iterations, model=args.model)
    print(json.dumps(out, indent=2))
    return 0


def _threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_bench_effort(args) -> int:
    from .harness.bench import SPLIT_SEED
    from .harness.effort import run_effort

    _threads(args.threads)
    doc = run_effort(args.model, args.data, args.out, test_data=args.test_data, target=args.target,
                     guides=tuple(g for g in args.guides.split(",") if g), cases=args.cases, seed=args.seed,
                     split_seed=SPLIT_SEED if args.split_seed is None else args.split_seed)
    print(f"{doc['cases']} case(s), target Dice {doc['target']:.2f}, {doc['seconds_per_case']:.1f}s per case")
    for g, s in doc["guides"].items():
        print(f"{g:12s} median effort {s['median_effort']:.4f}  mean {s['mean_effort']:.4f}  reaching "
              f"{s['cases_reaching']}/{doc['cases']}  regions {s['regions_visited']:.1f}  edited {s['edited_voxels']}")
    print(f"wrote {Path(args.out) / 'effort.json'}, effort.png")
    return 0


def cmd_bench_loop(args) -> int:
    from .harness.bench import SPLIT_SEED
    from .harness.loop import LoopOptions, run_loop

    _threads(args.threads)
    doc = run_loop(LoopOptions(data=args.data, out=args.out, start_labeled=args.start_labeled, rounds=args.rounds,
                               cases_per_round=args.cases_per_round, test_data=args.test_data, profile=args.profile,
                               iterations=args.iterations, round_iterations=args.round_iterations,
                               target=args.target, candidates=args.candidates, seed=args.seed,
                               split_seed=SPLIT_SEED if args.split_seed is None else args.split_seed))
    for r in doc["rounds"]:
        print(f"round {r['round']}: {r['labeled']} labeled  synergypl dice {r['synergypl']['dice']:.4f} effort "
              f"{r['synergypl']['effort']:.3f}  manual dice {r['manual']['dice']:.4f} effort {r['manual']['effort']:.3f}")
    print(f"wrote {Path(args.out) / 'loop.json'}, loop.png")
    return 0


def cmd_demo(args) -> int:
    from .harness.demo import DemoOptions, run_demo

    opts = DemoOptions(data=Path(args.data) if args.data else None, out=Path(args.out) if args.out else None,
                       iterations=args.iterations, round_iterations=args.round_iterations, labeled=args.labeled,
                       pool=args.pool, review=args.review,
                       evaluate=args.evaluate, target_dice=args.target_dice, port=args.port, seed=args.seed,
                       keep=Path(args.keep) if args.keep else None, threads=args.threads)
    return run_demo(opts)


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="headless demo of the full labeling loop through the API")
    d.add_argument("--data", default=None, help="Decathlon folder (default: ../shared/data/hippocampus)")
    d.add_argument("--out", default=None, help="write report.md and PNGs here (e.g. docs/demo)")
    d.add_argument("--iterations", type=int, default=200, help="iterations of the first round (from scratch)")
    d.add_argument("--round-iterations", type=int, default=100,
                   help="iterations of the second round (fine-tuning the first model)")
    d.add_argument("--labeled", type=int, default=4, help="labeled cases for the first round")
    d.add_argument("--pool", type=int, default=12, help="unlabeled cases in the project")
    d.add_argument("--review", type=int, default=4, help="cases the simulated annotator corrects")
    d.add_argument("--evaluate", type=int, default=6, help="held-out cases for Dice before/after")
    d.add_argument("--target-dice", type=float, default=0.90)
    d.add_argument("--port", type=int, default=0, help="0: a free port")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: default)")
    d.add_argument("--keep", default=None, help="keep the demo project in this folder")
    d.set_defaults(func=cmd_demo)


def add_loop_parser(sub: argparse._SubParsersAction, default_data: str) -> None:
    lo = sub.add_parser("bench-loop", help="labeling rounds: SynergyPL (heatmap-guided review) vs manual (full review)")
    lo.add_argument("--data", default=default_data)
    lo.add_argument("--start-labeled", type=int, default=3, help="labeled cases of round 0 (the bench's first subset)")
    lo.add_argument("--rounds", type=int, default=5, help="labeling rounds after round 0")
    lo.add_argument("--cases-per-round", type=int, default=4, help="cases corrected per round")
    lo.add_argument("--test-data", default=None, help="report on this Decathlon folder's cases instead of the test split")
    lo.add_argument("--profile", default="cpu", choices=["cpu", "gpu"])
    lo.add_argument("--iterations", type=int, default=None,
                    help="round 0's iteration budget instead of the plan's (fine-tuning rounds get a third)")
    lo.add_argument("--round-iterations", type=int, default=None,
                    help="each fine-tuning round's budget (default: a third of round 0's)")
    lo.add_argument("--target", type=float, default=0.90, help="Dice the annotator corrects each case to")
    lo.add_argument("--candidates", type=int, default=None,
                    help="rank only the first N waiting pool cases each round (quick looks; default: all)")
    lo.add_argument("--seed", type=int, default=0, help="training seed")
    lo.add_argument("--split-seed", type=int, default=None)
    lo.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    lo.add_argument("--out", required=True)
    lo.set_defaults(func=cmd_bench_loop)


def build_parser() -> argparse.ArgumentParser:
    default_data = str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hippocampus")
    p = argparse.ArgumentParser(prog="synergypl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on a Decathlon folder (few labels + unlabeled cases)")
    t.add_argument("--data", required=True, help="Decathlon folder (dataset.json, imagesTr/, labelsTr/)")
    t.add_argument("--labeled", type=int, default=None, help="use labels of only N cases (rest unlabeled)")
    t.add_argument("--method", default="synergypl", choices=["supervised", "mean_teacher", "sgrs", "synergypl", "full"])
    t.add_argument("--profile", default="cpu", choices=["cpu", "gpu"])
    t.add_argument("--config", help="engine config (JSON or YAML) instead of a profile")
    t.add_argument("--iterations", type=int)
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init", help="fine-tune from this model.pt")
    t.add_argument("--resume", action="store_true", help="resume from OUT/state.pt")
    t.add_argument("--out", required=True, help="output folder (model.pt, state.pt)")
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("infer", help="label map, heatmap, regions and a PNG next to each input "
                       "(volumes in the input's format; NRRD for a DICOM series)")
    i.add_argument("--model", required=True, help="model.pt")
    i.add_argument("inputs", nargs="+", help="NIfTI / NRRD files or DICOM series folders")
    i.add_argument("--out", help="write here instead of next to the input")
    i.add_argument("--threshold", type=float, default=None, help="heatmap threshold for flagged regions")
    i.set_defaults(func=cmd_infer)

    b = sub.add_parser("bench", help="the benchmark (v2) of shared/BENCHMARK.md")
    b.add_argument("--data", default=default_data)
    b.add_argument("--labeled", type=int, default=7, help="labeled cases per subset, drawn from the training pool")
    b.add_argument("--methods", default="supervised,mean_teacher,sgrs,synergypl,full")
    b.add_argument("--subsets", type=int, default=3, help="different labeled subsets (each method sees the same)")
    b.add_argument("--seeds", default="0", help="training seeds, comma-separated (vary randomness within a subset)")
    b.add_argument("--profile", default="cpu", choices=["cpu", "gpu"])
    b.add_argument("--test-data", default=None,
                   help="report on this Decathlon folder's cases instead of the test split (training unchanged)")
    b.add_argument("--iterations", type=int, default=None, help="override the plan's iteration budget")
    b.add_argument("--split-seed", type=int, default=None, help="seed of the test/validation/pool split")
    b.add_argument("--measure-plan", action="store_true",
                   help="time the network on this machine for the plan instead of the cost model")
    b.add_argument("--workers", type=int, default=1, help="runs in parallel (each gets cores/workers threads)")
    b.add_argument("--reuse-runs", action="store_true",
                   help="evaluate runs that finished in an earlier bench into the same --out again instead of "
                        "training them (their heatmap error model is fitted first when missing)")
    b.add_argument("--update", action="store_true",
                   help="re-run only --methods (they must include supervised and synergypl) and keep the other "
                        "methods' results from the bench already in --out (same split, subsets, seeds and plan)")
    b.add_argument("--resolution", default="full", choices=["full", "low", "auto"],
                   help="the plan's resolution: auto chooses on validation (supervised at each candidate; "
                        "kept in --out/resolution.json)")
    b.add_argument("--warmup", type=float, default=None,
                   help="warm-start share of mean_teacher and synergypl when one was chosen for the dataset on "
                        "validation (the ablation table); default: the methods' own (0.3)")
    b.add_argument("--out", required=True)
    b.set_defaults(func=cmd_bench)

    ab = sub.add_parser("bench-ablation", help="synergypl's ablations, scored on the validation split")
    ab.add_argument("--data", default=default_data)
    ab.add_argument("--labeled", type=int, default=3)
    ab.add_argument("--variants", default="all", help="comma-separated names of harness/ablation.py VARIANTS, or all")
    ab.add_argument("--subsets", type=int, default=3)
    ab.add_argument("--seeds", default="0")
    ab.add_argument("--profile", default="cpu", choices=["cpu", "gpu"])
    ab.add_argument("--iterations", type=int, default=None, help="override the plan's iteration budget")
    ab.add_argument("--split-seed", type=int, default=None)
    ab.add_argument("--workers", type=int, default=1)
    ab.add_argument("--reference-runs", default=None, metavar="DIR",
                    help="a benchmark's runs/ folder: score its supervised/synergypl checkpoints instead of retraining")
    ab.add_argument("--resolution", default="full", choices=["full", "low"], help="the plan's resolution")
    ab.add_argument("--out", required=True)
    ab.set_defaults(func=cmd_bench_ablation)

    cr = sub.add_parser("choose-resolution",
                        help="train supervised at each of the planner's resolutions, keep the better on validation")
    cr.add_argument("--data", default=default_data)
    cr.add_argument("--labeled", type=int, default=3)
    cr.add_argument("--subsets", type=int, default=3)
    cr.add_argument("--seeds", default="0")
    cr.add_argument("--profile", default="cpu", choices=["cpu", "gpu"])
    cr.add_argument("--split-seed", type=int, default=None)
    cr.add_argument("--workers", type=int, default=1)
    cr.add_argument("--out", required=True)
    cr.set_defaults(func=cmd_choose_resolution)

    pl = sub.add_parser("plan", help="fingerprint a Decathlon folder and print its plan (spacing, patch, batch, iterations)")
    pl.add_argument("--data", required=True)
    pl.add_argument("--profile", default="cpu", choices=["cpu", "gpu"])
    pl.add_argument("--measure", action="store_true", help="time the network instead of the cost model")
    pl.add_argument("--resolution", default="full", choices=["full", "low"],
                    help="low: the working spacing coarsened for context (when the dataset has such a candidate)")
    pl.set_defaults(func=cmd_plan)

    lat = sub.add_parser("bench-latency", help="plain vs synergy prediction time, and one retraining round")
    lat.add_argument("--shape", type=int, nargs=3, default=[256, 256, 128])
    lat.add_argument("--data", default=default_data)
    lat.add_argument("--repeats", type=int, default=3)
    lat.add_argument("--round-iterations", type=int, default=None)
    lat.add_argument("--model", default=None,
                     help="time predictions with this model.pt and skip the retraining round (round_seconds null)")
    lat.add_argument("--out", required=True)
    lat.set_defaults(func=cmd_bench_latency)

    ef = sub.add_parser("bench-effort", help="review effort to a target Dice along each guide (heatmap, entropy, ...)")
    ef.add_argument("--model", required=True, help="model.pt")
    ef.add_argument("--data", default=default_data, help="Decathlon folder (its test split is reviewed)")
    ef.add_argument("--test-data", default=None, help="review this Decathlon folder's cases instead of the test split")
    ef.add_argument("--target", type=float, default=0.90, help="Dice the annotator corrects each case to")
    ef.add_argument("--guides", default="synergy,entropy,mc_dropout,random,full_review",
                    help="comma-separated guides (default: all)")
    ef.add_argument("--cases", type=int, default=None, help="only the first N test cases (quick looks)")
    ef.add_argument("--seed", type=int, default=0, help="seed of the random guide's block order")
    ef.add_argument("--split-seed", type=int, default=None, help="seed of the test/validation/pool split")
    ef.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ef.add_argument("--out", required=True)
    ef.set_defaults(func=cmd_bench_effort)

    try:
        from .service.commands import add_parsers
    except ImportError as exc:  # the service extra is not installed
        if "SynergyPLLib.service" not in str(exc) and "fastapi" not in str(exc) and "sqlalchemy" not in str(exc):
            raise
    else:
        add_parsers(sub)
        add_loop_parser(sub, default_data)  # the next-case policy is the service's
        add_demo_parser(sub)  # the demo runs the service: only where the service extra is installed
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .engine.io import VolumeError

    try:
        return int(args.func(args) or 0)
    except (VolumeError, ValueError, FileNotFoundError) as exc:
        print(f"synergypl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synergypl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
