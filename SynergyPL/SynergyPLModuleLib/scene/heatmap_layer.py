"""The confidence heatmap: a volume with its colour table and legend, shown as the foreground layer.

In: a confidence array (``[i, j, k]`` on the reference volume's grid, 1 = certain), the reference
volume, an existing heatmap node to reuse, the threshold and opacity. Out: the heatmap node (tagged
``SynergyPL.Role = heatmap`` and with its source volume, under the volume's parent transform), the
scene's one confidence colour table, the slice views showing it (or not).
"""

from __future__ import annotations

import numpy as np
import slicer

from .attributes import ROLE_ATTRIBUTE, SOURCE_VOLUME_ATTRIBUTE
from .nodes import get_scene
from .slice_views import set_slice_layers
from .transforms import ijk_to_ras, place_under_transform_of
from .volumes import update_volume_from_array

CONFIDENCE_COLORS_NAME = "SynergyPL Confidence"

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


def set_heatmap_visible(heatmap_node, visible: bool, opacity: float, scene=None) -> None:
    """Show (with ``opacity``) or hide the heatmap layer in every slice view."""
    set_slice_layers(scene, foreground=heatmap_node if visible else None,
                     foreground_opacity=opacity if visible else 0.0)
