"""Which node is what: the case a volume holds, which volumes are cases, and which segmentation and
heatmap belong to a volume.

In: volume, segmentation and heatmap nodes (their ``SynergyPL.*`` attributes), a case id and the
server's key. Out: the case id of a volume, the volume already holding a case, the scene's case volumes
(never the heatmaps and region maps the panel made), and the segmentation and heatmap to show with a
volume (``nodes_for_volume``), so that a pseudo-label never lands in another case's segmentation.
"""

from __future__ import annotations

from .attributes import (
    CASE_ID_ATTRIBUTE,
    CASE_SERVER_ATTRIBUTE,
    NON_CASE_ROLES,
    ROLE_ATTRIBUTE,
    SOURCE_VOLUME_ATTRIBUTE,
)
from .nodes import get_scene


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


def _scalar_volumes(scene) -> list:
    return [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]


def case_volumes(scene=None) -> list:
    """The scene's volumes that can be cases, in scene order."""
    return [node for node in _scalar_volumes(get_scene(scene)) if is_case_volume(node)]


def non_case_volume_ids(scene=None) -> list[str]:
    """IDs of the scalar volumes the panel made (heatmaps, region maps): what the case selector hides."""
    return [node.GetID() for node in _scalar_volumes(get_scene(scene))
            if node.GetAttribute(ROLE_ATTRIBUTE) in NON_CASE_ROLES]


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
