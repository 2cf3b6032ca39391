"""Cases: upload a volume, ask for the next case, download it, and restore a saved prediction.

A piece of :class:`~SynergyPLModuleLib.logic.LabelingLogic`: its state (client, scene nodes,
current case) and signals are the facade's, shared by every piece; results go out through signals only.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from SynergyPLLib.common.regions import Region

from .. import grids, nrrdfile
from ..background import CallContext
from ..messages import ServerInfo, _client_module
from ..scene import attributes, files, nodes, ownership, segmentations, slice_views, transforms, volumes
from .base import (
    CASE_GRID_ATTRIBUTE,
    HAS_DICOM_ATTRIBUTE,
    LogicBase,
    PredictionState,
    _safe_name,
    _saved_regions,
)

_log = logging.getLogger(__name__)


class CasesWorkflow(LogicBase):
    """Cases: upload, next case, restore a saved prediction, follow the chosen volume.

    Mixed into the facade (:class:`~SynergyPLModuleLib.logic.LabelingLogic`), whose state and signals it uses.
    """

    def upload(self, volume_node, force: bool = False) -> None:
        """Upload the volume once as a case (its id is remembered on the node); ``case_changed`` reports it."""
        self._upload(volume_node, None, force)

    def _upload(self, volume_node, then: Callable[[str], None] | None = None, force: bool = False) -> None:
        """:meth:`upload`, then ``then(case_id)`` (the next step of a workflow that needs the case)."""
        if volume_node is None:
            self._fail("upload", "Select a volume first.")
            return
        if volume_node.GetImageData() is None:
            self._fail("upload", f"{volume_node.GetName()} has no voxels.")
            return

        def with_server(server: ServerInfo) -> None:
            known = ownership.case_id(volume_node, server.key)
            if known and not force:
                self.case_changed.emit(volume_node, known)
                if then is not None:
                    then(known)
                return
            self._upload_now(volume_node, server, then)

        self._with_server("upload", with_server)

    def _upload_now(self, volume_node, server: ServerInfo, then, case_id: str | None = None) -> None:
        """Upload as ``case_id`` (default: from the volume's name). If the server already has a case of
        that id, it is adopted when it holds the same voxels, else the volume gets a fresh id."""
        dicom_files = self.dicom_files(volume_node) if self.dicom_files else []
        name = volume_node.GetName()
        wanted = case_id or _safe_name(name)
        voxels = matrix = None
        if dicom_files:
            payload, filename = dicom_files, f"{wanted}.zip"
        else:
            # Only the copy of the voxels happens here; the gzip NRRD is written by the task.
            voxels, matrix = volumes.array_ijk(volume_node), transforms.ijk_to_ras(volume_node)
            payload = self._temp_path(f"{wanted}.nrrd")
            filename = payload.name
        zip_path = self._temp_path(filename) if dicom_files else None
        existing_image = self._temp_path(f"{wanted}-server.nrrd")
        client_module = _client_module()
        self.status.emit(f"Uploading {name}…")

        def work(ctx: CallContext):
            path = payload
            if voxels is not None:
                nrrdfile.write_nrrd(payload, voxels, matrix)
            if zip_path is not None:
                with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
                    for index, file in enumerate(payload):
                        ctx.check_cancelled()
                        archive.write(file, f"{index:05d}_{Path(file).name}")
                path = zip_path
            ctx.check_cancelled()
            client = self._client(timeout=self.upload_timeout)
            try:
                return "uploaded", client.upload_case(path, case_id=wanted, filename=filename), None
            except client_module.ConflictError:
                if case_id is not None:
                    raise
            # The id is taken: fetch that case's image to see whether it is this very volume.
            existing = client.get_case(wanted)
            client.download_image(wanted, existing_image)
            taken = {c["id"] for c in client.list_cases()}
            fresh = next(f"{wanted}-{n}" for n in range(2, 10000) if f"{wanted}-{n}" not in taken)
            return "exists", existing, fresh

        def done(result) -> None:
            outcome, case, fresh_id = result
            if outcome == "exists":
                if self._same_voxels(existing_image, volume_node):
                    self.status.emit(f"The server already has {name} as case {case['id']}; using it.")
                else:
                    self.status.emit(f"Case id {wanted} is taken by another image; uploading as {fresh_id}.")
                    self._upload_now(volume_node, server, then, case_id=fresh_id)
                    return
            else:
                self.status.emit(f"Uploaded {name} as case {case['id']}.")
            self._remember_case(volume_node, case, server)
            self.case_changed.emit(volume_node, case["id"])
            if then is not None:
                then(case["id"])

        self._start("upload", work, done)

    def _same_voxels(self, path: Path, volume_node) -> bool:
        try:
            theirs = self._read_on_volume_grid(path, volume_node, labelmap=False)
        except (grids.GridMismatch, nodes.SceneError):
            return False
        return bool(np.array_equal(theirs, volumes.array_ijk(volume_node)))

    def _remember_case(self, volume_node, case: dict, server: ServerInfo) -> None:
        ownership.set_case_id(volume_node, case["id"], server.key)
        try:
            matrix, shape = grids.case_grid(case)
            volume_node.SetAttribute(CASE_GRID_ATTRIBUTE, grids.grid_to_json(matrix, shape))
        except (KeyError, ValueError, TypeError):
            pass
        volume_node.SetAttribute(HAS_DICOM_ATTRIBUTE, "1" if case.get("has_dicom") else "0")

    def next_case(self) -> None:
        """Fetch the case the model is least sure about and load it: ``next_case_loaded(volume, case)``."""
        def with_server(server: ServerInfo) -> None:
            def work(ctx: CallContext):
                return self._client().next_case(predict=True)

            def done(answer: dict) -> None:
                case = answer["case"]
                self.status.emit(f"Next case: {case['id']} ({answer.get('reason', '')}).")
                existing = ownership.find_volume_for_case(case["id"], server.key, self.scene)
                if existing is not None:
                    self._remember_case(existing, case, server)
                    slice_views.show_volume(existing, self.slice_logics(), self.scene)
                    self._case_loaded(existing, case)
                else:
                    self._download_case(case, server)

            self._start("next_case", work, done)

        self._with_server("next_case", with_server)

    def _download_case(self, case: dict, server: ServerInfo) -> None:
        target = self._temp_path(f"{_safe_name(case['id'])}.nrrd")

        def work(ctx: CallContext):
            return self._client(timeout=self.upload_timeout).download_image(case["id"], target)

        def done(path: Path) -> None:
            node = files.read_volume_file(path, name=case["id"], scene=self.scene)
            self._remember_case(node, case, server)
            slice_views.show_volume(node, self.slice_logics(), self.scene)
            self._case_loaded(node, case)

        self._start("next_case", work, done)

    def _case_loaded(self, volume_node, case: dict) -> None:
        self.case_changed.emit(volume_node, case["id"])
        self.next_case_loaded.emit(volume_node, case)

    def restore(self, volume_node, segmentation_node, heatmap_node, regions_json: str = "[]",
                threshold: float | None = None) -> bool:
        """Take back a prediction shown before (a saved scene, or the volume chosen again): heatmap node,
        segmentation, and the regions with their reviewed ticks, so that the threshold slider and region
        navigation work again. The regions saved on the segmentation node win over ``regions_json`` (the
        parameter node's, from scenes saved before they were kept there); regions for another threshold
        than ``threshold`` are recomputed, keeping the ticks. Returns False (never raises) when the nodes
        do not make a prediction of this volume."""
        try:
            classes = self.server.classes if self.server else self._classes_from_segments(segmentation_node)
            label, _ = segmentations.segmentation_to_labelmap(segmentation_node, volume_node, classes, self.scene)
            heatmap = volumes.array_ijk(heatmap_node).astype(np.float32)
            if heatmap.shape != label.shape:
                return False
            saved, saved_threshold, saved_params = _saved_regions(
                segmentation_node, regions_json, self.threshold if threshold is None else float(threshold))
        except Exception as exc:  # any scene, any Slicer: the panel must open without the prediction
            _log.info("could not restore the prediction from the scene: %s", exc)
            return False
        if threshold is not None:
            self.threshold = float(threshold)
        elif saved_threshold is not None:
            self.threshold = saved_threshold
        self._restored_classes = classes
        model = segmentation_node.GetAttribute(attributes.MODEL_VERSION_ATTRIBUTE)
        self.prediction = PredictionState(
            segmentation_node.GetAttribute(attributes.CASE_ID_ATTRIBUTE) or "", volume_node.GetID(), label, heatmap,
            transforms.ijk_to_ras(volume_node), int(model) if model and model.isdigit() else None,
            [Region.from_dict(r.to_dict()) for r in saved], saved_threshold, segmentation_node.GetID(),
            saved_params)
        self.regions = saved
        self.regions_threshold = saved_threshold
        self.current_region = -1
        self.regions_changed.emit(self.regions)
        if saved_threshold is None or abs(saved_threshold - self.threshold) > 1e-9:
            self.set_threshold(self.threshold, force=True)
        return True

    def show_volume(self, volume_node, segmentation_node, heatmap_node, threshold: float) -> bool:
        """Another volume was chosen, with the segmentation and heatmap made for it (or None): show its
        prediction again (restore, regions at ``threshold``) or forget the one shown. True when restored."""
        state = self.prediction
        if volume_node is None or (state is not None and state.volume_id == volume_node.GetID()):
            return False
        if segmentation_node and heatmap_node and self.restore(volume_node, segmentation_node, heatmap_node, "[]",
                                                               threshold):
            self.set_threshold(threshold, heatmap_node=heatmap_node, force=True)
            return True
        self.clear_prediction()
        return False

    def case_id_of(self, volume_node) -> str | None:
        """The case id the current server knows ``volume_node`` by, or None (not uploaded)."""
        if volume_node is None:
            return None
        return ownership.case_id(volume_node, self.server.key if self.server else None)
