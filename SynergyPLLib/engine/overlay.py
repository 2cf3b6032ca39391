"""The overlay PNG of a prediction, drawn as a radiologist reads it (and as Slicer shows it).

In: the image, its prediction, the class names and the flag threshold.  Out: a PNG with an axial, a
coronal and a sagittal slice through the top flagged region: the image in grey, the heatmap tinting
only the voxels below the flag threshold, label outlines, the flagged regions' boxes, L/R/A/P/S/I
markers and a class legend.

Orientation (radiological convention, Slicer's default views): axial seen from the feet (patient left
on image right, anterior up), coronal seen from the front (patient left on image right, superior up),
sagittal seen from the patient's left (anterior on image left, superior up). Which array axis is axial,
coronal or sagittal comes from the direction matrix, not from the storage order; each view is a plane
of the volume's own grid (no resampling across thick slices), flipped and transposed so its axes point
as close as possible to the convention, and drawn with its physical extent in millimetres so voxel
spacing is respected. The markers name the patient direction each image edge really points to; for an
oblique series the title gives the tilt from the true patient plane.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .inference import Prediction
from .io import Volume

# letter of the negative and positive direction of each LPS axis
_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))
# view -> (patient axis of its normal, (patient axis to the image right, sign), (patient axis downwards, sign))
_CONVENTION = {"axial": (2, (0, +1), (1, +1)),      # right = +L, down = +P
               "coronal": (1, (0, +1), (2, -1)),    # right = +L, down = -S
               "sagittal": (0, (1, +1), (2, -1))}   # right = +P, down = -S
BOX_COLOR = "cyan"


@dataclass(frozen=True)
class ViewPlan:
    """How one view is cut from the ``[i, j, k]`` array and drawn."""

    name: str            # axial, coronal or sagittal
    slice_axis: int      # array axis held fixed
    col_axis: int        # array axis running along image columns (left to right)
    col_flip: bool       # True: index decreases to the right
    row_axis: int        # array axis running down the image rows
    row_flip: bool
    markers: dict        # {"left", "right", "top", "bottom"} -> patient direction letter
    tilt_deg: float      # angle between the slice normal and the true patient axis


def _letter(v: np.ndarray) -> str:
    a = int(np.argmax(np.abs(v)))
    return _LETTERS[a][int(v[a] > 0)]


def patient_axes(direction: np.ndarray) -> tuple[int, int, int]:
    """Array axis closest to each patient axis (x = R-L, y = A-P, z = I-S): the permutation with the
    largest sum of |cosines| (unique for any volume less than 45 degrees oblique)."""
    d = np.abs(np.asarray(direction, float).reshape(3, 3))
    best = max(itertools.permutations(range(3)), key=lambda p: sum(d[pa, p[pa]] for pa in range(3)))
    return tuple(int(a) for a in best)


def plan_views(volume: Volume) -> list[ViewPlan]:
    """Axial, coronal and sagittal plans for ``volume`` from its direction matrix."""
    d = np.asarray(volume.direction, float)
    axis_of = patient_axes(d)
    plans = []
    for name, (normal, (right_pa, right_sign), (down_pa, down_sign)) in _CONVENTION.items():
        ca, ra = axis_of[right_pa], axis_of[down_pa]
        col_flip = bool(np.sign(d[right_pa, ca]) != right_sign)
        row_flip = bool(np.sign(d[down_pa, ra]) != down_sign)
        right = d[:, ca] * (-1 if col_flip else 1)
        down = d[:, ra] * (-1 if row_flip else 1)
        markers = {"right": _letter(right), "left": _letter(-right), "bottom": _letter(down), "top": _letter(-down)}
        tilt = math.degrees(math.acos(min(1.0, abs(d[normal, axis_of[normal]]))))
        plans.append(ViewPlan(name, axis_of[normal], ca, col_flip, ra, row_flip, markers, tilt))
    return plans


def view_slice(array: np.ndarray, plan: ViewPlan, index: int) -> np.ndarray:
    """The 2D image ``[row, column]`` of ``plan`` at ``index`` along its slice axis, as displayed."""
    sl = np.take(array, index, axis=plan.slice_axis)
    rest = [a for a in range(3) if a != plan.slice_axis]
    img = sl if rest == [plan.row_axis, plan.col_axis] else sl.T
    if plan.row_flip:
        img = img[::-1]
    if plan.col_flip:
        img = img[:, ::-1]
    return img


def view_extent(shape: tuple[int, int, int], spacing, plan: ViewPlan) -> tuple[float, float, float, float]:
    """imshow ``extent`` (left, right, bottom, top) in millimetres: true physical proportions."""
    width = shape[plan.col_axis] * spacing[plan.col_axis]
    height = shape[plan.row_axis] * spacing[plan.row_axis]
    return (0.0, width, height, 0.0)


def _display_span(lo: int, hi: int, n: int, flip: bool, step: float) -> tuple[float, float]:
    """Millimetre start and length on the display axis of voxels lo..hi (inclusive) of an axis of n."""
    a, b = (n - 1 - hi, n - 1 - lo) if flip else (lo, hi)
    return a * step, (b - a + 1) * step


def box_rectangle(bbox_ijk, shape, spacing, plan: ViewPlan) -> tuple[float, float, float, float]:
    """(x, y, width, height) in display millimetres of a region's ``[[i0, j0, k0], [i1, j1, k1]]``
    (inclusive) box projected on this view; whether it reaches the shown slice: :func:`box_in_slice`."""
    lo, hi = bbox_ijk
    x, w = _display_span(lo[plan.col_axis], hi[plan.col_axis], shape[plan.col_axis], plan.col_flip,
                         spacing[plan.col_axis])
    y, h = _display_span(lo[plan.row_axis], hi[plan.row_axis], shape[plan.row_axis], plan.row_flip,
                         spacing[plan.row_axis])
    return x, y, w, h


def box_in_slice(bbox_ijk, plan: ViewPlan, index: int) -> bool:
    """True when the box spans slice ``index`` of the view's slice axis."""
    return bbox_ijk[0][plan.slice_axis] <= index <= bbox_ijk[1][plan.slice_axis]


def _centre(pred: Prediction, shape) -> list[int]:
    """The top flagged region's centroid; else the label's; else the volume's centre."""
    if pred.regions:
        c = pred.regions[0].centroid_ijk
    elif np.any(pred.label.array):
        c = np.argwhere(np.asarray(pred.label.array) > 0).mean(0)
    else:
        c = [(s - 1) / 2 for s in shape]
    return [int(min(max(round(float(v)), 0), s - 1)) for v, s in zip(c, shape, strict=True)]


def overlay_figure(image: Volume, pred: Prediction, classes: list[str], *, flag_threshold: float = 0.5,
                   title: str = "", max_boxes: int = 5):
    """The matplotlib figure of :func:`render_overlay` (returned open, for saving or inspection)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    img = np.asarray(image.array, dtype=np.float32)
    lab = np.asarray(pred.label.array)
    heat = None if pred.heatmap is None else np.asarray(pred.heatmap.array, dtype=np.float32)
    shape, spacing = image.shape, image.spacing
    centre = _centre(pred, shape)
    lo, hi = np.percentile(img, [1, 99])
    plans = plan_views(image)
    extents = [view_extent(shape, spacing, p) for p in plans]
    ratios = [(e[1] - e[0]) / (e[2] - e[3]) for e in extents]
    fig, axes = plt.subplots(1, 3, figsize=(3.6 * sum(ratios) + 1.5, 4.6), dpi=100,
                             gridspec_kw={"width_ratios": ratios})
    colours = {c: plt.cm.tab10(c % 10) for c in range(1, len(classes))}
    tint = None
    for ax, plan, extent in zip(axes, plans, extents, strict=True):
        index = centre[plan.slice_axis]
        ax.imshow(view_slice(img, plan, index), cmap="gray", vmin=lo, vmax=hi, extent=extent,
                  origin="upper", interpolation="nearest")
        if heat is not None:
            doubt = 1.0 - view_slice(heat, plan, index)
            shown = np.ma.masked_where(view_slice(heat, plan, index) >= flag_threshold, doubt)
            tint = ax.imshow(shown, cmap="inferno", vmin=0, vmax=1, alpha=0.6, extent=extent,
                             origin="upper", interpolation="nearest")
        lab2 = view_slice(lab, plan, index)
        xs = (np.arange(lab2.shape[1]) + 0.5) * spacing[plan.col_axis]
        ys = (np.arange(lab2.shape[0]) + 0.5) * spacing[plan.row_axis]
        for c, colour in colours.items():
            m = lab2 == c
            if m.any():
                ax.contour(xs, ys, m.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.2)
        for r in pred.regions[:max_boxes]:
            if box_in_slice(r.bbox_ijk, plan, index):
                x, y, w, h = box_rectangle(r.bbox_ijk, shape, spacing, plan)
                ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=BOX_COLOR, linewidth=1))
                ax.text(x, y, f"#{r.rank}", color=BOX_COLOR, fontsize=8, va="bottom")
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        for side, (x, y) in {"left": (0.02, 0.5), "right": (0.98, 0.5), "top": (0.5, 0.98),
                             "bottom": (0.5, 0.02)}.items():
            ax.text(x, y, plan.markers[side], transform=ax.transAxes, color="yellow", fontsize=11,
                    fontweight="bold", ha={"left": "left", "right": "right"}.get(side, "center"),
                    va={"top": "top", "bottom": "bottom"}.get(side, "center"),
                    bbox={"facecolor": "black", "alpha": 0.5, "pad": 1.0, "edgecolor": "none"})
        tilt = f", tilted {plan.tilt_deg:.1f}°" if plan.tilt_deg >= 1.0 else ""
        ax.set_title(f"{plan.name}  {index + 1}/{shape[plan.slice_axis]}{tilt}", fontsize=10)
        ax.axis("off")
    handles = [Line2D([], [], color=colours[c], linewidth=2, label=classes[c]) for c in colours]
    handles.append(Patch(fill=False, edgecolor=BOX_COLOR, label="flagged region (rank)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    if tint is not None:
        fig.colorbar(tint, ax=list(axes), fraction=0.02, pad=0.01,
                     label=f"1 - confidence (tinted where confidence < {flag_threshold:g})")
    mm = " x ".join(f"{s:g}" for s in spacing)
    fig.suptitle(f"{title or Path(image.source).name or 'case'} ({mm} mm voxels): label outlines, "
                 "low-confidence heatmap, top flagged regions", fontsize=10)
    fig.subplots_adjust(bottom=0.1)
    return fig


def render_overlay(image: Volume, pred: Prediction, path: Path, classes: list[str], *,
                   flag_threshold: float = 0.5, title: str = "") -> Path:
    """Write the overlay PNG (see the module docstring) to ``path``; returns ``path``."""
    import matplotlib.pyplot as plt

    fig = overlay_figure(image, pred, classes, flag_threshold=flag_threshold, title=title)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
