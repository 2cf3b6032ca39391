"""``synergypl demo``: the whole labeling loop, headless, through the API with the real client.

1. A temporary project; a service process on 127.0.0.1; cases uploaded through the API: ``labeled``
   cases with their labels, a ``pool`` of unlabeled cases, and ``evaluate`` held-out cases.
2. Round 1 (from scratch), progress streamed over server-sent events.
3. Predictions with heatmaps for every waiting case; Dice of the held-out cases ("before").
4. A simulated annotator (:mod:`.annotator`, on the accounting of :mod:`.review`) takes ``review`` cases in
   the order of GET /api/next-case, fixes the flagged regions in rank order (copies the ground truth into
   each region's voxels) and, if the case has not reached ``target_dice`` yet, goes on with the rest of
   the review box least confident first (1% of the box at a time), and submits the result as a
   confirmed label.
5. Round 2 fine-tunes the model with the corrected cases; the held-out cases are uploaded again and
   predicted ("after"). They are in the project only while being scored, so no round trains on them.
6. Report: Dice before/after, voxels touched, and the labeling-efficiency share; with ``out`` a
   Markdown report and PNG figures.

Labeling efficiency: voxels the annotator touched (reviewed, and corrected where wrong) to reach
``target_dice``, as a share of the voxels a full review touches. A full review inspects every voxel of
the review box: the bounding box of the union of the predicted and the true foreground, dilated by 2
voxels (the same accounting as ``synergypl bench-effort``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The only library modules the demo uses (the service: project_init, and `python -m SERVICE_MODULE`):
from ..client import SynergyPLClient
from ..common.job_status import JobStatus
from ..common.metrics import mean_dice
from ..engine.io import read_volume, write_volume
from ..service.domain.project_init import init_project
from .annotator import ReviewResult, simulate_annotator
from .demo_report import write_report

SERVICE_MODULE = "SynergyPLLib.service"  # run as `python -m SERVICE_MODULE serve` for the demo's server


@dataclass
class DemoOptions:
    data: Path | None = None
    out: Path | None = None
    iterations: int = 200
    round_iterations: int | None = 100
    labeled: int = 4
    pool: int = 12
    review: int = 4
    evaluate: int = 6
    target_dice: float = 0.90
    port: int = 0
    seed: int = 0
    keep: Path | None = None
    threads: int = 0
    quiet: bool = False


def default_data() -> Path:
    shared = Path(os.environ.get("SYNERGYPL_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
    return shared / "data" / "hippocampus"


class _Say:
    def __init__(self, quiet: bool) -> None:
        self.quiet, self.t0 = quiet, time.monotonic()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(project: Path, port: int, threads: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ)
    if threads:
        env["SYNERGYPL_THREADS"] = str(threads)
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", SERVICE_MODULE, "serve", "--project", str(project),
                                 "--port", str(port), "--log-level", "warning"], stdout=fh, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    probe = SynergyPLClient(f"http://127.0.0.1:{port}", timeout=2)
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"the demo server exited: {log.read_text()[-2000:]}")
        try:
            probe.health()
            return proc
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the demo server did not start within 60 s")


def _train(c, say, iterations: int | None, label: str) -> dict:
    job = c.train(iterations=iterations)
    last = -1.0
    for ev in c.events(job["id"], timeout=300):
        d = ev["data"]
        if ev["event"] == "progress" and d.get("iteration") and d.get("total"):
            frac = d["iteration"] / d["total"]
            if frac - last >= 0.1 or d.get("val_dice") is not None and frac == 1.0:
                last = frac
                val = f", val Dice {d['best_val_dice']:.3f}" if d.get("best_val_dice") is not None else ""
                say(f"{label}: iteration {d['iteration']}/{d['total']}{val}, eta {d.get('eta_seconds') or 0:.0f}s")
    done = c.job(job["id"])
    if done["status"] != JobStatus.DONE:
        raise RuntimeError(f"{label} ended {done['status']}: {done['error']}")
    return done


def _predict_all(c, case_ids: list[str]) -> None:
    jobs = [c.predict(cid)["id"] for cid in case_ids]
    for j in jobs:
        c.wait_job(j, timeout=600)


def _pred_arrays(c, cid: str, tmp: Path):
    arrays = {}
    for kind in ("label", "heatmap", "regions"):
        p = c.download_prediction(cid, kind, tmp / f"{cid}-{kind}.nrrd")
        arrays[kind] = read_volume(p, allow_constant=True).array
    return arrays, c.prediction(cid)


@dataclass
class _Cases:
    """The demo's cases: ``labeled`` and ``pool`` go into the project, ``held`` only while scored."""

    title: str
    names: list[str]  # foreground class names
    labeled: list[tuple[Path, Path]]  # (image, label)
    pool: list[tuple[Path, Path]]
    held: list[tuple[Path, Path]]
    cid: dict[Path, str]  # image -> case id
    truth: dict[str, Path]  # case id -> label

    @property
    def num_classes(self) -> int:
        return len(self.names) + 1


def _choose_cases(opts: DemoOptions, data: Path) -> _Cases:
    meta = json.loads((data / "dataset.json").read_text())
    names = [meta["labels"][k] for k in sorted(meta["labels"], key=int) if int(k) != 0]
    pairs = sorted(((data / e["image"]).resolve(), (data / e["label"]).resolve()) for e in meta["training"])
    need = opts.labeled + opts.pool + opts.evaluate
    if len(pairs) < need:
        raise ValueError(f"{data} has {len(pairs)} labeled cases; the demo needs {need}")
    if opts.review > opts.pool:
        raise ValueError("--review cannot exceed --pool")
    order = np.random.default_rng(opts.seed).permutation(len(pairs))
    chosen = [pairs[i] for i in order[:need]]
    cid = {img: img.name.split(".")[0] for img, _ in chosen}
    return _Cases(f"{meta.get('name', data.name)} demo", names, chosen[:opts.labeled],
                  chosen[opts.labeled:opts.labeled + opts.pool], chosen[opts.labeled + opts.pool:], cid,
                  {cid[img]: lbl for img, lbl in chosen})


def _held_dice(c, cases: _Cases, tmp: Path) -> dict[str, float]:
    """Upload the held-out cases, predict them, score them, and take them out again."""
    for img, _ in cases.held:
        c.upload_case(img)
    _predict_all(c, [cases.cid[img] for img, _ in cases.held])
    out = {}
    for img, lbl in cases.held:
        arrays, _ = _pred_arrays(c, cases.cid[img], tmp)
        out[cases.cid[img]] = mean_dice(arrays["label"], read_volume(lbl, allow_constant=True).array,
                                        cases.num_classes)
        c.delete_case(cases.cid[img])
    return out


def _review(c, cases: _Cases, opts: DemoOptions, project: Path, tmp: Path, say):
    """The simulated annotator on ``opts.review`` cases in the order of GET /api/next-case; each result
    is submitted as a confirmed label. Returns the review results and the first case for the figure."""
    reviews: list[ReviewResult] = []
    figure_case = None
    for _ in range(opts.review):
        nxt = c.next_case(predict=False)
        if nxt["case"]["prediction"] is None:
            break
        case_id = nxt["case"]["id"]
        arrays, pred_doc = _pred_arrays(c, case_id, tmp)
        gt = read_volume(cases.truth[case_id], allow_constant=True).array
        fixed, res = simulate_annotator(arrays["label"], gt, arrays["heatmap"], pred_doc["regions"],
                                        pred_doc["flag_threshold"], opts.target_dice, cases.num_classes)
        res.case_id = case_id
        reviews.append(res)
        image = read_volume(project / "cases" / case_id / "image.nrrd")
        path = write_volume(image.with_array(fixed.astype(np.uint8)), tmp / f"{case_id}-fixed.nrrd")
        c.submit_label(case_id, path, author="simulated-annotator", parent_version=0,
                       model_version=pred_doc["model_version"])
        if figure_case is None:
            figure_case = (case_id, image.array, arrays, gt, pred_doc)
        say(f"annotator on {case_id} (disagreement {pred_doc['disagreement']:.0f}): Dice {res.dice_before:.3f}"
            f" -> {res.dice_regions_only:.3f} after {res.regions_fixed} flagged region(s) -> {res.dice_after:.3f}; "
            f"touched {res.touched} voxels (full review: {res.full_review})")
    return reviews, figure_case


def _loop(c, cases: _Cases, opts: DemoOptions, project: Path, tmp: Path, say) -> dict:
    """Upload, round 1, predictions, held-out Dice, the annotator, round 2, held-out Dice again."""
    for img, lbl in cases.labeled:
        c.upload_case(img)
        c.submit_label(cases.cid[img], lbl, author="expert", parent_version=0)
    for img, _ in cases.pool:
        c.upload_case(img)
    say(f"uploaded {len(cases.labeled) + len(cases.pool)} cases; device: {c.info()['device']}")

    r1 = _train(c, say, opts.iterations, "round 1")
    m1 = r1["result"]["metrics"]
    say(f"round 1 done: model v{r1['model_version']}, validation Dice {m1['val_dice']:.3f} "
        f"in {m1['train_seconds']:.0f}s")

    t = time.monotonic()
    queued = c.next_case(predict=True)["queued_predictions"]  # predicts every waiting case
    for j in queued:
        c.wait_job(j, timeout=600)
    pred_seconds = (time.monotonic() - t) / max(1, len(queued))
    say(f"predicted {len(queued)} cases with heatmaps ({pred_seconds:.2f}s per case through the API)")

    before = _held_dice(c, cases, tmp)
    say(f"held-out Dice with model v1: {np.mean(list(before.values())):.3f}")
    reviews, figure_case = _review(c, cases, opts, project, tmp, say)

    # round 2 (the held-out cases are not in the project meanwhile)
    r2 = _train(c, say, opts.round_iterations, "round 2")
    m2 = r2["result"]["metrics"]
    say(f"round 2 done: model v{r2['model_version']}, validation Dice {m2['val_dice']:.3f}")
    after = _held_dice(c, cases, tmp)
    say(f"held-out Dice with model v2: {np.mean(list(after.values())):.3f}")
    return {"before": before, "after": after, "reviews": reviews, "figure_case": figure_case, "m1": m1, "m2": m2,
            "pred_seconds": pred_seconds}


def run_demo(opts: DemoOptions) -> int:
    say = _Say(opts.quiet)
    data = Path(opts.data or default_data())
    cases = _choose_cases(opts, data)
    work = Path(opts.keep) if opts.keep else Path(tempfile.mkdtemp(prefix="synergypl-demo-"))
    project = work / "project"
    tmp = work / "downloads"
    tmp.mkdir(parents=True, exist_ok=True)
    init_project(project, None, classes=cases.names, name=cases.title, quiet=True).close()
    port = opts.port or _free_port()
    say(f"project {project}; service on 127.0.0.1:{port}; {len(cases.labeled)} labeled, {len(cases.pool)} "
        f"unlabeled, {len(cases.held)} held-out cases from {data}")
    proc = _start_server(project, port, opts.threads, work / "server.log")
    t_start = time.monotonic()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below
    try:
        c = SynergyPLClient(f"http://127.0.0.1:{port}", timeout=120, project=project)  # its token file
        r = _loop(c, cases, opts, project, tmp, say)
        total_seconds = time.monotonic() - t_start
    finally:
        signal.signal(signal.SIGTERM, previous)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)

    summary = summarize(r["before"], r["after"], r["reviews"], opts, r["m1"], r["m2"], r["pred_seconds"],
                        total_seconds)
    print_summary(summary)
    if opts.out:
        write_report(Path(opts.out), summary, r["reviews"], r["figure_case"], cases.names)
        say(f"wrote {Path(opts.out) / 'report.md'}")
    return 0


def summarize(before, after, reviews, opts, m1, m2, pred_seconds, total_seconds) -> dict:
    charged = [r.touched_to_target if r.touched_to_target is not None else r.touched for r in reviews]
    full = sum(r.full_review for r in reviews)
    return {
        "dice_before": float(np.mean(list(before.values()))), "dice_after": float(np.mean(list(after.values()))),
        "dice_before_cases": before, "dice_after_cases": after,
        "voxels_touched": int(sum(r.touched for r in reviews)),
        "voxels_to_target": int(sum(charged)), "full_review_voxels": int(full),
        "efficiency_share": float(sum(charged) / full) if full else None,
        # bench-loop's unit: one fully reviewed case = 1.0 (a case not at the target counts 1.0)
        "effort_cases": float(sum(min(1.0, c / r.full_review) if r.touched_to_target is not None else 1.0
                                  for c, r in zip(charged, reviews, strict=True) if r.full_review)),
        "cases_reaching_target": sum(r.touched_to_target is not None for r in reviews),
        "review_dice_regions_only": float(np.mean([r.dice_regions_only for r in reviews])) if reviews else None,
        "voxels_flagged_regions": int(sum(r.touched_regions for r in reviews)),
        "reviewed": len(reviews), "target_dice": opts.target_dice,
        "review_dice_before": float(np.mean([r.dice_before for r in reviews])) if reviews else None,
        "review_dice_after": float(np.mean([r.dice_after for r in reviews])) if reviews else None,
        "round1": m1, "round2": m2, "prediction_seconds_api": pred_seconds, "total_seconds": total_seconds,
        "options": {"iterations": opts.iterations, "round_iterations": opts.round_iterations or m2.get("iterations"),
                    "labeled": opts.labeled, "pool": opts.pool, "review": opts.review, "evaluate": opts.evaluate,
                    "seed": opts.seed},
    }


def print_summary(s: dict) -> None:
    share = "n/a" if s["efficiency_share"] is None else f"{100 * s['efficiency_share']:.1f} %"
    print("\n== SynergyPL demo ==")
    print(f"held-out Dice: before {s['dice_before']:.3f} -> after {s['dice_after']:.3f} "
          f"({len(s['dice_before_cases'])} cases)")
    if s["reviewed"]:
        print(f"reviewed cases: Dice {s['review_dice_before']:.3f} -> {s['review_dice_after']:.3f}; the annotator "
              f"touched {s['voxels_touched']} voxels")
    print(f"flagged regions alone: Dice {s['review_dice_before']:.3f} -> {s['review_dice_regions_only']:.3f} "
          f"touching {s['voxels_flagged_regions']} voxels")
    print(f"labeling efficiency: {s['voxels_to_target']} voxels touched to reach Dice {s['target_dice']:.2f} vs "
          f"{s['full_review_voxels']} for a full review = {share} ({s['cases_reaching_target']}/{s['reviewed']} "
          "cases reached it)")
    print(f"total {s['total_seconds']:.0f}s; prediction with heatmap {s['prediction_seconds_api']:.2f}s per case via the API")
