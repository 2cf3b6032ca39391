"""Files through Slicer's own readers and writers: image files in, image and segmentation files out.

In: a path (NRRD, NIfTI, MHA; ``.seg.nrrd`` for segmentations) and, to write, a volume or segmentation
node (an export as a label map also needs the reference volume and the project's classes). Out: a new
volume node, or the path written. Voxel order is kept as in the file (no silent axis flips). A read or
write that fails raises ``SceneError``; the temporary storage node never stays in the scene.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import slicer

from .nodes import SceneError, get_scene, remove_with_display
from .segmentations import segmentation_to_labelmap
from .terminology import SegmentClass
from .transforms import ijk_to_ras
from .volumes import add_volume_from_array


def strip_extensions(name: str) -> str:
    """A file name without its image extension (``.seg.nrrd``, ``.nii.gz``, ``.nrrd``...): a node name."""
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _volume_storage_node():
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    # Keep the file's voxel order: the service compares voxel grids, so no silent axis flips.
    storage.SetForceRightHandedIJKCoordinateSystem(False)
    return storage


def read_node_file(storage, node, path: str | os.PathLike, what: str, scene=None):
    """Read ``path`` into ``node`` with the storage node ``storage`` (in the scene only for the read).

    On failure ``node`` is removed too and ``SceneError`` says "Slicer could not read ``what``".
    Returns ``node`` with its default display nodes.
    """
    scene = get_scene(scene)
    storage.SetFileName(str(path))
    scene.AddNode(storage)
    try:
        if not storage.ReadData(node):
            scene.RemoveNode(node)
            raise SceneError(f"{path}: Slicer could not read {what}")
    finally:
        scene.RemoveNode(storage)
    node.CreateDefaultDisplayNodes()
    return node


def write_node_file(storage, node, path: str | os.PathLike, what: str, scene=None) -> Path:
    """Write ``node`` to ``path`` (parent folders made) with the storage node ``storage`` (in the scene
    only for the write); ``SceneError`` says "Slicer could not write ``what``". Returns the path."""
    scene = get_scene(scene)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage.SetFileName(str(path))
    scene.AddNode(storage)
    try:
        if not storage.WriteData(node):
            raise SceneError(f"{path}: Slicer could not write {what}")
    finally:
        scene.RemoveNode(storage)
    return path


def read_volume_file(path: str | os.PathLike, name: str | None = None, labelmap: bool = False, scene=None):
    """Load an image file (NRRD, NIfTI, MHA) into a new volume node with Slicer's own reader."""
    scene = get_scene(scene)
    path = Path(path)
    if not path.exists():
        raise SceneError(f"{path}: no such file")
    class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, name or strip_extensions(path.name))
    return read_node_file(_volume_storage_node(), node, path, "this image", scene)


def write_volume_file(volume_node, path: str | os.PathLike, compress: bool = True, scene=None) -> Path:
    """Write a volume node (NRRD, NIfTI by extension) with Slicer's own writer; returns the path."""
    storage = _volume_storage_node()
    storage.SetUseCompression(bool(compress))
    return write_node_file(storage, volume_node, path, volume_node.GetName(), scene)


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
    if path.name.lower().endswith(".seg.nrrd"):
        if reference_volume is not None:
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetCropToMinimumExtent(False)
        storage.SetUseCompression(True)
        return write_node_file(storage, segmentation_node, path, "the segmentation", scene)
    path.parent.mkdir(parents=True, exist_ok=True)
    if reference_volume is None or classes is None:
        raise SceneError("a label-map export needs the reference volume and the project's classes")
    label, _skipped = segmentation_to_labelmap(segmentation_node, reference_volume, classes, scene)
    temporary = add_volume_from_array(label, ijk_to_ras(reference_volume), "__SynergyPL_export__",
                                      "vtkMRMLLabelMapVolumeNode", scene)
    try:
        write_volume_file(temporary, path, scene=scene)
    finally:
        remove_with_display(temporary, scene)
    return path
