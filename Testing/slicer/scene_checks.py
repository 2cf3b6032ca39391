"""Scene helpers that only the tests (and the screenshots script) use: kept out of the Slicer module."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import slicer
from SynergyPLModuleLib.scene.attributes import ROLE_ATTRIBUTE
from SynergyPLModuleLib.scene.files import read_node_file, strip_extensions
from SynergyPLModuleLib.scene.nodes import SceneError, get_scene
from SynergyPLModuleLib.scene.segmentations import oriented_image, segment_mask
from SynergyPLModuleLib.scene.slice_views import set_slice_layers
from SynergyPLModuleLib.scene.terminology import SegmentClass
from SynergyPLModuleLib.scene.transforms import LPS_TO_RAS, reference_to_segmentation


def geometry_lps(ijk_to_ras_matrix: np.ndarray) -> dict:
    """ITK/LPS geometry (spacing, origin, direction columns) of an IJK-to-RAS matrix."""
    lps = LPS_TO_RAS @ np.asarray(ijk_to_ras_matrix, dtype=float)
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    return {"spacing": tuple(float(s) for s in spacing), "origin": tuple(float(o) for o in lps[:3, 3]),
            "direction": axes / spacing}


def class_color_table(classes: Sequence[SegmentClass], name: str = "SynergyPL Classes", scene=None):
    """A colour table node (one entry per label value, background transparent) with terminology."""
    scene = get_scene(scene)
    table = scene.GetFirstNodeByName(name)
    if table is None or not table.IsA("vtkMRMLColorTableNode"):
        table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    table.SetTypeToUser()
    table.SetAttribute(ROLE_ATTRIBUTE, "classes")
    top = max([c.value for c in classes] + [0])
    table.SetNumberOfColors(top + 1)
    table.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    for value in range(1, top + 1):
        table.SetColor(value, f"Label {value}", 0.5, 0.5, 0.5, 0.0)
    # Colour-table terminology exists from Slicer 5.10 on; 5.8 tables carry names and colours only.
    set_terminology = getattr(table, "SetTerminology", None)
    for c in classes:
        table.SetColor(c.value, c.name, c.color[0], c.color[1], c.color[2], 1.0)
        if set_terminology is not None:
            set_terminology(c.value, *c.category, *c.type, *c.type_modifier)
    return table


def set_segment_mask(segmentation_node, segment_id: str, mask: np.ndarray, reference_volume,
                     overwrite_other_segments: bool = True, scene=None) -> None:
    """Make a segment exactly ``mask`` (``[i, j, k]`` on the reference grid), like a Segment Editor edit.

    With ``overwrite_other_segments`` the voxels are also taken away from every other segment (the
    Segment Editor's default "overwrite all" masking).
    """
    mask = np.asarray(mask).astype(bool)
    matrix = reference_to_segmentation(reference_volume, segmentation_node)  # labelmaps are set in its frame
    segmentation = segmentation_node.GetSegmentation()
    if overwrite_other_segments:
        for index in range(segmentation.GetNumberOfSegments()):
            other = segmentation.GetNthSegmentID(index)
            if other == segment_id:
                continue
            current = segment_mask(segmentation_node, other, reference_volume, scene)
            if (current & mask).any():
                slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                    oriented_image(current & ~mask, matrix), segmentation_node, other,
                    slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            oriented_image(mask, matrix), segmentation_node, segment_id,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE):
        raise SceneError(f"could not set segment {segment_id}")


def slice_nodes(scene=None) -> list:
    scene = get_scene(scene)
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))]


def set_heatmap_opacity(opacity: float, scene=None) -> None:
    set_slice_layers(scene, foreground_opacity=opacity)


def load_segmentation_file(path: str | os.PathLike, name: str | None = None, scene=None):
    """Read a ``.seg.nrrd`` into a new segmentation node with Slicer's reader."""
    scene = get_scene(scene)
    path = Path(path)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or strip_extensions(path.name))
    return read_node_file(slicer.vtkMRMLSegmentationStorageNode(), node, path, "this segmentation", scene)
