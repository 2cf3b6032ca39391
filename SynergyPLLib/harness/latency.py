"""``synergypl bench-latency``: what a pseudo-label with its heatmap and a retraining round cost.

- ``plain_seconds``: one sliding-window prediction of a ``shape`` volume;
- ``synergy_seconds``: the same prediction with confidence heatmap, region map and flagged regions;
- ``round_seconds``: one default retraining round (``TrainConfig.round_iterations`` iterations,
  fine-tuning the last model) on the hippocampus data; ``None`` when ``model`` is given (the predictions
  are then timed with that checkpoint and no round is trained).
Each is the median of ``repeats`` runs after a warm-up. The test volume is a real hippocampus image
mirrored out to ``shape`` (so the network sees anatomy, not noise).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..engine.config import profile_config
from ..engine.data import LoadedCase, Preprocessor, load_cases, load_decathlon
from ..engine.inference import Predictor
from ..engine.io import Volume, read_volume
from ..engine.model import default_device, device_name
from ..engine.trainer import Trainer


def mirrored_volume(src: Volume, shape: tuple[int, int, int]) -> Volume:
    """``src`` repeated by mirroring until it has ``shape`` (geometry: src's spacing and direction)."""
    arr = np.asarray(src.array, dtype=np.float32)
    pads = [(0, max(0, s - a)) for s, a in zip(shape, arr.shape, strict=True)]
    while any(p[1] for p in pads):
        arr = np.pad(arr, [(0, min(p[1], a)) for p, a in zip(pads, arr.shape, strict=True)], mode="symmetric")
        pads = [(0, max(0, s - a)) for s, a in zip(shape, arr.shape, strict=True)]
    arr = arr[: shape[0], : shape[1], : shape[2]]
    return Volume(np.ascontiguousarray(arr), src.spacing, src.origin, src.direction, "mirrored")


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_latency(shape: tuple[int, int, int], out: str | Path, data: str | Path, repeats: int = 3,
                round_iterations: int | None = None, n_unlabeled: int = 40, model: str | Path | None = None) -> dict:
    """Measure, write ``out/latency.json`` and return it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes, cases = load_decathlon(data)
    cfg = profile_config("cpu" if default_device() == "cpu" else "gpu", classes)
    cfg.train.iterations = round_iterations or cfg.train.round_iterations
    cfg.train.val_every = cfg.train.iterations
    if model is not None:
        predictor = Predictor.from_checkpoint(model)
        bar = tqdm(total=2 * (repeats + 1), desc="bench-latency", unit="step")
        return _time_predictions(predictor, read_volume(cases[0].image), shape, repeats, bar, out,
                                 {"round_seconds": None, "round_iterations": cfg.train.iterations})
    pre = Preprocessor(cfg.preprocess)
    lab = load_cases(cases[:7], pre, len(classes))
    unl = [LoadedCase(c.id, c.image, None, c.volume)
           for c in load_cases(cases[7:7 + n_unlabeled], pre, len(classes), labeled=False)]
    val = load_cases(cases[-20:], pre, len(classes))
    bar = tqdm(total=2 + 2 * (repeats + 1) + repeats, desc="bench-latency", unit="step")
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up round from scratch: also gives the model the predictions are timed with
        first = Trainer(cfg, lab, unl, val, Path(tmp) / "r0").run()
        bar.update(2)
        round_times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            Trainer(cfg, lab, unl, val, Path(tmp) / f"r{r + 1}", init_checkpoint=first.checkpoint).run()
            round_times.append(time.perf_counter() - t0)
            bar.update(1)
        predictor = Predictor.from_checkpoint(first.checkpoint)
    return _time_predictions(predictor, read_volume(cases[0].image), shape, repeats, bar, out,
                             {"round_seconds": round(statistics.median(round_times), 2),
                              "round_iterations": cfg.train.iterations})


def _time_predictions(predictor: Predictor, source: Volume, shape: tuple[int, int, int], repeats: int, bar,
                      out: Path, round_info: dict) -> dict:
    """Median plain and heatmap prediction times of ``source`` mirrored to ``shape``; writes latency.json."""
    volume = mirrored_volume(source, shape)

    def plain():
        predictor.predict(volume, heatmap=False)
        bar.update(1)

    def synergy():
        predictor.predict(volume, heatmap=True)
        bar.update(1)

    plain()  # warm-up
    t_plain = _median_time(plain, repeats)
    synergy()
    t_syn = _median_time(synergy, repeats)
    bar.close()
    result = {"device": device_name(), "shape": list(shape), "plain_seconds": round(t_plain, 3),
              "synergy_seconds": round(t_syn, 3), "ratio": round(t_syn / t_plain, 3),
              **round_info, "heatmap": predictor.info.get("heatmap"),
              "mix_views": predictor.config.inference.mix_views,
              "torch_threads": torch.get_num_threads(), "repeats": repeats}
    (out / "latency.json").write_text(json.dumps(result, indent=2))
    return result
