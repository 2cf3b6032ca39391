"""Voxels in and out of volume nodes, as ``[i, j, k]`` arrays (VTK's ``[k, j, i]`` stays in here).

In: a volume node, or an array with its 4x4 IJK-to-RAS matrix. Out: a copy of the node's voxels, a new
volume node, or a node whose voxels (and geometry) were replaced. Files are :mod:`.files`' job.
"""

from __future__ import annotations

import numpy as np
import slicer

from .nodes import SceneError, get_scene
from .transforms import array_to_matrix


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
