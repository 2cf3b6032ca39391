"""Export: write the segmentation as seg.nrrd, NIfTI or DICOM SEG.

A piece of :class:`~SynergyPLModuleLib.logic.LabelingLogic`: its state (client, scene nodes,
current case) and signals are the facade's, shared by every piece; results go out through signals only.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..background import CallContext
from ..scene import attributes, files, nodes, ownership, terminology
from .base import EXPORT_FORMATS, HAS_DICOM_ATTRIBUTE, LogicBase, _safe_name


class ExportWorkflow(LogicBase):
    """Export: seg.nrrd, NIfTI, DICOM SEG.

    Mixed into the facade (:class:`~SynergyPLModuleLib.logic.LabelingLogic`), whose state and signals it uses.
    """

    def export(self, volume_node, segmentation_node, fmt: str, folder: str | os.PathLike) -> Path | None:
        """Write the segmentation as ``seg.nrrd`` or ``nifti`` (here, with Slicer's writers), or fetch the
        submitted label version as ``dicom-seg`` from the server (only for cases uploaded from DICOM);
        ``exported(path)`` reports the file written."""
        if fmt not in EXPORT_FORMATS:
            self._fail("export", f"Unknown export format {fmt!r}.")
            return None
        if segmentation_node is None or volume_node is None:
            self._fail("export", "Select the volume and its segmentation first.")
            return None
        folder = Path(folder or Path.home())
        case = ownership.case_id(volume_node) or segmentation_node.GetAttribute(attributes.CASE_ID_ATTRIBUTE)
        stem = _safe_name(case or segmentation_node.GetName())
        target = folder / f"{stem}{EXPORT_FORMATS[fmt]}"
        if fmt != "dicom-seg":
            classes = self.server.classes if self.server else self._classes_from_segments(segmentation_node)
            try:
                path = files.export_segmentation(segmentation_node, target, volume_node, classes, self.scene)
            except (nodes.SceneError, OSError) as exc:
                self._fail("export", f"Export failed: {exc}")
                return None
            self.status.emit(f"Exported {path}.")
            self.exported.emit(path)
            return path
        if not case:
            self._fail("export", "DICOM SEG is made by the server: upload the volume and submit a label first.")
            return None
        if volume_node.GetAttribute(HAS_DICOM_ATTRIBUTE) == "0":
            self._fail("export", "DICOM SEG needs a volume that came from DICOM (load the series with Slicer's "
                                 "DICOM module, then upload it).")
            return None
        version = segmentation_node.GetAttribute(attributes.LABEL_VERSION_ATTRIBUTE)
        version = int(version) if version and version != "0" else None
        if version is None:
            self._fail("export", "Submit the segmentation first: DICOM SEG is made from a submitted label version.")
            return None

        def work(ctx: CallContext):
            return self._client(timeout=self.upload_timeout).export(case, "dicom-seg", version=version, path=target)

        def done(path: Path) -> None:
            self.status.emit(f"Exported DICOM SEG of label version {version}: {path}.")
            self.exported.emit(Path(path))

        self._start("export", work, done)
        return target

    @staticmethod
    def _classes_from_segments(segmentation_node) -> list[terminology.SegmentClass]:
        out = []
        for entry in terminology.segment_summary(segmentation_node):
            if entry["value"] is not None:
                out.append(terminology.SegmentClass(entry["value"], entry["name"], tuple(entry["color"])))
        return out
