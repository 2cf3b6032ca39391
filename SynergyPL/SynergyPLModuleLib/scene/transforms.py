"""Geometry: IJK-to-RAS matrices, LPS <-> RAS, and parent transforms.

In: volume nodes (their IJK-to-RAS matrix and parent transform), ITK/LPS geometry (spacing, origin,
direction), 4x4 arrays or ``vtkMatrix4x4``. Out: 4x4 numpy matrices in RAS; a node placed under a
volume's parent transform. Non-linear parent transforms raise ``SceneError`` (harden them first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import slicer
import vtk

from .nodes import SceneError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
