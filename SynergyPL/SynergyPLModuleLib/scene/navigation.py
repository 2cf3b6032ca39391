"""Where to look: the centre of a flagged region, and centring every slice view on a point.

In: a flagged region's dict (``centroid_ijk``, ``centroid_ras`` or ``centroid_lps``) and its volume, a
RAS point, a slice node. Out: a world RAS point; every slice view moved and centred on it; the point at
the centre of a slice view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import slicer

from .nodes import SceneError, get_scene
from .transforms import ijk_to_world_ras, matrix_to_array


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
