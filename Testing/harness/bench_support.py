"""What the harness tests share: the hippocampus data and a tiny Decathlon folder of its real cases (symlinked)."""

from __future__ import annotations

import json
import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("SYNERGYPL_SHARED", Path(__file__).resolve().parents[2].parent / "shared")) / "data"
DATA = SHARED_DATA / "hippocampus"
TINY_ITERATIONS = 4


def tiny_dataset(root: Path, ids: list[str], data: Path = DATA) -> Path:
    """A Decathlon folder of real cases of ``data`` (hippocampus unless told; symlinked)."""
    meta = json.loads((data / "dataset.json").read_text())
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in ids:
        for sub in ("imagesTr", "labelsTr"):
            (root / sub / f"{i}.nii.gz").symlink_to(data / sub / f"{i}.nii.gz")
    meta["training"] = [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids]
    meta["numTraining"] = len(ids)
    meta["test"] = []
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
