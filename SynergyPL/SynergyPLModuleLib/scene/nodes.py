"""The scene and its nodes: which scene to use, the one error type, removing a node cleanly.

In: an optional scene (default ``slicer.mrmlScene``), a node. Out: the scene, or ``SceneError`` when
there is none; ``remove_with_display`` takes a node out with its display and storage nodes.
"""

from __future__ import annotations

import slicer


class SceneError(RuntimeError):
    """An MRML operation failed; the message says which and why."""


def get_scene(scene=None):
    """``scene`` or Slicer's current scene."""
    scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise SceneError("no MRML scene (slicer.mrmlScene is not set)")
    return scene


def remove_with_display(node, scene) -> None:
    """Remove ``node`` and its display and storage nodes from ``scene``."""
    for index in range(node.GetNumberOfDisplayNodes()):
        display = node.GetNthDisplayNode(index)
        if display is not None:
            scene.RemoveNode(display)
    storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    if storage is not None:
        scene.RemoveNode(storage)
    scene.RemoveNode(node)
