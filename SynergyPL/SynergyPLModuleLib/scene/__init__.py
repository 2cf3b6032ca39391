"""Scene helpers: everything the panel does to MRML, without Qt, one module per concern.

These functions run in Slicer and, unchanged, on slicer-core (Slicer's MRML and logic as a Python
package, used by the tests). Each takes the scene explicitly (default: ``slicer.mrmlScene``) and uses
only MRML/VTK classes and static logic methods, never ``slicer.app`` or ``slicer.modules``.

Modules (import the one you need; this package re-exports nothing):

- :mod:`.nodes`: the scene (``get_scene``), ``SceneError``, removing a node with its display/storage nodes.
- :mod:`.attributes`: the names of what the panel remembers in the scene (node attributes, segment tag).
- :mod:`.transforms`: IJK-to-RAS matrices, LPS <-> RAS, parent transforms.
- :mod:`.volumes`: voxels in and out of volume nodes (``[i, j, k]`` arrays).
- :mod:`.files`: Slicer's readers and writers: image files in, image and segmentation files out (export).
- :mod:`.terminology`: the project's classes (``SegmentClass``) and how a segment carries one.
- :mod:`.segmentations`: label map <-> segmentation, one segment as a mask.
- :mod:`.ownership`: which volume is which case, which segmentation and heatmap belong to a volume.
- :mod:`.slice_views`: what the slice views show (background/foreground layers, fit).
- :mod:`.heatmap_layer`: the confidence heatmap: its colour table, threshold, legend and layer.
- :mod:`.navigation`: where to look: a flagged region's centre, centring the slice views.
- :mod:`.segment_editor`: handing the segmentation and its volume to the Segment Editor.

Conventions:
- Arrays exchanged with the service are indexed ``[i, j, k]`` (the engine's convention); VTK and
  ``slicer.util.arrayFromVolume`` use ``[k, j, i]``. Every conversion happens in :mod:`.volumes`.
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
