"""Model versions saved before checkpoints recorded an orientation (``preprocess.orientation: null``).

Such a model was trained on its training images' own voxel order. When those images all shared one
orientation (the project knows them: the version's ``data`` lists its cases, each case row keeps its
direction matrix), reordering every input to that orientation keeps the model's answers on images stored
like its training images exactly as they were and makes it right on every other one (a DICOM series in
LPS order for a model trained on RAS NIfTI files). When they did not share one, nothing can be inferred:
the model keeps the file's voxel order and the engine warns.

In: a workspace and a model version.  Out: the axis codes its training images shared, or None.
"""

from __future__ import annotations

from pathlib import Path

from SynergyPLLib.engine.data import axcodes_of
from SynergyPLLib.engine.inference import Predictor
from SynergyPLLib.engine.model import load_checkpoint

from ..store.db import Case, ModelVersion
from ..store.workspace import Workspace


def _case_ids(data: dict) -> list[str]:
    ids = []
    for key in ("labeled", "validation"):
        ids += [e[0] if isinstance(e, list | tuple) else e for e in data.get(key) or []]
    ids += list(data.get("unlabeled") or [])
    return ids


def training_orientation(ws: Workspace, version: int) -> str | None:
    """The axis codes shared by all images model ``version`` was trained on (its own and its ancestors'
    rounds: a fine-tuned legacy model saw their voxel order too); None when they differ or are unknown."""
    codes: set[str] = set()
    with ws.db.Session() as s:
        v: int | None = version
        while v is not None:
            mv = s.get(ModelVersion, v)
            if mv is None:
                return None
            ids = _case_ids(mv.data or {})
            if not ids:
                return None
            for cid in ids:
                case = s.get(Case, cid)
                if case is None or not (case.geometry or {}).get("direction"):
                    return None
                codes.add(axcodes_of(case.geometry["direction"]))
            v = mv.parent_version
    return codes.pop() if len(codes) == 1 else None


def is_legacy_checkpoint(path: Path) -> bool:
    """True for a checkpoint whose config keeps the file's voxel order (saved with orientation null)."""
    return load_checkpoint(path)["config"].get("preprocess", {}).get("orientation") is None


def load_predictor(ws: Workspace, version: int, path: Path, device: str | None = None) -> Predictor:
    """The model of ``version`` ready to predict; a legacy one reorders inputs to its training orientation."""
    legacy = training_orientation(ws, version) if is_legacy_checkpoint(path) else None
    return Predictor.from_checkpoint(path, device=device, legacy_orientation=legacy)
