"""What the slice views actually show, rendered by Slicer's own slice pipeline (slicer-core +
trame-slicer, offscreen EGL): the heatmap is drawn over the image only where the model is unsure (the
threshold makes the rest transparent), in the confidence colours, and the segmentation outline is drawn.

Skipped where trame-slicer or offscreen OpenGL is not available.
"""

from __future__ import annotations

import numpy as np
import pytest
from SynergyPLModuleLib.scene import (
    heatmap_layer,
    navigation,
    segmentations,
    terminology,
    transforms,
    volumes,
)

pytest.importorskip("trame_slicer", reason="needs the dev extra trame-slicer (offscreen slice rendering)")

SIZE = 200


@pytest.fixture(scope="module")
def rendered():
    import slicer
    from screenshots import make_slicer_app, render_view

    app, views = make_slicer_app(SIZE)
    try:
        scene = app.scene
        shape = (40, 40, 20)
        image = np.full(shape, 100.0, np.float32)
        volume = volumes.add_volume_from_array(image, np.diag([1.0, 1.0, 1.0, 1.0]), "flat grey", scene=scene)
        volume.GetDisplayNode().AutoWindowLevelOff()
        volume.GetDisplayNode().SetWindowLevel(200, 100)  # grey 0.5
        heat = np.ones(shape, np.float32)
        heat[5:15, 5:15, :] = 0.0            # unsure: drawn red
        heat[25:35, 5:15, :] = 0.9           # sure: hidden by the 0.5 threshold
        heatmap = heatmap_layer.show_heatmap(heat, volume, threshold=0.5, opacity=1.0, scene=scene)
        label = np.zeros(shape, np.uint8)
        label[20:36, 20:36, :] = 1
        classes = terminology.classes_from_dicts([{"value": 1, "name": "Box", "color": [0, 0, 255]}])
        segmentation = segmentations.labelmap_to_segmentation(label, volume, classes, scene=scene)
        segmentation.GetDisplayNode().SetOpacity2DFill(0.0)
        navigation.center_slice_views_on((20.0, 20.0, 10.0), scene)
        pixels = render_view(views["axial"])
        # where voxel centres land on screen: map RAS through the slice's XY-to-RAS
        red_node = views["axial"]._view_node
        ras_to_xy = np.linalg.inv(transforms.matrix_to_array(red_node.GetXYToRAS()))
        assert slicer.mrmlScene is scene
        yield pixels, ras_to_xy, heatmap
    finally:
        for view in views.values():
            view.finalize()


def _pixel(pixels, ras_to_xy, ras):
    x, y = (ras_to_xy @ np.append(ras, 1.0))[:2]
    return pixels[pixels.shape[0] - 1 - int(round(y)), int(round(x))].astype(int)


def test_unsure_voxels_are_drawn_in_the_confidence_colour(rendered):
    pixels, ras_to_xy, _ = rendered
    r, g, b = _pixel(pixels, ras_to_xy, (10.0, 10.0, 10.0))   # identity IJK-to-RAS: voxel (10, 10, 10)
    assert r > 150 and g < 80 and b < 80, (r, g, b)


def test_sure_voxels_leave_the_image_visible(rendered):
    pixels, ras_to_xy, _ = rendered
    r, g, b = _pixel(pixels, ras_to_xy, (30.0, 10.0, 10.0))   # confidence 0.9 > threshold: no overlay
    assert abs(r - g) < 12 and abs(g - b) < 12 and 90 < r < 170, (r, g, b)


def test_segment_outline_is_drawn(rendered):
    pixels, ras_to_xy, _ = rendered
    corners = [(19.5, 28.0), (35.5, 28.0), (28.0, 19.5), (28.0, 35.5)]  # on the box's edges
    blues = [_pixel(pixels, ras_to_xy, (x, y, 10.0)) for x, y in corners]
    inside = _pixel(pixels, ras_to_xy, (28.0, 28.0, 10.0))
    assert any(b > 180 and r < 100 for r, g, b in blues), blues
    assert abs(int(inside[0]) - int(inside[2])) < 12  # no fill inside: the image shows through
