"""Label map <-> segmentation, on the reference volume's grid, and one segment as a mask.

In: a label array (``[i, j, k]`` on the reference volume's grid), the reference volume, the project's
classes (``SegmentClass``) and an optional segmentation node to refill. Out: a segmentation node with one
named, coloured, coded segment per class (under the volume's parent transform); back, a label array with
the project's label values and the names of the segments that are not classes; one segment as a boolean
mask; a mask as ``vtkOrientedImageData`` (to set a segment from an array).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import slicer
import vtk

from .attributes import SOURCE_VOLUME_ATTRIBUTE
from .nodes import SceneError, get_scene, remove_with_display
from .terminology import SegmentClass, apply_class, segment_ids_by_value
from .transforms import array_to_matrix, ijk_to_ras, place_under_transform_of
from .volumes import add_volume_from_array, array_ijk

_log = logging.getLogger(__name__)


def labelmap_to_segmentation(label: np.ndarray, reference_volume, classes: Sequence[SegmentClass],
                             segmentation_node=None, name: str | None = None, scene=None):
    """Fill a segmentation node from a label array (``[i, j, k]``, on the reference volume's grid).

    One segment per class, in class order, named, coloured and coded from ``classes`` (classes absent
    from the label get an empty segment, ready to paint). An existing node is emptied first. Voxels
    with values that are not classes are dropped (logged). Returns the segmentation node.
    """
    scene = get_scene(scene)
    label = np.asarray(label)
    reference_shape = tuple(reference_volume.GetImageData().GetDimensions())
    if tuple(label.shape) != reference_shape:
        raise SceneError(f"label shape {label.shape} does not match volume {reference_volume.GetName()} "
                         f"shape {reference_shape}")
    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", name or f"{reference_volume.GetName()} segmentation")
    segmentation_node.CreateDefaultDisplayNodes()
    # Under the volume's transform first: the reference geometry is then the volume's own IJK-to-RAS.
    place_under_transform_of(segmentation_node, reference_volume)
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    segmentation_node.SetNodeReferenceID("referenceImageGeometryRef", reference_volume.GetID())
    segmentation_node.SetAttribute(SOURCE_VOLUME_ATTRIBUTE, reference_volume.GetID())

    known = {c.value for c in classes}
    unknown = sorted(set(np.unique(label).tolist()) - known - {0})
    if unknown:
        _log.warning("label values %s are not project classes and were left out", unknown)
        label = np.where(np.isin(label, list(unknown)), 0, label)

    segmentation = segmentation_node.GetSegmentation()
    was_modifying = segmentation_node.StartModify()
    try:
        segmentation.RemoveAllSegments()
        temporary = add_volume_from_array(label.astype(np.uint8 if label.max(initial=0) < 256 else np.uint16),
                                          ijk_to_ras(reference_volume), "__SynergyPL_label__",
                                          "vtkMRMLLabelMapVolumeNode", scene)
        # The label is on the volume's grid, so it lives where the volume lives: the import then maps
        # it into the segmentation without a shift (a label map without transform would get the inverse).
        place_under_transform_of(temporary, reference_volume)
        try:
            if label.any() and not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                    temporary, segmentation_node):
                raise SceneError("Slicer could not import the label map into the segmentation")
        finally:
            remove_with_display(temporary, scene)
        by_label = {}
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            by_label[segment.GetLabelValue()] = segmentation.GetNthSegmentID(index)
        for position, cls in enumerate(classes):
            segment_id = by_label.get(cls.value)
            if segment_id is None:
                segment_id = segmentation.AddEmptySegment(f"SynergyPL_{cls.value}", cls.name, list(cls.color))
            apply_class(segmentation.GetSegment(segment_id), cls)
            current = segmentation.GetSegmentIndex(segment_id)
            if current != position:
                segmentation.SetSegmentIndex(segment_id, position)
    finally:
        segmentation_node.EndModify(was_modifying)
    display = segmentation_node.GetDisplayNode()
    if display is not None:
        display.SetAllSegmentsVisibility2DOutline(True)
        display.SetAllSegmentsVisibility2DFill(True)
        display.SetOpacity2DFill(0.35)
    return segmentation_node


def segmentation_to_labelmap(segmentation_node, reference_volume, classes: Sequence[SegmentClass],
                             scene=None) -> tuple[np.ndarray, list[str]]:
    """The segmentation as a label array (``[i, j, k]``, uint8/16) on the reference volume's grid.

    Returns ``(label, skipped)``: ``skipped`` names the segments that are not project classes (left out).
    Where segments overlap, the higher class value wins.
    """
    scene = get_scene(scene)
    segmentation = segmentation_node.GetSegmentation()
    by_value = segment_ids_by_value(segmentation_node, classes)
    values = sorted(v for v in by_value if v in {c.value for c in classes})
    used = {by_value[v] for v in values}
    skipped = [segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName()
               for i in range(segmentation.GetNumberOfSegments())
               if segmentation.GetNthSegmentID(i) not in used]
    dims = reference_volume.GetImageData().GetDimensions()
    dtype = np.uint8 if max(values + [0]) < 256 else np.uint16
    label = np.zeros(tuple(dims), dtype=dtype)
    if not values:
        return label, skipped
    exported = _export_segments(segmentation_node, [by_value[value] for value in values], reference_volume,
                                "Slicer could not export the segmentation to a label map", scene)
    # The export numbers segments 1..n in the order given; map back to class values.
    lookup = np.zeros(len(values) + 1, dtype=dtype)
    lookup[1:] = values
    if exported.shape != label.shape:
        raise SceneError(f"exported label shape {exported.shape} differs from the volume's {label.shape}")
    return lookup[exported.astype(np.int64)], skipped


def oriented_image(mask: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    """``mask`` (``[i, j, k]``) as ``vtkOrientedImageData`` (uint8) with the given IJK-to-RAS geometry."""
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*mask.shape)
    image.SetImageToWorldMatrix(array_to_matrix(ijk_to_ras_matrix))
    flat = np.ascontiguousarray(np.transpose(mask.astype(np.uint8), (2, 1, 0))).ravel()
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    return image


def _export_segments(segmentation_node, segment_ids: Sequence[str], reference_volume, error: str,
                     scene) -> np.ndarray:
    """The segments (numbered 1..n in the order given) as a label array on the reference volume's grid."""
    ids = vtk.vtkStringArray()
    for segment_id in segment_ids:
        ids.InsertNextValue(segment_id)
    temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__SynergyPL_export__")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, temporary, reference_volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
            raise SceneError(error)
        return array_ijk(temporary)
    finally:
        remove_with_display(temporary, scene)


def segment_mask(segmentation_node, segment_id: str, reference_volume, scene=None) -> np.ndarray:
    """One segment as a boolean array (``[i, j, k]``) on the reference volume's grid."""
    return _export_segments(segmentation_node, [segment_id], reference_volume, f"could not export segment {segment_id}",
                            get_scene(scene)) > 0
