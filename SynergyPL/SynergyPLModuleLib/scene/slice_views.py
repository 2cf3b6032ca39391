"""What the slice views show: the background and foreground volume of every view, and fitting a view.

In: volume nodes (or None to clear a layer), a foreground opacity, ``vtkMRMLSliceLogic`` objects
(Slicer's, or the tests'). Out: the scene's slice composite nodes set; views fitted to their volumes.
"""

from __future__ import annotations

from collections.abc import Iterable

from .nodes import get_scene

_KEEP = object()


def slice_composite_nodes(scene=None) -> list:
    scene = get_scene(scene)
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


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
