"""Writing a prediction to disk: label, heatmap and region map volumes, flagged regions JSON, and the
overlay PNG (see :mod:`.overlay`).

Volumes keep the input's geometry: a NIfTI, NRRD or MHA input gets outputs in its own format; a DICOM
series gets NRRD, whose header stores origin and axes as decimal doubles (NIfTI stores float32, which
moves an oblique series' origin by ~1e-6 mm, enough for ITK to refuse to combine label and series).

Output names come from the input's name; :func:`output_stems` makes them unique across one run.
"""

from __future__ import annotations

import json
from pathlib import Path

from .inference import Prediction
from .io import Volume, write_volume
from .overlay import render_overlay

# input suffix -> (format tag used to tell same-named inputs apart, output suffix)
_FORMATS = {".nii.gz": ("nii", ".nii.gz"), ".nii": ("nii", ".nii.gz"), ".nrrd": ("nrrd", ".nrrd"),
            ".nhdr": ("nrrd", ".nrrd"), ".mha": ("mha", ".mha"), ".mhd": ("mha", ".mha")}
_DICOM = ("dicom", ".nrrd")  # a series folder: NRRD keeps its geometry in double precision
OUTPUT_KINDS = ("label", "heatmap", "region_map", "regions", "png")


def _split(path: Path) -> tuple[str, str, str]:
    """(stem, format tag, output suffix) of an input file or DICOM series folder."""
    name = path.name
    for ext, (tag, out_ext) in _FORMATS.items():
        if name.lower().endswith(ext):
            return name[: -len(ext)], tag, out_ext
    return name, *_DICOM


def output_stems(inputs: list[Path], out_dir: Path | None) -> list[str]:
    """One output name stem per input, unique among the inputs that write into the same folder.

    ``x.nii.gz`` gives ``x``; when two inputs would share a stem (``x.nii.gz`` and ``x.nrrd``) both get
    their format appended (``x_nii``, ``x_nrrd``). Raises ValueError, naming the inputs, when names still
    collide (the same file given twice, or same-named files from several folders into one ``--out``).
    """
    inputs = [Path(p) for p in inputs]
    parts = [_split(p) for p in inputs]
    folders = [(out_dir or p.parent).resolve() for p in inputs]
    plain = [(f, s) for f, (s, _, _) in zip(folders, parts, strict=True)]
    stems = [s if plain.count(key) == 1 else f"{s}_{tag}"
             for key, (s, tag, _) in zip(plain, parts, strict=True)]
    seen: dict[tuple[Path, str], Path] = {}
    for folder, stem, path in zip(folders, stems, inputs, strict=True):
        other = seen.setdefault((folder, stem), path)
        if other is not path:
            raise ValueError(f"inputs {other} and {path} would write the same outputs {folder / stem}_*; "
                             "give each input once, or run them with different --out folders")
    return stems


def output_paths(input_path: Path, out_dir: Path | None, stem: str | None = None) -> dict[str, Path]:
    """Where :func:`write_prediction` writes, by kind (see ``OUTPUT_KINDS``)."""
    input_path = Path(input_path)
    own_stem, _, ext = _split(input_path)
    stem = stem or own_stem
    folder = out_dir or input_path.parent
    return {"label": folder / f"{stem}_label{ext}", "heatmap": folder / f"{stem}_heatmap{ext}",
            "region_map": folder / f"{stem}_regionmap{ext}", "regions": folder / f"{stem}_regions.json",
            "png": folder / f"{stem}_overlay.png"}


def write_prediction(pred: Prediction, image: Volume, input_path: Path, out_dir: Path | None,
                     classes: list[str], *, flag_threshold: float = 0.5, stem: str | None = None) -> dict[str, Path]:
    """Write ``<stem>_label``, ``_heatmap``, ``_regionmap`` volumes, ``_regions.json`` and ``_overlay.png``.

    Files go next to the input (beside a DICOM folder) unless ``out_dir`` is given; ``stem`` defaults
    to the input's name (see :func:`output_stems`). ``flag_threshold`` is the heatmap value below which
    regions were flagged; the overlay tints only those voxels. Returns the paths written.
    """
    paths = output_paths(input_path, out_dir, stem)
    paths["png"].parent.mkdir(parents=True, exist_ok=True)
    write_volume(pred.label, paths["label"])
    if pred.heatmap is not None:
        write_volume(pred.heatmap, paths["heatmap"])
        write_volume(pred.region_map, paths["region_map"])
    else:
        del paths["heatmap"], paths["region_map"]
    paths["regions"].write_text(json.dumps({"classes": classes, "model": pred.model_info,
                                            "flag_threshold": flag_threshold,
                                            "region_params": pred.region_params.to_dict() if pred.region_params else None,
                                            "regions": [r.to_dict() for r in pred.regions]}, indent=2))
    render_overlay(image, pred, paths["png"], classes, flag_threshold=flag_threshold,
                   title=Path(input_path).name)
    return paths
