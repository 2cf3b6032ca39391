"""Handing over to the Segment Editor: its parameter node set to the segmentation and its volume.

In: a segmentation node and its source volume. Out: the scene's Segment Editor parameter node (made if
missing) pointing at them, with a segment selected.
"""

from __future__ import annotations

import slicer

from .nodes import get_scene

SEGMENT_EDITOR_SINGLETON_TAG = "SegmentEditor"


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
