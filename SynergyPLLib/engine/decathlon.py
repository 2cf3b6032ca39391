"""The one reader of a Medical Segmentation Decathlon folder (``dataset.json``, ``imagesTr/``,
``labelsTr/``, ``imagesTs/``), without torch: the engine's :func:`~.data.load_decathlon` (training)
and the service's ``synergypl init`` (importing a project) both read through it, with one case-id rule.

Case id: the image file's name without its image extension (``hippocampus_001.nii.gz`` ->
``hippocampus_001``; ``case.v2.nrrd`` -> ``case.v2``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .io import VolumeError

IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def case_id_of(name: str | os.PathLike) -> str:
    """The case id of an image file: its name without the image extension."""
    base = os.path.basename(str(name).replace("\\", "/"))
    for ext in IMAGE_SUFFIXES:
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


@dataclass(frozen=True)
class DecathlonCase:
    case_id: str
    image: Path
    label: Path | None = None


@dataclass(frozen=True)
class Decathlon:
    """What ``dataset.json`` says: name, description, class names (index order, background first),
    the training cases (with their labels) and the test cases (images only)."""

    name: str
    description: str
    classes: list[str]
    training: list[DecathlonCase] = field(default_factory=list)
    test: list[DecathlonCase] = field(default_factory=list)


def read_decathlon(folder: str | Path, *, missing_labels_ok: bool = False, need_training: bool = True) -> Decathlon:
    """Read ``folder/dataset.json``; :class:`~.io.VolumeError` says which file and what is wrong.

    ``missing_labels_ok``: a listed label file that does not exist makes its case unlabeled (else an
    error); ``need_training``: a dataset without training cases is an error."""
    folder = Path(folder)
    meta_path = folder / "dataset.json"
    if not meta_path.exists():
        raise VolumeError(f"{folder}: no dataset.json (expected the Decathlon layout: dataset.json, imagesTr/, labelsTr/)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise VolumeError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise VolumeError(f"{meta_path}: not a JSON object")
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise VolumeError(f"{meta_path}: has no 'labels' mapping")
    try:
        index = {int(k): str(v) for k, v in labels.items()}
    except ValueError:
        raise VolumeError(f"{meta_path}: label keys must be integers, got {list(labels)}") from None
    if sorted(index) != list(range(len(index))):
        raise VolumeError(f"{meta_path}: label values must be 0..N-1, got {sorted(index)}")
    training = []
    for entry in meta.get("training", []):
        image = (folder / entry["image"]).resolve()
        label = (folder / entry["label"]).resolve() if entry.get("label") else None
        if not image.exists():
            raise VolumeError(f"{meta_path}: listed image {image} does not exist")
        if label is not None and not label.exists():
            if not missing_labels_ok:
                raise VolumeError(f"{meta_path}: listed label {label} does not exist")
            label = None
        training.append(DecathlonCase(case_id_of(image), image, label))
    if need_training and not training:
        raise VolumeError(f"{meta_path}: lists no training cases")
    test = []
    for entry in meta.get("test", []):
        image = (folder / (entry if isinstance(entry, str) else entry["image"])).resolve()
        test.append(DecathlonCase(case_id_of(image), image))
    return Decathlon(name=str(meta.get("name") or folder.name), description=str(meta.get("description") or ""),
                     classes=[index[i] for i in range(len(index))], training=training, test=test)
