"""Pseudo-labels: run the model on the case, follow its job, show label and heatmap.

A piece of :class:`~SynergyPLModuleLib.logic.LabelingLogic`: its state (client, scene nodes,
current case) and signals are the facade's, shared by every piece; results go out through signals only.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from SynergyPLLib.common.job_status import FINAL_STATES, JobStatus
from SynergyPLLib.common.regions import Region, RegionParams

from .. import grids
from ..background import CallCancelled, CallContext
from ..messages import _client_module, _float
from ..scene import (
    attributes,
    files,
    heatmap_layer,
    nodes,
    segmentations,
    terminology,
    transforms,
    volumes,
)
from .base import LogicBase, PredictionState


class PredictionWorkflow(LogicBase):
    """Pseudo-labels: predict, follow the job, show label and heatmap.

    Mixed into the facade (:class:`~SynergyPLModuleLib.logic.LabelingLogic`), whose state and signals it uses.
    """

    def pseudo_label(self, volume_node, segmentation_node=None, heatmap_node=None, *, opacity: float = 0.5,
                     show_heatmap: bool = True, reuse_existing: bool = True) -> None:
        """Predict the volume with the current model; fill the segmentation and the heatmap.

        Uploads the volume first if needed. With ``reuse_existing`` a prediction the server already has
        for this case and model version is loaded instead of recomputed.
        """
        if volume_node is None:
            self._fail("predict", "Select a volume first.")
            return

        def with_case(case_id: str) -> None:
            self._predict_case(volume_node, case_id, segmentation_node, heatmap_node, opacity, show_heatmap,
                               reuse_existing, retried=False)

        self._upload(volume_node, with_case)

    def _predict_case(self, volume_node, case_id, segmentation_node, heatmap_node, opacity, show_heatmap,
                      reuse_existing, retried) -> None:
        model_version = self.model_version
        label_path = self._temp_path("label.nrrd")
        heatmap_path = label_path.with_name("heatmap.nrrd")
        client_module = _client_module()
        self.status.emit(f"Pseudo-labelling case {case_id}…")

        def work(ctx: CallContext):
            client = self._client()
            case = client.get_case(case_id)
            brief = case.get("prediction")
            if not (reuse_existing and brief and (model_version is None or brief.get("model_version") == model_version)):
                job = client.predict(case_id, model_version=model_version)
                ctx.report({"status": JobStatus.QUEUED.value, "text": f"prediction job {job['id']} queued"})
                job = self._follow_job(client, job, ctx)
                if job["status"] != JobStatus.DONE:
                    raise client_module.JobFailedError(job)
            ctx.check_cancelled()
            document = client.prediction(case_id)
            client.download_prediction(case_id, "label", label_path)
            client.download_prediction(case_id, "heatmap", heatmap_path)
            return case, document

        def progress(update) -> None:
            if isinstance(update, dict):
                text = update.get("text") or f"prediction {update.get('status', '')}"
                self.status.emit(text[:1].upper() + text[1:] + "…")

        def done(result) -> None:
            case, document = result
            segmentation, heatmap = self._show_prediction(volume_node, case, document, label_path, heatmap_path,
                                                          segmentation_node, heatmap_node, opacity, show_heatmap)
            self.prediction_ready.emit(segmentation, heatmap)
            version = document.get("model_version")
            found = "finding the flagged regions…" if self.is_busy("regions") else f"{len(self.regions)} flagged regions."
            self.status.emit(f"Pseudo-label of case {case_id} by model v{version}: {found}")

        def failed(exc: BaseException) -> bool:
            if isinstance(exc, client_module.NotFoundError) and "case" in str(exc.message).lower() and not retried:
                # The server forgot the case (new project folder, deleted): upload again, once.
                volume_node.RemoveAttribute(attributes.CASE_ID_ATTRIBUTE)
                self.status.emit(f"The server no longer has case {case_id}; uploading the volume again.")
                self._upload(volume_node, lambda new_id: self._predict_case(
                    volume_node, new_id, segmentation_node, heatmap_node, opacity, show_heatmap,
                    reuse_existing, retried=True))
                return True
            return False

        self._start("predict", work, done, progress, failed)

    def _follow_job(self, client, job: dict, ctx: CallContext, report_progress: bool = True,
                    cancel_grace: float = 120.0) -> dict:
        """Long-poll a job until it is final (worker thread); cancelling asks the server to stop it."""
        cancel_sent_at = None
        while job["status"] not in FINAL_STATES:
            if ctx.cancelled and cancel_sent_at is None:
                cancel_sent_at = time.monotonic()
                try:
                    job = client.cancel_job(job["id"])
                except _client_module().ConflictError:
                    pass  # it finished meanwhile
                continue
            if cancel_sent_at is not None and time.monotonic() - cancel_sent_at > cancel_grace:
                raise CallCancelled(f"job {job['id']} did not stop within {cancel_grace:.0f} s")
            if report_progress:
                ctx.report(job)
            job = client.job(job["id"], wait=self.poll_seconds, since=job.get("updated_at"))
        if report_progress:
            ctx.report(job)
        if cancel_sent_at is not None and job["status"] == JobStatus.CANCELLED:
            raise CallCancelled("cancelled")
        return job

    def _read_on_volume_grid(self, path: Path, volume_node, labelmap: bool) -> np.ndarray:
        """A downloaded volume's voxels, moved onto the volume node's grid (exact, or refused)."""
        node = files.read_volume_file(path, name="__SynergyPL_download__", labelmap=labelmap, scene=self.scene)
        try:
            array = volumes.array_ijk(node)
            source_matrix = transforms.ijk_to_ras(node)
        finally:
            nodes.remove_with_display(node, self.scene)
        target_shape = tuple(volume_node.GetImageData().GetDimensions())
        mapper = grids.array_mapper(source_matrix, array.shape, transforms.ijk_to_ras(volume_node), target_shape)
        return mapper(array)

    def _show_prediction(self, volume_node, case, document, label_path, heatmap_path, segmentation_node,
                         heatmap_node, opacity, show_heatmap):
        label = self._read_on_volume_grid(label_path, volume_node, labelmap=True)
        heatmap = self._read_on_volume_grid(heatmap_path, volume_node, labelmap=False).astype(np.float32)
        classes = self.server.classes if self.server else []
        if not classes:
            names = document.get("classes") or []
            classes = terminology.classes_from_dicts([{"value": v, "name": n} for v, n in enumerate(names)])
        segmentation = segmentations.labelmap_to_segmentation(
            label, volume_node, classes, segmentation_node,
            name=f"{volume_node.GetName()} pseudo-label", scene=self.scene)
        latest = case.get("latest_label") or {}
        segmentation.SetAttribute(attributes.CASE_ID_ATTRIBUTE, case["id"])
        segmentation.SetAttribute(attributes.LABEL_VERSION_ATTRIBUTE, str(int(latest.get("version") or 0)))
        segmentation.SetAttribute(attributes.MODEL_VERSION_ATTRIBUTE, str(document.get("model_version", "")))
        segmentation.RemoveAttribute(attributes.REGIONS_ATTRIBUTE)  # the previous prediction's
        heatmap_node = heatmap_layer.show_heatmap(heatmap, volume_node, heatmap_node, threshold=self.threshold,
                                         opacity=opacity, scene=self.scene)
        if not show_heatmap:
            heatmap_layer.set_heatmap_visible(heatmap_node, False, opacity, self.scene)
        server_regions = [Region.from_dict(r) for r in document.get("regions") or []]
        self.prediction = PredictionState(case["id"], volume_node.GetID(), label, heatmap,
                                          transforms.ijk_to_ras(volume_node), document.get("model_version"),
                                          server_regions, _float(document.get("flag_threshold")),
                                          segmentation.GetID(), RegionParams.from_dict(document.get("region_params")))
        self.regions = []
        self.regions_threshold = None
        self.set_threshold(self.threshold, force=True)
        return segmentation, heatmap_node

    def clear_prediction(self) -> None:
        """Forget the shown prediction (another volume was selected, the scene closed): empty regions."""
        self.prediction = None
        self.regions = []
        self.regions_threshold = None
        self.current_region = -1
        self.regions_changed.emit(self.regions)

    @staticmethod
    def would_lose_edits(segmentation_node) -> bool:
        """A pseudo-label into ``segmentation_node`` would replace segments of a case (ask first)."""
        return bool(segmentation_node) and segmentation_node.GetAttribute(attributes.CASE_ID_ATTRIBUTE) is not None and \
            segmentation_node.GetSegmentation().GetNumberOfSegments() > 0
