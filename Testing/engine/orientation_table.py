"""The orientation table of docs/orientation.md: case x voxel order -> voxels whose label differs, in
physical space, from the prediction on the file as stored; before (``preprocess.orientation: null``, the
old default) and after (the default, "RAS"). Also Dice against the truth.

Run from the repository root (a few minutes on 2 CPU cores)::

    PYTHONPATH=$PWD nice python Testing/engine/orientation_table.py [--iterations 300] [--out table.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from orientation_support import all_orders, axcodes, dice, oblique, on_grid, predict_label, reordered  # noqa: E402

from SynergyPLLib.engine.config import profile_config  # noqa: E402
from SynergyPLLib.engine.data import LoadedCase, Preprocessor, load_cases, load_decathlon  # noqa: E402
from SynergyPLLib.engine.inference import Predictor  # noqa: E402
from SynergyPLLib.engine.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NAMED = {"LPS (DICOM order)": ((0, 1, 2), (True, True, False)), "LPI": ((0, 1, 2), (True, True, True)),
         "permuted + flipped": ((2, 0, 1), (True, False, True))}


def train_model(orientation: str | None, iterations: int, out: Path) -> Path:
    classes, cases = load_decathlon(REPO.parent / "shared" / "data" / "hippocampus")
    cfg = profile_config("cpu", classes)
    cfg.preprocess.orientation = orientation
    cfg.train.iterations = iterations
    cfg.train.val_every = max(50, iterations // 4)
    pre = Preprocessor(cfg.preprocess)
    lab = load_cases(cases[:6], pre, 3)
    unl = [LoadedCase(c.id, c.image, None, c.volume) for c in load_cases(cases[6:30], pre, 3, labeled=False)]
    val = load_cases(cases[-6:], pre, 3)
    return Trainer(cfg, lab, unl, val, out).run().checkpoint


def measure(predictor: Predictor, image: Path, truth: Path, tmp: Path) -> dict:
    ref = sitk.ReadImage(str(image))
    gt = np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(truth))), (2, 1, 0))
    base = on_grid(predict_label(predictor, ref, tmp, "as_stored"), ref)
    row = {"as stored (RAS)": {"differing": 0, "dice": dice(base, gt)}}
    variants = {name: reordered(ref, *order) for name, order in NAMED.items()}
    variants["oblique 20 deg"] = oblique(ref, expand=True)
    variants["oblique 20 deg, same size"] = oblique(ref)
    for name, img in variants.items():
        lab = on_grid(predict_label(predictor, img, tmp, "v"), ref)
        row[name] = {"codes": axcodes(img), "differing": int((lab != base).sum()), "dice": dice(lab, gt)}
    diffs = [int((on_grid(predict_label(predictor, reordered(ref, *o), tmp, "v"), ref) != base).sum())
             for o in all_orders()]
    row["all 48 orders"] = {"orders_differing": sum(d > 0 for d in diffs), "max_differing": max(diffs)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    _, cases = load_decathlon(REPO.parent / "shared" / "data" / "hippocampus")
    held_out = cases[-9:-6]  # in no training or validation split above
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        legacy = train_model(None, args.iterations, tmp / "legacy")
        new = train_model("RAS", args.iterations, tmp / "ras")
        runs = {"before: orientation null (old checkpoint, file voxel order)": _legacy(legacy),
                "old checkpoint, legacy_orientation RAS (what the service does)":
                    Predictor.from_checkpoint(legacy, legacy_orientation="RAS"),
                "after: orientation RAS (new default)": Predictor.from_checkpoint(new)}
        for label, predictor in runs.items():
            table[label] = {c.id: measure(predictor, c.image, c.label, tmp) for c in held_out}
            print(label, json.dumps(table[label], indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=1))


def _legacy(ckpt: Path) -> Predictor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Predictor.from_checkpoint(ckpt)


if __name__ == "__main__":
    main()
