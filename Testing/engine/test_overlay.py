"""The overlay PNG as a radiologist reads it: patient orientation whatever the voxel storage order,
true physical proportions, markers, legend, boxes where the flagged regions are, and the heatmap
tinting only the voxels below the flag threshold.

Each case is a synthetic volume with a bright marker in its patient left-anterior-superior corner;
where that corner must appear follows from the patient coordinates alone (not from the code's plan).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.patches import Rectangle

from SynergyPLLib.engine.inference import Prediction, flag_regions
from SynergyPLLib.engine.io import Volume
from SynergyPLLib.engine.overlay import overlay_figure, render_overlay

CLASSES = ["background", "Anterior", "Posterior"]
THRESHOLD = 0.5


def _rot_x(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


# direction matrices (columns: the LPS direction of array axes i, j, k)
STORAGE = {
    "LPS axial (DICOM)": np.eye(3),
    "RAS axial (NIfTI)": np.diag([-1.0, -1.0, 1.0]),
    "LPI axial": np.diag([1.0, 1.0, -1.0]),
    "sagittal slices": np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], float),   # i = P, j = I, k = L
    "coronal slices": np.array([[1, 0, 0], [0, 0, -1], [0, -1, 0]], float),   # i = L, j = I, k = A
    "oblique axial 11 deg": _rot_x(11.0),
}


def _case(direction: np.ndarray, shape=(30, 24, 18), spacing=(0.7, 0.9, 2.5)):
    """Image with a bright 3x3x3 marker in the left-anterior-superior corner (2 voxels in), its
    prediction with the marker as class 1 and as a low-confidence region, and the marker voxel."""
    rng = np.random.default_rng(0)
    arr = rng.normal(100, 5, shape).astype(np.float32)
    image = Volume(arr, spacing=spacing, origin=(-10.0, 20.0, 5.0), direction=direction)
    inner = np.stack(np.meshgrid(*[np.arange(2, s - 2) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    lps = (image.ijk_to_lps @ np.c_[inner, np.ones(len(inner))].T)[:3].T
    marker = inner[np.argmax(lps[:, 0] - lps[:, 1] + lps[:, 2])]  # most left (+x), anterior (-y), superior (+z)
    box = tuple(slice(m - 1, m + 2) for m in marker)
    arr[box] = 1000.0
    label = np.zeros(shape, np.uint8)
    label[box] = 1
    heat = np.ones(shape, np.float32)
    heat[box] = 0.2
    heat[shape[0] // 2, shape[1] // 2, :] = 0.7  # uncertain but above the threshold: never tinted
    pred = Prediction(label=image.with_array(label), probabilities=np.zeros((3, 1, 1, 1), np.float32),
                      heatmap=image.with_array(heat), region_map=image.with_array(np.zeros(shape, np.uint8)))
    pred.regions = flag_regions(pred.heatmap, pred.label, CLASSES, threshold=THRESHOLD)
    return image, pred, marker


def _bright_position(ax) -> tuple[float, float]:
    """Where the marker is drawn in the view, as fractions of its width (0 = left) and height (0 = top)."""
    grey = ax.images[0]
    a = np.asarray(grey.get_array())
    rows, cols = np.nonzero(a > 500)
    return (cols.mean() + 0.5) / a.shape[1], (rows.mean() + 0.5) / a.shape[0]


def _nearest_array_axis(direction: np.ndarray, patient_axis: int) -> int:
    return int(np.argmax(np.abs(direction[patient_axis])))


@pytest.mark.parametrize("storage", list(STORAGE))
def test_views_are_in_patient_orientation_with_markers(storage):
    image, pred, marker = _case(STORAGE[storage])
    fig = overlay_figure(image, pred, CLASSES, flag_threshold=THRESHOLD)
    try:
        axial, coronal, sagittal = fig.axes[:3]
        # the views are named by the patient axis, whatever the storage order
        assert axial.get_title().startswith("axial")
        assert coronal.get_title().startswith("coronal")
        assert sagittal.get_title().startswith("sagittal")
        expected = {"axial": ("right", "top"), "coronal": ("right", "top"), "sagittal": ("left", "top")}
        for ax, name in ((axial, "axial"), (coronal, "coronal"), (sagittal, "sagittal")):
            x, y = _bright_position(ax)
            side, height = expected[name]
            assert (x > 0.75) if side == "right" else (x < 0.25), (name, x)
            assert y < 0.25, (name, y)  # anterior up in axial, superior up in coronal and sagittal
            letters = {t.get_text() for t in ax.texts if len(t.get_text()) == 1}
            pairs = {"axial": set("RLAP"), "coronal": set("RLSI"), "sagittal": set("APSI")}[name]
            assert letters == pairs, (name, letters)
            at = {t.get_text(): t.get_position() for t in ax.texts if len(t.get_text()) == 1}
            assert at[{"axial": "L", "coronal": "L", "sagittal": "P"}[name]][0] > 0.9  # on the right edge
            assert at[{"axial": "A", "coronal": "S", "sagittal": "S"}[name]][1] > 0.9  # on the top edge
        # the axial view holds the slice axis closest to the patient's superior-inferior axis fixed
        z_axis = _nearest_array_axis(image.direction, 2)
        assert sorted(np.asarray(axial.images[0].get_array()).shape) == sorted(
            s for a, s in enumerate(image.shape) if a != z_axis)
        tilted = "tilted" in axial.get_title()
        assert tilted == storage.startswith("oblique")
    finally:
        plt.close(fig)


@pytest.mark.parametrize("storage", ["LPS axial (DICOM)", "sagittal slices"])
def test_views_have_physical_proportions(storage):
    direction = STORAGE[storage]
    image, pred, _ = _case(direction, shape=(40, 36, 12), spacing=(0.6875, 0.6875, 6.5))
    fig = overlay_figure(image, pred, CLASSES, flag_threshold=THRESHOLD)
    try:
        fig.canvas.draw()
        views = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}  # (patient axis across, down)
        for ax, (across, down) in zip(fig.axes[:3], views.values(), strict=True):
            a, b = _nearest_array_axis(direction, across), _nearest_array_axis(direction, down)
            physical = image.shape[a] * image.spacing[a] / (image.shape[b] * image.spacing[b])
            box = ax.get_window_extent()
            assert box.width / box.height == pytest.approx(physical, rel=0.03), ax.get_title()
    finally:
        plt.close(fig)


@pytest.mark.parametrize("storage", ["RAS axial (NIfTI)", "coronal slices", "oblique axial 11 deg"])
def test_region_boxes_surround_the_flagged_voxels(storage):
    image, pred, _ = _case(STORAGE[storage])
    assert len(pred.regions) == 1 and pred.regions[0].voxel_count == 27
    fig = overlay_figure(image, pred, CLASSES, flag_threshold=THRESHOLD)
    try:
        for ax in fig.axes[:3]:
            boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
            assert len(boxes) == 1, ax.get_title()
            x0, x1, y0, y1 = ax.images[0].get_extent()[0], *ax.images[0].get_extent()[1:]
            width, height = x1 - x0, y0 - y1  # extent (left, right, bottom, top), top = 0
            r = boxes[0]
            assert r.get_width() > 0 and r.get_height() > 0
            assert 0 <= r.get_x() and r.get_x() + r.get_width() <= width + 1e-9
            assert 0 <= r.get_y() and r.get_y() + r.get_height() <= height + 1e-9
            # the box is the 3x3 marker: its centre is where the bright voxels are drawn
            fx, fy = _bright_position(ax)
            assert (r.get_x() + r.get_width() / 2) / width == pytest.approx(fx, abs=1e-6)
            assert (r.get_y() + r.get_height() / 2) / height == pytest.approx(fy, abs=1e-6)
            assert r.get_width() == pytest.approx(3 * width / ax.images[0].get_array().shape[1])
    finally:
        plt.close(fig)


def test_heatmap_tints_only_voxels_below_the_threshold_and_legend_names_classes():
    image, pred, _ = _case(np.eye(3))
    fig = overlay_figure(image, pred, CLASSES, flag_threshold=THRESHOLD)
    try:
        for ax in fig.axes[:3]:
            tint = np.ma.asarray(ax.images[1].get_array())
            tinted = int((~np.ma.getmaskarray(tint)).sum())
            assert tinted == 9, ax.get_title()  # the 3x3 cut of the marker; the 0.7 voxels are not tinted
            assert np.all(tint.compressed() == pytest.approx(0.8))
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert legend[:2] == ["Anterior", "Posterior"] and "flagged region" in legend[2]
    finally:
        plt.close(fig)


def test_png_is_written_and_small(tmp_path):
    image, pred, _ = _case(np.eye(3))
    path = render_overlay(image, pred, tmp_path / "x.png", CLASSES, flag_threshold=THRESHOLD, title="x")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 400_000
