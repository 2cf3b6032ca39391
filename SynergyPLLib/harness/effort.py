"""``synergypl bench-effort``: how much review each guide needs to bring a model's predictions to a target
Dice (BENCHMARK.md, "Review effort"); the accounting is :mod:`.review`.

In: a checkpoint, a Decathlon folder (its test split of :func:`.bench.make_split`, or ``--test-data``).
Per test case, one prediction with the heatmap (``Predictor.predict(image, heatmap=True)``) gives the
label and the guides' confidence maps:

- ``synergy``: the heatmap and the prediction's flagged regions;
- ``entropy``: :func:`~..engine.uncertainty.entropy_confidence` of the calibrated probabilities;
- ``mc_dropout``: :func:`~..engine.uncertainty.mc_dropout_confidence`, 10 passes, back on the image grid;
- ``random``: blocks of the synergy regions' median size, in an order seeded by ``seed`` and the case;
- ``full_review``: the review box.

``entropy`` and ``mc_dropout`` get their regions from :func:`~..common.regions.flag_regions` with the
prediction's own ``RegionParams`` (the checkpoint's project settings), so only the signal differs.

Out: ``effort.json`` (the keys of BENCHMARK.md, plus ``curve`` per guide: the median Dice on the effort
grid, ``per_case`` and the settings) and ``effort.png``.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import numpy as np

from ..common.regions import RegionParams, flag_regions
from ..engine.data import load_decathlon
from ..engine.inference import Predictor, region_params
from ..engine.io import read_volume
from ..engine.uncertainty import entropy_confidence, mc_dropout_confidence
from .bench import SPLIT_SEED, _to_grid, make_split, test_cases
from .figures import effort_figure
from .review import MARGIN, SWEEP_STEP, Review, block_size, review_case

GUIDES = ("synergy", "entropy", "mc_dropout", "random", "full_review")
MC_PASSES = 10
EFFORT_GRID = np.round(np.linspace(0.0, 1.0, 101), 2)


def guide_maps(predictor: Predictor, image, guides: tuple[str, ...]) -> tuple[np.ndarray, dict, RegionParams]:
    """The predicted label and, per guide, ``(confidence map, flagged regions)`` on the image grid
    (``random`` and ``full_review`` get the synergy regions, for the block size)."""
    pred = predictor.predict(image, heatmap=True)
    label = pred.label.array
    params = pred.region_params or region_params(predictor.config)
    maps = {"synergy": (pred.heatmap.array, pred.regions)}
    if "entropy" in guides:
        maps["entropy"] = np.asarray(entropy_confidence(pred.probabilities), np.float32)
    if "mc_dropout" in guides:
        x = predictor.pre.image(image).as_tensor()[None]
        conf, _ = mc_dropout_confidence(predictor.net, lambda t: predictor.window.probabilities(t, predictor.temperature),
                                        x, passes=MC_PASSES)
        maps["mc_dropout"] = _to_grid(predictor, conf, image)
    for g in ("entropy", "mc_dropout"):
        if g in maps:
            conf = maps[g]
            maps[g] = (conf, flag_regions(conf, label, image.ijk_to_ras, predictor.classes, params))
    return label, maps, params


def case_reviews(label: np.ndarray, truth: np.ndarray, maps: dict, params: RegionParams, guides: tuple[str, ...],
                 target: float, num_classes: int, case_id: str, seed: int) -> list[Review]:
    """One :class:`.review.Review` per guide for one case."""
    out = []
    for g in guides:
        conf, regions = maps.get(g, maps["synergy"])
        rng = np.random.default_rng([seed, zlib.crc32(case_id.encode())])  # the same blocks whatever else runs
        _, r = review_case(label, truth, g, conf, regions, params.threshold, target, num_classes,
                           block_voxels=block_size(maps["synergy"][1]), rng=rng, case_id=case_id)
        out.append(r)
    return out


def summarize(reviews: list[Review], guides: tuple[str, ...]) -> dict:
    """Per guide: median and mean effort, cases reaching the target, regions visited (mean per case),
    edited voxels (total), mean Dice before and after, and the median Dice on :data:`EFFORT_GRID`."""
    out = {}
    for g in guides:
        rs = [r for r in reviews if r.guide == g]
        if not rs:
            continue
        curves = np.stack([r.effort_curve(EFFORT_GRID) for r in rs])
        out[g] = {"median_effort": float(np.median([r.effort for r in rs])),
                  "mean_effort": float(np.mean([r.effort for r in rs])),
                  "cases_reaching": int(sum(r.reached for r in rs)),
                  "regions_visited": float(np.mean([r.regions_visited for r in rs])),
                  "edited_voxels": int(sum(r.edited for r in rs)),
                  "reviewed_voxels": int(sum(r.reviewed for r in rs)),
                  "dice_before": float(np.mean([r.dice_before for r in rs])),
                  "dice_after": float(np.mean([r.dice_after for r in rs])),
                  "curve": {"effort": EFFORT_GRID.tolist(), "median_dice": np.median(curves, 0).round(5).tolist()}}
    return out


def per_case_entry(r: Review) -> dict:
    return {"case": r.case_id, "guide": r.guide, "effort": r.effort, "reached": r.reached,
            "regions_visited": r.regions_visited, "regions_total": r.regions_total, "edited_voxels": r.edited,
            "reviewed_voxels": r.reviewed, "box_voxels": r.box_voxels, "dice_before": r.dice_before,
            "dice_after": r.dice_after, "curve": r.effort_curve(EFFORT_GRID).round(5).tolist()}


def run_effort(model: str, data: str, out: str, *, test_data: str | None = None, target: float = 0.90,
               guides: tuple[str, ...] = GUIDES, cases: int | None = None, seed: int = 0,
               split_seed: int = SPLIT_SEED, progress: bool = True) -> dict:
    """Review every test case (the first ``cases`` of them if given) along every guide; write
    ``effort.json`` and ``effort.png`` in ``out`` and return the document."""
    unknown = [g for g in guides if g not in GUIDES]
    if unknown:
        raise ValueError(f"unknown guide(s) {unknown}; choose from {', '.join(GUIDES)}")
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    classes, all_cases = load_decathlon(data)
    split = make_split(all_cases, split_seed)
    specs = test_cases(split, test_data)[:cases] if cases else test_cases(split, test_data)
    predictor = Predictor.from_checkpoint(model)
    if list(predictor.classes) != list(classes):
        raise ValueError(f"the model's classes {predictor.classes} are not the data's {classes}")
    it = specs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(specs, desc="bench-effort", unit="case")
    reviews: list[Review] = []
    t0 = time.perf_counter()
    params = None
    for spec in it:
        image = read_volume(spec.image)
        truth = read_volume(spec.label, allow_constant=True).array.astype(np.int64)
        label, maps, params = guide_maps(predictor, image, guides)
        reviews += case_reviews(label.astype(np.int64), truth, maps, params, guides, target, len(classes), spec.id, seed)
        if progress:
            done = [r for r in reviews if r.guide == guides[0]]
            it.set_postfix({guides[0]: f"{np.median([r.effort for r in done]):.3f}"}, refresh=False)
    seconds = time.perf_counter() - t0
    doc = {"target": target, "cases": len(specs), "guides": summarize(reviews, guides),
           "model": str(model), "data": str(data), "test_data": str(test_data) if test_data else None,
           "split_seed": split_seed, "case_ids": [s.id for s in specs],
           "settings": {"review_box_margin": MARGIN, "sweep_step": SWEEP_STEP, "mc_dropout_passes": MC_PASSES,
                        "random_seed": seed, "region_params": params.to_dict() if params else None,
                        "outside_box": "every reviewed voxel counts (a region's voxels outside the box too); "
                                       "the heatmap sweep covers only the box"},
           "seconds_per_case": seconds / max(1, len(specs)),
           "per_case": [per_case_entry(r) for r in reviews]}
    (out_path / "effort.json").write_text(json.dumps(doc, indent=1))
    effort_figure(doc, out_path / "effort.png")
    return doc
