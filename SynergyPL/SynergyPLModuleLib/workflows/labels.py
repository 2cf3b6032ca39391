"""Labels: submit the edited segmentation as a new version, load a saved version.

A piece of :class:`~SynergyPLModuleLib.logic.LabelingLogic`: its state (client, scene nodes,
current case) and signals are the facade's, shared by every piece; results go out through signals only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import grids, nrrdfile
from ..background import CallContext
from ..messages import _client_module, default_author
from ..scene import attributes, nodes, segmentations, transforms
from .base import CASE_GRID_ATTRIBUTE, LogicBase, _safe_name


class LabelsWorkflow(LogicBase):
    """Labels: submit a new version, load a saved one.

    Mixed into the facade (:class:`~SynergyPLModuleLib.logic.LabelingLogic`), whose state and signals it uses.
    """

    def submit(self, volume_node, segmentation_node, author: str | None = None,
               parent_version: int | None = None) -> None:
        """Send the segmentation as a new label version of the volume's case (``submitted``).

        ``parent_version`` (default: the version the segmentation started from) lets the server detect
        that someone else submitted meanwhile: then ``conflict`` is emitted and nothing changes here.
        """
        if volume_node is None or segmentation_node is None:
            self._fail("submit", "Select the volume and its segmentation first.")
            return
        author = (author or "").strip() or default_author()

        def with_case(case_id: str) -> None:
            server = self.server
            try:
                label, skipped = segmentations.segmentation_to_labelmap(segmentation_node, volume_node, server.classes,
                                                               self.scene)
                to_case_grid, case_matrix = self._case_grid_mapper(volume_node, label.shape)
            except (nodes.SceneError, grids.GridMismatch) as exc:
                self._fail("submit", str(exc))
                return
            path = self._temp_path(f"{_safe_name(case_id)}-label.nrrd")
            parent = parent_version
            if parent is None:
                parent = int(segmentation_node.GetAttribute(attributes.LABEL_VERSION_ATTRIBUTE) or 0)
            if skipped:
                self.status.emit(f"Not submitted (not project classes): {', '.join(skipped)}.")

            def work(ctx: CallContext):
                nrrdfile.write_nrrd(path, to_case_grid(label), case_matrix)
                ctx.check_cancelled()
                return self._client(timeout=self.upload_timeout).submit_label(
                    case_id, path, author=author, parent_version=parent)

            def done(version: dict) -> None:
                segmentation_node.SetAttribute(attributes.LABEL_VERSION_ATTRIBUTE, str(version["version"]))
                segmentation_node.SetAttribute(attributes.CASE_ID_ATTRIBUTE, case_id)
                self.status.emit(f"Submitted label version {version['version']} of case {case_id} as {author}.")
                self.submitted.emit(version)

            def failed(exc: BaseException) -> bool:
                if isinstance(exc, _client_module().ConflictError):
                    self.conflict.emit({
                        "case_id": case_id, "parent_version": parent, "latest_version": exc.latest_version,
                        "latest_author": exc.latest_author, "message": exc.message, "saved_copy": str(path),
                        "explanation": (
                            f"Someone else ({exc.latest_author or 'another user'}) submitted label version "
                            f"{exc.latest_version} of case {case_id} after you started from version {parent}. "
                            f"Your segmentation is unchanged in Slicer and a copy is saved at {path}. You can "
                            f"submit yours on top of version {exc.latest_version}, or load theirs to compare.")})
                    return True
                return False

            self.status.emit(f"Submitting the label of case {case_id}…")
            self._start("submit", work, done, on_error=failed)

        self._upload(volume_node, with_case)

    def _case_grid_mapper(self, volume_node, shape) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray]:
        """``(mapper, ijk_to_ras)``: how an array on the volume's grid moves onto the case's grid (the
        volume's own grid unless the case was uploaded as DICOM), and that grid's matrix. Raises
        :class:`~.grids.GridMismatch` when they are not the same voxels. The mapper is numpy only."""
        text = volume_node.GetAttribute(CASE_GRID_ATTRIBUTE)
        if not text:
            return (lambda array: array), transforms.ijk_to_ras(volume_node)
        matrix, case_shape = grids.grid_from_json(text)
        return grids.array_mapper(transforms.ijk_to_ras(volume_node), shape, matrix, case_shape), matrix

    def load_label_version(self, volume_node, case_id: str, version: int | str = "latest") -> None:
        """Load a submitted label version as a separate segmentation (e.g. to compare after a conflict):
        ``label_loaded(segmentation)``."""
        target = self._temp_path(f"{_safe_name(case_id)}-v{version}.nrrd")

        def work(ctx: CallContext):
            client = self._client()
            client.download_label(case_id, version, target)
            return client.list_labels(case_id)

        def done(versions: list) -> None:
            label = self._read_on_volume_grid(target, volume_node, labelmap=True)
            info = versions[-1] if version == "latest" and versions else \
                next((v for v in versions if str(v.get("version")) == str(version)), {})
            name = f"{volume_node.GetName()} label v{info.get('version', version)} by {info.get('author', '?')}"
            segmentation = segmentations.labelmap_to_segmentation(label, volume_node, self.server.classes, name=name,
                                                         scene=self.scene)
            segmentation.SetAttribute(attributes.CASE_ID_ATTRIBUTE, case_id)
            segmentation.SetAttribute(attributes.LABEL_VERSION_ATTRIBUTE, str(info.get("version", version)))
            self.status.emit(f"Loaded {name}.")
            self.label_loaded.emit(segmentation)

        self._start("load_label", work, done)
