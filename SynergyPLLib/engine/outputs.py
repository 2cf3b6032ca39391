"""Writing a prediction to disk: label, heatmap and region map volumes, flagged regions JSON, and a PNG
with three orthogonal slices (image, heatmap overlay, label contours) through the top flagged region.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .inference import Prediction
from .io import Volume, write_volume


def _stem_and_ext(path: Path) -> tuple[str, str]:
    name = path.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)], (".nrrd" if ext in (".nrrd", ".nhdr") else ".nii.gz")
    return name, ".nii.gz"  # a DICOM series folder


def write_prediction(pred: Prediction, image: Volume, input_path: Path, out_dir: Path | None,
                     classes: list[str]) -> dict[str, Path]:
    """Write ``<stem>_label``, ``_heatmap``, ``_regionmap`` volumes, ``_regions.json`` and ``_overlay.png``.

    Files go next to the input (beside a DICOM folder) unless ``out_dir`` is given. Returns the paths.
    """
    stem, ext = _stem_and_ext(input_path)
    folder = out_dir or input_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"label": folder / f"{stem}_label{ext}", "heatmap": folder / f"{stem}_heatmap{ext}",
             "region_map": folder / f"{stem}_regionmap{ext}", "regions": folder / f"{stem}_regions.json",
             "png": folder / f"{stem}_overlay.png"}
    write_volume(pred.label, paths["label"])
    if pred.heatmap is not None:
        write_volume(pred.heatmap, paths["heatmap"])
        write_volume(pred.region_map, paths["region_map"])
    paths["regions"].write_text(json.dumps({"classes": classes, "model": pred.model_info,
                                            "regions": [r.to_dict() for r in pred.regions]}, indent=2))
    render_overlay(image, pred, paths["png"], classes)
    return paths


def render_overlay(image: Volume, pred: Prediction, path: Path, classes: list[str]) -> Path:
    """Axial, coronal and sagittal slices through the top flagged region (or the centre):
    the image in grey, the heatmap's low-confidence voxels in colour, label outlines, region boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = np.asarray(image.array, dtype=np.float32)
    lab = np.asarray(pred.label.array)
    heat = None if pred.heatmap is None else np.asarray(pred.heatmap.array)
    centre = [int(round(c)) for c in pred.regions[0].centroid_ijk] if pred.regions else [s // 2 for s in img.shape]
    lo, hi = np.percentile(img, [1, 99])
    views = [("axial (k)", 2), ("coronal (j)", 1), ("sagittal (i)", 0)]
    fig, axes = plt.subplots(1, 3, figsize=(11, 4), dpi=100)
    for ax, (title, axis) in zip(axes, views, strict=True):
        sl = [slice(None)] * 3
        sl[axis] = centre[axis]
        sl = tuple(sl)
        ax.imshow(img[sl].T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
        if heat is not None:
            doubt = np.ma.masked_less(1.0 - heat[sl].T, 0.05)
            im = ax.imshow(doubt, cmap="inferno", vmin=0, vmax=1, alpha=0.6, origin="lower")
        for c in range(1, len(classes)):
            m = (lab[sl] == c).T
            if m.any():
                ax.contour(m, levels=[0.5], colors=[plt.cm.tab10(c)], linewidths=1.2)
        for r in pred.regions[:5]:
            (a0, b0), (a1, b1) = [[r.bbox_ijk[0][d], r.bbox_ijk[1][d]] for d in range(3) if d != axis]
            if r.bbox_ijk[0][axis] <= centre[axis] <= r.bbox_ijk[1][axis]:
                ax.add_patch(plt.Rectangle((a0 - 0.5, b0 - 0.5), a1 - a0 + 1, b1 - b0 + 1, fill=False,
                                           edgecolor="cyan", linewidth=1))
                ax.text(a0, b1 + 0.5, f"#{r.rank}", color="cyan", fontsize=8)
        ax.set_title(f"{title} = {centre[axis]}")
        ax.axis("off")
    if heat is not None:
        fig.colorbar(im, ax=axes, fraction=0.02, label="1 - confidence")
    fig.suptitle(f"{Path(image.source).name or 'case'}: label outlines, low-confidence heatmap, top flagged regions")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
