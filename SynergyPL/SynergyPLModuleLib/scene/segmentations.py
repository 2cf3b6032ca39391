"""Scene helpers: everything the panel does to MRML, without Qt.

These functions run in Slicer and, unchanged, on slicer-core (Slicer's MRML and logic as a Python
package, used by the tests). Each takes the scene explicitly (default: ``slicer.mrmlScene``) and uses
only MRML/VTK classes and static logic methods, never ``slicer.app`` or ``slicer.modules``.

Conventions:
- Arrays exchanged with the service are indexed ``[i, j, k]`` (the engine's convention); VTK and
  ``slicer.util.arrayFromVolume`` use ``[k, j, i]``. Every conversion happens here.
- Geometry is a 4x4 IJK-to-RAS matrix (Slicer's world frame). Files and the service use LPS; the
  conversion is ``diag(-1, -1, 1, 1)``.
- Segments created from the project's classes carry the tag ``SynergyPL.LabelValue`` so that a
  segmentation the radiologist edited (renamed, reordered, new layers) still maps back to label values.
- Slicer 5.8 (Python 3.9) and 5.10+ (Python 3.12): only API present in both. A segment's terminology
  is its ``TerminologyEntry`` tag (``vtkSegment.SetTerminology`` / ``GetTerminology`` exist only from
  5.10 and read and write that same tag); colour-table terminology exists only from 5.10 and is optional.
- Parent transforms: a segmentation or heatmap made for a volume sits under the volume's parent
  transform, and label maps are imported and exported through the volume's parent transform, so in
  world space they lie on the volume and their voxels are the volume's voxels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk

_log = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

CASE_ID_ATTRIBUTE = "SynergyPL.CaseId"
CASE_SERVER_ATTRIBUTE = "SynergyPL.CaseServer"
LABEL_VERSION_ATTRIBUTE = "SynergyPL.LabelVersion"
MODEL_VERSION_ATTRIBUTE = "SynergyPL.ModelVersion"
ROLE_ATTRIBUTE = "SynergyPL.Role"
SOURCE_VOLUME_ATTRIBUTE = "SynergyPL.SourceVolumeID"
LABEL_VALUE_TAG = "SynergyPL.LabelValue"
REGIONS_ATTRIBUTE = "SynergyPL.Regions"
# Volumes the panel makes that are not images to label (never offered as cases).
NON_CASE_ROLES = ("heatmap", "regionmap")

CONFIDENCE_COLORS_NAME = "SynergyPL Confidence"
SEGMENT_EDITOR_SINGLETON_TAG = "SegmentEditor"

TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
TISSUE_CODE = ("SCT", "85756007", "Tissue")


class SceneError(RuntimeError):
    """An MRML operation failed; the message says which and why."""


# ------------------------------------------------------------------------------------------------
# Classes (segment names, colours, terminology)
# ------------------------------------------------------------------------------------------------
def _code_triple(code: Mapping | Sequence | None) -> tuple[str, str, str]:
    """A coded entry as (scheme, value, meaning) from the service's dict or a 3-sequence."""
    if not code:
        return ("", "", "")
    if isinstance(code, Mapping):
        return (str(code.get("scheme", code.get("CodingSchemeDesignator", ""))),
                str(code.get("code", code.get("value", code.get("CodeValue", "")))),
                str(code.get("meaning", code.get("CodeMeaning", ""))))
    scheme, value, meaning = (list(code) + ["", "", ""])[:3]
    return (str(scheme), str(value), str(meaning))


@dataclass(frozen=True)
class SegmentClass:
    """One label value of the project: its name, colour (RGB 0..1) and coded terminology."""

    value: int
    name: str
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    category: tuple[str, str, str] = TISSUE_CODE
    type: tuple[str, str, str] = TISSUE_CODE
    type_modifier: tuple[str, str, str] = ("", "", "")

    @classmethod
    def from_dict(cls, entry: Mapping, value: int | None = None) -> SegmentClass:
        """Build from the service's class description.

        Accepts ``{"value"|"label": int, "name": str, "color": [r, g, b] (0..255 or 0..1),
        "terminology": {"category": code, "type": code, "typeModifier": code}}`` where each code is
        ``{"scheme", "code", "meaning"}`` or ``[scheme, code, meaning]``.
        """
        label_value = int(entry.get("value", entry.get("label", value if value is not None else 0)))
        color = tuple(float(c) for c in (entry.get("color") or (128, 128, 128))[:3])
        if max(color) > 1.0:
            color = tuple(c / 255.0 for c in color)
        term = entry.get("terminology") or {}
        category = _code_triple(term.get("category")) if term.get("category") else TISSUE_CODE
        type_code = _code_triple(term.get("type")) if term.get("type") else TISSUE_CODE
        modifier = _code_triple(term.get("typeModifier") or term.get("type_modifier"))
        return cls(label_value, str(entry.get("name", f"Label {label_value}")), color, category, type_code, modifier)

    def terminology_string(self) -> str:
        """Slicer's serialised terminology entry (the segment's ``TerminologyEntry`` tag)."""
        def fmt(code: tuple[str, str, str]) -> str:
            return "^".join(code)
        return "~".join([TERMINOLOGY_CONTEXT, fmt(self.category), fmt(self.type), fmt(self.type_modifier),
                         ANATOMIC_CONTEXT, "^^", "^^"])


def classes_from_dicts(entries: Iterable[Mapping] | Mapping) -> list[SegmentClass]:
    """The project's foreground classes (background, value 0, is dropped), sorted by value.

    Accepts a list of class dicts or a mapping ``{value: name}`` / ``{value: dict}``.
    """
    if isinstance(entries, Mapping):
        items = []
        for key, item in entries.items():
            if isinstance(item, Mapping):
                items.append(SegmentClass.from_dict(item, int(key)))
            else:
                items.append(SegmentClass.from_dict({"name": str(item)}, int(key)))
    else:
        items = [SegmentClass.from_dict(entry, index) for index, entry in enumerate(entries)]
    return sorted((c for c in items if c.value > 0), key=lambda c: c.value)


# ------------------------------------------------------------------------------------------------
# Scene and geometry
# ------------------------------------------------------------------------------------------------
def get_scene(scene=None):
    """``scene`` or Slicer's current scene."""
    scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise SceneError("no MRML scene (slicer.mrmlScene is not set)")
    return scene


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def ijk_to_ras(volume_node) -> np.ndarray:
    """The node's own 4x4 IJK-to-RAS matrix (ignoring parent transforms)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)


def ijk_to_world_ras(volume_node) -> np.ndarray:
    """IJK to world RAS, through the node's parent transforms when they are linear."""
    matrix = ijk_to_ras(volume_node)
    transform_node = volume_node.GetParentTransformNode()
    if transform_node is not None:
        if not transform_node.IsTransformToWorldLinear():
            raise SceneError(f"{volume_node.GetName()}: its parent transform is not linear; harden it first")
        to_world = vtk.vtkMatrix4x4()
        transform_node.GetMatrixTransformToWorld(to_world)
        matrix = matrix_to_array(to_world) @ matrix
    return matrix


def ijk_to_ras_from_lps(spacing: Sequence[float], origin: Sequence[float], direction) -> np.ndarray:
    """IJK-to-RAS matrix of an ITK/LPS geometry (what the engine's ``Volume.ijk_to_ras`` returns)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=float).reshape(3, 3) @ np.diag([float(s) for s in spacing])
    lps[:3, 3] = [float(o) for o in origin]
    return LPS_TO_RAS @ lps


def array_ijk(volume_node) -> np.ndarray:
    """A copy of the node's voxels as ``[i, j, k]``."""
    image = volume_node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise SceneError(f"{volume_node.GetName()}: volume has no voxels")
    # One copy of VTK's [k, j, i] buffer; its transpose is [i, j, k] (Fortran-ordered, no second copy).
    return np.array(slicer.util.arrayFromVolume(volume_node), copy=True).T


def add_volume_from_array(array: np.ndarray, ijk_to_ras_matrix: np.ndarray, name: str,
                          class_name: str = "vtkMRMLScalarVolumeNode", scene=None):
    """A new volume node holding ``array`` (``[i, j, k]``) with the given geometry."""
    scene = get_scene(scene)
    node = scene.AddNewNodeByClass(class_name, name)
    update_volume_from_array(node, array, ijk_to_ras_matrix)
    node.CreateDefaultDisplayNodes()
    return node


def update_volume_from_array(volume_node, array: np.ndarray, ijk_to_ras_matrix: np.ndarray | None = None) -> None:
    """Replace the node's voxels with ``array`` (``[i, j, k]``) and, if given, its geometry."""
    if array.ndim != 3:
        raise SceneError(f"expected a 3D array, got shape {array.shape}")
    if ijk_to_ras_matrix is not None:
        volume_node.SetIJKToRASMatrix(array_to_matrix(ijk_to_ras_matrix))
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.int64:
        array = array.astype(np.int32)
    slicer.util.updateVolumeFromArray(volume_node, np.ascontiguousarray(np.transpose(array, (2, 1, 0))))


def _volume_storage_node(path: str | os.PathLike, scene):
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    # Keep the file's voxel order: the service compares voxel grids, so no silent axis flips.
    storage.SetForceRightHandedIJKCoordinateSystem(False)
    scene.AddNode(storage)
    return storage


def read_volume_file(path: str | os.PathLike, name: str | None = None, labelmap: bool = False, scene=None):
    """Load an image file (NRRD, NIfTI, MHA) into a new volume node with Slicer's own reader."""
    scene = get_scene(scene)
    path = Path(path)
    if not path.exists():
        raise SceneError(f"{path}: no such file")
    class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, name or _strip_extensions(path.name))
    storage = _volume_storage_node(path, scene)
    try:
        if not storage.ReadData(node):
            scene.RemoveNode(node)
            raise SceneError(f"{path}: Slicer could not read this image")
    finally:
        scene.RemoveNode(storage)
    node.CreateDefaultDisplayNodes()
    return node


def write_volume_file(volume_node, path: str | os.PathLike, compress: bool = True, scene=None) -> Path:
    """Write a volume node (NRRD, NIfTI by extension) with Slicer's own writer; returns the path."""
    scene = get_scene(scene)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = _volume_storage_node(path, scene)
    storage.SetUseCompression(bool(compress))
    try:
        if not storage.WriteData(volume_node):
            raise SceneError(f"{path}: Slicer could not write {volume_node.GetName()}")
    finally:
        scene.RemoveNode(storage)
    return path


def _strip_extensions(name: str) -> str:
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ------------------------------------------------------------------------------------------------
# Node attributes: what the panel remembers in the scene
# ------------------------------------------------------------------------------------------------
def case_id(volume_node, server_key: str | None = None) -> str | None:
    """The case id this volume was uploaded as, if uploaded to ``server_key`` (any server if None)."""
    if volume_node is None:
        return None
    value = volume_node.GetAttribute(CASE_ID_ATTRIBUTE)
    if not value:
        return None
    if server_key is not None and volume_node.GetAttribute(CASE_SERVER_ATTRIBUTE) != server_key:
        return None
    return value


def set_case_id(volume_node, case: str, server_key: str) -> None:
    """Remember on the node (saved with the scene) that it is ``case`` on ``server_key``."""
    volume_node.SetAttribute(CASE_ID_ATTRIBUTE, str(case))
    volume_node.SetAttribute(CASE_SERVER_ATTRIBUTE, server_key)


def find_volume_for_case(case: str, server_key: str, scene=None):
    """The volume node already holding ``case`` from ``server_key``, or None."""
    scene = get_scene(scene)
    for node in case_volumes(scene):
        if case_id(node, server_key) == str(case):
            return node
    return None


def is_case_volume(node) -> bool:
    """True for an image the radiologist may label: a scalar volume that is neither a label map nor a
    volume the panel made (heatmap, region map: their ``SynergyPL.Role`` attribute)."""
    return (node is not None and node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
            and node.GetAttribute(ROLE_ATTRIBUTE) not in NON_CASE_ROLES)


def case_volumes(scene=None) -> list:
    """The scene's volumes that can be cases, in scene order."""
    scene = get_scene(scene)
    nodes = (scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")))
    return [node for node in nodes if is_case_volume(node)]


def non_case_volume_ids(scene=None) -> list[str]:
    """IDs of the scalar volumes the panel made (heatmaps, region maps): what the case selector hides."""
    scene = get_scene(scene)
    nodes = (scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")))
    return [node.GetID() for node in nodes if node.GetAttribute(ROLE_ATTRIBUTE) in NON_CASE_ROLES]


def nodes_made_for(volume_node, class_name: str, scene=None) -> list:
    """Segmentations or heatmaps the panel made for ``volume_node`` (newest last)."""
    scene = get_scene(scene)
    if volume_node is None:
        return []
    found = []
    for index in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(index, class_name)
        if node.GetAttribute(SOURCE_VOLUME_ATTRIBUTE) == volume_node.GetID():
            found.append(node)
    return found


def nodes_for_volume(volume_node, segmentation_node=None, heatmap_node=None, scene=None) -> tuple:
    """The segmentation and heatmap to show with ``volume_node``: the current ones when they were made for
    it (or, for a segmentation, when the user chose one the panel did not make), else the newest the panel
    made for it, else None; so that a pseudo-label never lands in another case's segmentation."""
    chosen = []
    for current, class_name, role in ((segmentation_node, "vtkMRMLSegmentationNode", None),
                                      (heatmap_node, "vtkMRMLScalarVolumeNode", "heatmap")):
        source = current.GetAttribute(SOURCE_VOLUME_ATTRIBUTE) if current else None
        if volume_node is None or (current and source == volume_node.GetID()) or \
                (current and source is None and role is None):
            chosen.append(current)
            continue
        made = [n for n in nodes_made_for(volume_node, class_name, scene)
                if role is None or n.GetAttribute(ROLE_ATTRIBUTE) == role]
        chosen.append(made[-1] if made else None)
    return tuple(chosen)


# ------------------------------------------------------------------------------------------------
# Label map <-> segmentation
# ------------------------------------------------------------------------------------------------
def _apply_class(segment, cls: SegmentClass) -> None:
    segment.SetName(cls.name)
    segment.SetNameAutoGenerated(False)
    segment.SetColor(*cls.color)
    segment.SetColorAutoGenerated(False)
    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), cls.terminology_string())
    segment.SetTag(LABEL_VALUE_TAG, str(cls.value))


def segment_terminology(segment) -> str:
    """The segment's serialised terminology entry ("" if none), on Slicer 5.8 and 5.10+ alike."""
    value = vtk.reference("")
    if segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value):
        return str(value)
    return ""


def segment_label_value(segment) -> int | None:
    """The project label value a segment stands for (its tag), or None for a segment we did not make."""
    value = vtk.reference("")
    if segment.GetTag(LABEL_VALUE_TAG, value):
        try:
            return int(str(value))
        except ValueError:
            return None
    return None


def segment_ids_by_value(segmentation_node, classes: Sequence[SegmentClass] | None = None) -> dict[int, str]:
    """``{label value: segment id}``: by tag first, then by class name for segments without a tag."""
    segmentation = segmentation_node.GetSegmentation()
    found: dict[int, str] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        value = segment_label_value(segmentation.GetSegment(segment_id))
        if value is not None and value not in found:
            found[value] = segment_id
    for cls in classes or ():
        if cls.value not in found:
            segment_id = segmentation.GetSegmentIdBySegmentName(cls.name)
            if segment_id:
                found[cls.value] = segment_id
    return found


def place_under_transform_of(node, volume_node) -> None:
    """Put ``node`` under the same parent transform as ``volume_node`` (or under none)."""
    parent = volume_node.GetParentTransformNode()
    node.SetAndObserveTransformNodeID(parent.GetID() if parent is not None else None)


def reference_to_segmentation(reference_volume, segmentation_node) -> np.ndarray:
    """4x4 matrix from the reference volume's IJK to the segmentation's own coordinates (linear only)."""
    between = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
            reference_volume.GetParentTransformNode(), segmentation_node.GetParentTransformNode(), between):
        raise SceneError(f"the transform between {reference_volume.GetName()} and {segmentation_node.GetName()} "
                         "is not linear; harden it first")
    return matrix_to_array(between) @ ijk_to_ras(reference_volume)


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
            _remove_with_display(temporary, scene)
        by_label = {}
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            by_label[segment.GetLabelValue()] = segmentation.GetNthSegmentID(index)
        for position, cls in enumerate(classes):
            segment_id = by_label.get(cls.value)
            if segment_id is None:
                segment_id = segmentation.AddEmptySegment(f"SynergyPL_{cls.value}", cls.name, list(cls.color))
            _apply_class(segmentation.GetSegment(segment_id), cls)
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
    ids = vtk.vtkStringArray()
    for value in values:
        ids.InsertNextValue(by_value[value])
    temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__SynergyPL_export__")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, temporary, reference_volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
            raise SceneError("Slicer could not export the segmentation to a label map")
        exported = array_ijk(temporary)
    finally:
        _remove_with_display(temporary, scene)
    # The export numbers segments 1..n in the order given; map back to class values.
    lookup = np.zeros(len(values) + 1, dtype=dtype)
    lookup[1:] = values
    if exported.shape != label.shape:
        raise SceneError(f"exported label shape {exported.shape} differs from the volume's {label.shape}")
    return lookup[exported.astype(np.int64)], skipped


def _oriented_image(mask: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*mask.shape)
    image.SetImageToWorldMatrix(array_to_matrix(ijk_to_ras_matrix))
    flat = np.ascontiguousarray(np.transpose(mask.astype(np.uint8), (2, 1, 0))).ravel()
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    return image


def segment_mask(segmentation_node, segment_id: str, reference_volume, scene=None) -> np.ndarray:
    """One segment as a boolean array (``[i, j, k]``) on the reference volume's grid."""
    scene = get_scene(scene)
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__SynergyPL_segment__")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, temporary, reference_volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
            raise SceneError(f"could not export segment {segment_id}")
        return array_ijk(temporary) > 0
    finally:
        _remove_with_display(temporary, scene)


def _remove_with_display(node, scene) -> None:
    for index in range(node.GetNumberOfDisplayNodes()):
        display = node.GetNthDisplayNode(index)
        if display is not None:
            scene.RemoveNode(display)
    storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    if storage is not None:
        scene.RemoveNode(storage)
    scene.RemoveNode(node)


# ------------------------------------------------------------------------------------------------
# Confidence heatmap: a volume with its colour table, shown as the foreground layer
# ------------------------------------------------------------------------------------------------
_CONFIDENCE_STOPS = (0.0, 0.35, 0.6, 0.8, 1.0)
_CONFIDENCE_STOP_COLORS = ((0.85, 0.05, 0.05), (1.0, 0.55, 0.0), (1.0, 0.95, 0.2), (0.3, 0.8, 0.3), (0.1, 0.35, 0.8))


def _confidence_rgb(confidence: float) -> tuple[float, float, float]:
    """Red (uncertain) -> orange -> yellow -> green -> blue (certain), linear between the stops."""
    channels = np.transpose(_CONFIDENCE_STOP_COLORS)
    return tuple(float(np.interp(confidence, _CONFIDENCE_STOPS, channel)) for channel in channels)


def confidence_color_table(scene=None):
    """The colour table for confidence 0..1 (256 entries), created once per scene."""
    scene = get_scene(scene)
    table = scene.GetFirstNodeByName(CONFIDENCE_COLORS_NAME)
    if table is not None and table.IsA("vtkMRMLColorTableNode"):
        return table
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", CONFIDENCE_COLORS_NAME)
    table.SetTypeToUser()
    table.SetAttribute(ROLE_ATTRIBUTE, "confidence-colors")
    table.SetNumberOfColors(256)
    for index in range(256):
        confidence = index / 255.0
        table.SetColor(index, f"{confidence:.2f}", *_confidence_rgb(confidence), 1.0)
    return table


def show_heatmap(heatmap: np.ndarray, reference_volume, heatmap_node=None, threshold: float = 0.5,
                 opacity: float = 0.5, scene=None):
    """Put a confidence map (``[i, j, k]``, 1 = certain) on the reference volume's grid into a volume node.

    The node gets the confidence colour table, a fixed 0..1 window, a threshold that hides voxels more
    confident than ``threshold``, a colour legend, and is shown as the foreground layer of every slice
    view (reference volume in the background) with ``opacity``. Returns the heatmap node.
    """
    scene = get_scene(scene)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap_node is None:
        # Tagged before it enters the scene, so that the case selector never offers it (NodeAddedEvent).
        heatmap_node = slicer.vtkMRMLScalarVolumeNode()
        heatmap_node.SetName(scene.GenerateUniqueName(f"{reference_volume.GetName()} confidence"))
        heatmap_node.SetAttribute(ROLE_ATTRIBUTE, "heatmap")
        heatmap_node = scene.AddNode(heatmap_node)
    heatmap_node.SetAttribute(ROLE_ATTRIBUTE, "heatmap")
    heatmap_node.SetAttribute(SOURCE_VOLUME_ATTRIBUTE, reference_volume.GetID())
    update_volume_from_array(heatmap_node, heatmap, ijk_to_ras(reference_volume))
    place_under_transform_of(heatmap_node, reference_volume)
    heatmap_node.CreateDefaultDisplayNodes()
    display = heatmap_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(confidence_color_table(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetInterpolate(False)
    set_heatmap_threshold(heatmap_node, threshold)
    add_color_legend(heatmap_node)
    set_slice_layers(scene, background=reference_volume, foreground=heatmap_node, foreground_opacity=opacity)
    return heatmap_node


def set_heatmap_threshold(heatmap_node, threshold: float) -> None:
    """Show only voxels whose confidence is at most ``threshold`` (the rest is transparent)."""
    display = heatmap_node.GetDisplayNode()
    if display is None:
        return
    display.AutoThresholdOff()
    display.SetThreshold(-1.0, float(threshold))
    display.ApplyThresholdOn()


def add_color_legend(heatmap_node, title: str = "Confidence"):
    """A colour bar for the heatmap (in slice views), created once."""
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(heatmap_node)
    if legend is None:
        legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(heatmap_node)
    if legend is not None:
        legend.SetTitleText(title)
        legend.SetLabelFormat("%.1f")
        legend.SetNumberOfLabels(3)  # 0.0, 0.5, 1.0
        legend.SetVisibility(True)
    return legend


def slice_composite_nodes(scene=None) -> list:
    scene = get_scene(scene)
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


_KEEP = object()


def set_slice_layers(scene=None, background=_KEEP, foreground=_KEEP, foreground_opacity: float | None = None) -> None:
    """Set background / foreground volume (node or None) and foreground opacity in every slice view."""
    for composite in slice_composite_nodes(scene):
        if background is not _KEEP:
            composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        if foreground is not _KEEP:
            composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        if foreground_opacity is not None:
            composite.SetForegroundOpacity(float(foreground_opacity))


def show_volume(volume_node, slice_logics: Iterable = (), scene=None) -> None:
    """Show ``volume_node`` alone (background, no foreground) in every slice view and fit each view of
    ``slice_logics`` (``vtkMRMLSliceLogic``: Slicer's, or the tests') to it."""
    set_slice_layers(scene, background=volume_node, foreground=None)
    fit_slice_views(slice_logics)


def fit_slice_views(slice_logics: Iterable) -> None:
    """Fit each slice view to its volumes (what Slicer's "fit to window" button does)."""
    for logic in slice_logics:
        if logic is not None:
            logic.FitSliceToAll()


def set_heatmap_visible(heatmap_node, visible: bool, opacity: float, scene=None) -> None:
    """Show (with ``opacity``) or hide the heatmap layer in every slice view."""
    set_slice_layers(scene, foreground=heatmap_node if visible else None,
                     foreground_opacity=opacity if visible else 0.0)


# ------------------------------------------------------------------------------------------------
# Flagged regions: where to look
# ------------------------------------------------------------------------------------------------
def region_center_ras(region: Mapping, volume_node=None) -> tuple[float, float, float]:
    """World RAS of a flagged region's centre.

    Uses ``centroid_ijk`` through the volume's geometry (and parent transforms) when a volume is given,
    so it is right even if the volume moved in Slicer; else ``centroid_ras``, else ``centroid_lps``.
    """
    if volume_node is not None and region.get("centroid_ijk") is not None:
        ijk = np.append(np.asarray(region["centroid_ijk"], dtype=float)[:3], 1.0)
        return tuple(float(x) for x in (ijk_to_world_ras(volume_node) @ ijk)[:3])
    if region.get("centroid_ras") is not None:
        return tuple(float(x) for x in region["centroid_ras"][:3])
    if region.get("centroid_lps") is not None:
        lps = np.asarray(region["centroid_lps"], dtype=float)[:3]
        return (float(-lps[0]), float(-lps[1]), float(lps[2]))
    raise SceneError("region has no centroid")


def center_slice_views_on(ras: Sequence[float], scene=None) -> None:
    """Move and centre every slice view on the RAS point (vtkMRMLSliceNode.JumpAllSlices)."""
    scene = get_scene(scene)
    r, a, s = (float(x) for x in ras[:3])
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)


def slice_view_center_ras(slice_node) -> tuple[float, float, float]:
    """The RAS point at the centre of a slice view (where :func:`center_slice_views_on` put it)."""
    matrix = matrix_to_array(slice_node.GetSliceToRAS())
    return tuple(float(x) for x in matrix[:3, 3])


# ------------------------------------------------------------------------------------------------
# Segment Editor hand-off
# ------------------------------------------------------------------------------------------------
def configure_segment_editor(segmentation_node, source_volume, scene=None):
    """Point the Segment Editor module's parameter node at the segmentation and its source volume."""
    scene = get_scene(scene)
    editor_node = scene.GetSingletonNode(SEGMENT_EDITOR_SINGLETON_TAG, "vtkMRMLSegmentEditorNode")
    if editor_node is None:
        editor_node = slicer.vtkMRMLSegmentEditorNode()
        editor_node.SetSingletonTag(SEGMENT_EDITOR_SINGLETON_TAG)
        editor_node = scene.AddNode(editor_node)
    editor_node.SetAndObserveSegmentationNode(segmentation_node)
    editor_node.SetAndObserveSourceVolumeNode(source_volume)
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetNumberOfSegments() and not editor_node.GetSelectedSegmentID():
        editor_node.SetSelectedSegmentID(segmentation.GetNthSegmentID(0))
    return editor_node


# ------------------------------------------------------------------------------------------------
# Export and reload
# ------------------------------------------------------------------------------------------------
def export_segmentation(segmentation_node, path: str | os.PathLike, reference_volume=None,
                        classes: Sequence[SegmentClass] | None = None, scene=None) -> Path:
    """Write the segmentation to ``path``.

    - ``.seg.nrrd``: Slicer's segmentation file (segment names, colours, terminology kept), on the
      reference volume's full extent so voxel indices match the image.
    - ``.nii.gz`` / ``.nii`` / ``.nrrd``: a label map with the project's label values (needs
      ``reference_volume`` and ``classes``).
    """
    scene = get_scene(scene)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith(".seg.nrrd"):
        if reference_volume is not None:
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(path))
        storage.SetCropToMinimumExtent(False)
        storage.SetUseCompression(True)
        scene.AddNode(storage)
        try:
            if not storage.WriteData(segmentation_node):
                raise SceneError(f"{path}: Slicer could not write the segmentation")
        finally:
            scene.RemoveNode(storage)
        return path
    if reference_volume is None or classes is None:
        raise SceneError("a label-map export needs the reference volume and the project's classes")
    label, _skipped = segmentation_to_labelmap(segmentation_node, reference_volume, classes, scene)
    temporary = add_volume_from_array(label, ijk_to_ras(reference_volume), "__SynergyPL_export__",
                                      "vtkMRMLLabelMapVolumeNode", scene)
    try:
        write_volume_file(temporary, path, scene=scene)
    finally:
        _remove_with_display(temporary, scene)
    return path


def segment_summary(segmentation_node) -> list[dict]:
    """Name, colour, terminology and label-value tag of each segment, in order (for checks and tests)."""
    segmentation = segmentation_node.GetSegmentation()
    out = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        out.append({"id": segmentation.GetNthSegmentID(index), "name": segment.GetName(),
                    "color": tuple(segment.GetColor()), "terminology": segment_terminology(segment),
                    "value": segment_label_value(segment)})
    return out
