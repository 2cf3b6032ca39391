"""The labeling loop: what each button of the panel does, without Qt.

:class:`LabelingLogic` drives the service's HTTP client and the scene helpers of :mod:`.scene`. Every
action is split in three:

1. on the GUI thread, read what is needed from the scene (write the volume or the label to a file);
2. on a worker thread (:class:`~.background.BackgroundRunner`), talk to the server -- never MRML there;
3. back on the GUI thread (``BackgroundRunner.poll``), put the results into the scene and emit signals.

So the panel never waits for the network, every MRML change happens on the GUI thread, and every
action ends with ``busy_changed(action, False)`` -- also after an error -- so buttons never stay
disabled. Heavy numpy work (gzip-writing a CT before upload, recomputing flagged regions when the
threshold moves) also runs in step 2. Errors become one readable sentence (``error`` signal); a label
conflict gets its own signal (``conflict``) and leaves the segmentation untouched.

Closing the scene (File > Close Scene, ``vtkMRMLScene.Clear``) forgets the shown prediction and its
regions, and results of scene-bound actions still running then are dropped: node IDs restart in the
next scene, so they would land on the wrong volume.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from SynergyPLLib.common.job_status import FINAL_STATES, JobStatus
from SynergyPLLib.common.regions import Region, RegionParams, flag_regions, keep_reviewed

from . import grids, nrrdfile
from .background import BackgroundCall, BackgroundRunner, CallCancelled, CallContext, CallHandle
from .messages import (  # noqa: F401 - re-exported for the widget and tests
    DICOM_UIDS_ATTRIBUTE,
    ServerInfo,
    TrainingProgress,
    _client_module,
    _float,
    default_author,
    default_dicom_files,
    default_slice_logics,
    describe_error,
    training_summary,
)
from .scene import (
    attributes,
    files,
    heatmap_layer,
    navigation,
    nodes,
    ownership,
    segmentations,
    slice_views,
    terminology,
    transforms,
    volumes,
)
from .signals import Signal

_log = logging.getLogger(__name__)

CASE_GRID_ATTRIBUTE = "SynergyPL.CaseGrid"
HAS_DICOM_ATTRIBUTE = "SynergyPL.CaseHasDicom"
EXPORT_FORMATS = {"seg.nrrd": ".seg.nrrd", "nifti": ".nii.gz", "dicom-seg": ".dcm"}
# Actions whose results go into the scene: dropped when the scene is closed while they run.
SCENE_BOUND_ACTIONS = ("upload", "next_case", "predict", "load_label", "regions")


@dataclass
class PredictionState:
    """The latest prediction shown for a volume: what the threshold slider recomputes regions from."""

    case_id: str
    volume_id: str
    label: np.ndarray
    heatmap: np.ndarray
    ijk_to_ras: np.ndarray
    model_version: int | None
    server_regions: list[Region]
    server_threshold: float | None
    segmentation_id: str | None = None  # where the regions and their reviewed ticks are saved
    region_params: RegionParams = field(default_factory=RegionParams)  # the server's (its threshold too)


class LabelingLogic:
    """The panel's actions. Create once per panel; call :meth:`shutdown` when Slicer closes.

    ``client_factory(url, token, timeout)`` makes the HTTP client (default: SynergyPLLib.client);
    ``dicom_files`` finds the DICOM files of a volume (default: Slicer's DICOM database);
    ``slice_logics()`` gives the slice views' ``vtkMRMLSliceLogic``s, fitted to a case when it is shown
    (default: the Slicer application's).
    """

    def __init__(self, runner: BackgroundRunner | None = None, scene=None,
                 client_factory: Callable | None = None, work_dir: str | os.PathLike | None = None,
                 dicom_files: Callable = default_dicom_files, poll_seconds: float = 1.0,
                 slice_logics: Callable = default_slice_logics) -> None:
        self.runner = runner or BackgroundRunner()
        self._scene = scene
        self.client_factory = client_factory or (lambda url, token, timeout: _client_module().SynergyPLClient(
            url, token=token, timeout=timeout))
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="SynergyPL-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.dicom_files = dicom_files
        self.slice_logics = slice_logics
        self.poll_seconds = poll_seconds
        self.url = _client_module().DEFAULT_URL
        self.token: str | None = None
        self.project: str | None = None  # folder of the local server, whose token file is read
        self.timeout = 60.0
        self.upload_timeout = 600.0
        self.server: ServerInfo | None = None
        self.model_version: int | None = None
        self.threshold = 0.5
        # None: the server's (the prediction's region_params); a number overrides it
        self.min_region_voxels: int | None = None
        self.max_regions: int | None = None
        self.prediction: PredictionState | None = None
        self.regions: list[Region] = []
        self.regions_threshold: float | None = None  # the threshold self.regions were found with
        self.current_region = -1
        self._handles: dict[str, CallHandle] = {}
        self._sequence = 0
        self._restored_classes: list[terminology.SegmentClass] = []
        self._scene_generation = 0  # +1 each time the scene is closed
        self._scene_observers: list[tuple[object, int]] = []

        self.status = Signal("status")                      # (message)
        self.error = Signal("error")                        # (action, message)
        self.busy_changed = Signal("busy_changed")          # (action, busy)
        self.server_changed = Signal("server_changed")      # (ServerInfo | None)
        self.case_changed = Signal("case_changed")          # (volume_node, case_id)
        self.prediction_ready = Signal("prediction_ready")  # (segmentation_node, heatmap_node)
        self.regions_changed = Signal("regions_changed")    # (list[Region])
        self.current_region_changed = Signal("current_region_changed")  # (index)
        self.submitted = Signal("submitted")                # (label version dict)
        self.conflict = Signal("conflict")                  # (dict: case_id, latest_version, latest_author, ...)
        self.training_progress = Signal("training_progress")  # (TrainingProgress)
        self.training_finished = Signal("training_finished")  # (job dict)
        self.model_version_changed = Signal("model_version_changed")  # (int | None)
        self.exported = Signal("exported")                  # (Path)
        self.next_case_loaded = Signal("next_case_loaded")  # (volume_node, case dict)
        self.label_loaded = Signal("label_loaded")          # (segmentation_node) of load_label_version
        self._observe_scene_close()

    # ------------------------------------------------------------------------------------------
    # plumbing
    # ------------------------------------------------------------------------------------------
    @property
    def scene(self):
        return nodes.get_scene(self._scene)

    def _observe_scene_close(self) -> None:
        """Forget the prediction when the scene closes (observer removed by :meth:`shutdown`)."""
        try:
            scene = self.scene
        except nodes.SceneError:  # no scene yet (e.g. created outside Slicer without one)
            return
        tag = scene.AddObserver(scene.StartCloseEvent, lambda caller, event: self.forget_scene())
        self._scene_observers.append((scene, tag))

    def forget_scene(self) -> None:
        """The scene is closing: drop the prediction, its regions and results still on their way."""
        self._scene_generation += 1
        self._restored_classes = []
        self.clear_prediction()

    def configure(self, url: str, token: str | None = None, project: str | os.PathLike | None = None) -> None:
        """Use this server from now on (forgets the previous server's info if the URL changed).

        ``project``: the folder of a server this panel started on this machine; without a typed
        ``token``, the token is read from the project's token file at each request (the server writes
        it when it starts)."""
        url = (url or "").strip().rstrip("/") or _client_module().DEFAULT_URL
        if "://" not in url:
            url = "http://" + url
        token = (token or "").strip() or None
        self.project = str(project) if project else None
        if url != self.url or token != self.token:
            self.url, self.token = url, token
            self.server = None
            self.server_changed.emit(None)

    def _client(self, timeout: float | None = None):
        token = self.token
        if token is None and self.project:
            token = _client_module().token_for_project(self.project)
        return self.client_factory(self.url, token, timeout or self.timeout)

    def is_busy(self, action: str | None = None) -> bool:
        if action is None:
            return bool(self._handles)
        return action in self._handles

    def _start(self, action: str, work: Callable[[CallContext], object], on_done: Callable | None = None,
               on_progress: Callable | None = None, on_error: Callable | None = None) -> CallHandle | None:
        """Run ``work`` off the GUI thread as ``action``; one task per action at a time."""
        if action in self._handles:
            self.status.emit(f"{action.replace('_', ' ').capitalize()} is already running.")
            return None

        handle: CallHandle | None = None
        generation = self._scene_generation

        def scene_closed() -> bool:
            """The scene this action started in was closed: its result must not enter the new one."""
            if action in SCENE_BOUND_ACTIONS and generation != self._scene_generation:
                self.status.emit(f"{action.replace('_', ' ').capitalize()}: result dropped, the scene was closed.")
                return True
            return False

        def release() -> None:
            # Free the action's name before the callbacks run, so that they may chain the same action.
            if self._handles.get(action) is handle:
                del self._handles[action]

        def done(result) -> None:
            release()
            if on_done is None or scene_closed():
                return
            try:
                on_done(result)
            except Exception as exc:  # e.g. a grid mismatch found while putting results in the scene
                _log.info("%s: showing the result failed: %s", action, exc, exc_info=not _is_expected(exc))
                self.error.emit(action, describe_error(exc))

        def failed(exc: BaseException) -> None:
            release()
            if isinstance(exc, CallCancelled):
                self.status.emit(f"{action.replace('_', ' ').capitalize()} cancelled.")
                return
            if scene_closed():
                return
            if on_error is not None and on_error(exc):
                return
            _log.info("%s failed: %s", action, exc, exc_info=not _is_expected(exc))
            self.error.emit(action, describe_error(exc))

        def finished() -> None:
            release()
            if action not in self._handles:
                self.busy_changed.emit(action, False)

        handle = self.runner.submit(BackgroundCall(action, work, on_done=done, on_error=failed,
                                         on_progress=on_progress, on_finally=finished))
        self._handles[action] = handle
        self.busy_changed.emit(action, True)
        return handle

    def _fail(self, action: str, message: str) -> None:
        """Report a problem found before any server call (nothing was started)."""
        self.error.emit(action, message)

    def cancel(self, action: str | None = None) -> None:
        """Cancel one action, or all running actions."""
        for name, handle in list(self._handles.items()):
            if action is None or name == action:
                handle.cancel()

    def shutdown(self) -> None:
        """Cancel running work, stop observing the scene and remove temporary files (Slicer is closing
        or the module is reloaded)."""
        for scene, tag in self._scene_observers:
            scene.RemoveObserver(tag)
        self._scene_observers = []
        self.runner.shutdown(timeout=2.0)
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _temp_path(self, name: str) -> Path:
        self._sequence += 1
        folder = self.work_dir / f"{self._sequence:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    # ------------------------------------------------------------------------------------------
    # Server
    # ------------------------------------------------------------------------------------------
    def check_connection(self) -> None:
        """Ask the server for its project, classes, device and active model (``server_changed``)."""
        self._connect()

    def _connect(self, after: Callable[[ServerInfo], None] | None = None) -> None:
        url = self.url

        def work(ctx: CallContext):
            return self._client(timeout=min(self.timeout, 15.0)).info()

        def done(info: dict) -> None:
            self._apply_info(url, info)
            self.status.emit(f"Connected: {self.server.summary()}.")
            if after is not None:
                after(self.server)

        self._start("connect", work, done)

    def _apply_info(self, url: str, info: dict) -> None:
        classes = terminology.classes_from_dicts(info.get("classes") or [])
        self.server = ServerInfo(url=url, project=str(info.get("name", "")), device=str(info.get("device", "?")),
                                 server_version=str(info.get("server_version", "?")),
                                 active_model=info.get("active_model"), classes=classes,
                                 cases=dict(info.get("cases") or {}),
                                 training_job=(info.get("jobs") or {}).get("training"))
        if self.model_version is None or self.model_version not in {m.get("version") for m in info.get("models", [])}:
            self.model_version = self.server.active_model
            self.model_version_changed.emit(self.model_version)
        self.server_changed.emit(self.server)

    def _with_server(self, action: str, then: Callable[[ServerInfo], None]) -> None:
        """Run ``then(server)`` now if connected, else after a connection check."""
        if self.server is not None and self.server.url == self.url:
            then(self.server)
        else:
            self._connect(then)

    # ------------------------------------------------------------------------------------------
    # Case
    # ------------------------------------------------------------------------------------------
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

    # ------------------------------------------------------------------------------------------
    # Pseudo-label
    # ------------------------------------------------------------------------------------------
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

    def clear_prediction(self) -> None:
        """Forget the shown prediction (another volume was selected, the scene closed): empty regions."""
        self.prediction = None
        self.regions = []
        self.regions_threshold = None
        self.current_region = -1
        self.regions_changed.emit(self.regions)

    # ------------------------------------------------------------------------------------------
    # Threshold and flagged regions
    # ------------------------------------------------------------------------------------------
    def class_names(self) -> list[str]:
        names = ["background"]
        for cls in self.server.classes if self.server else self._restored_classes:
            while len(names) <= cls.value:
                names.append(f"label {len(names)}")
            names[cls.value] = cls.name
        return names

    def set_threshold(self, threshold: float, heatmap_node=None, force: bool = False) -> None:
        """Change the confidence threshold: the heatmap display at once, and the flagged regions.

        The regions arrive through ``regions_changed``: at once when they are the server's (its flag
        threshold), else from a background task (``regions``: the connected components of a large CT
        take seconds). Moving the slider while one runs recomputes for the latest threshold only.
        Reviewed ticks stay on the regions that did not change.
        """
        threshold = float(threshold)
        changed = force or abs(threshold - self.threshold) > 1e-9
        self.threshold = threshold
        if heatmap_node is not None:
            heatmap_layer.set_heatmap_threshold(heatmap_node, threshold)
        if self.prediction is None or not changed:
            return
        state = self.prediction
        if state.server_threshold is not None and abs(state.server_threshold - threshold) < 1e-6 \
                and state.server_regions and self._server_regions_fit(state):
            self._set_regions([Region.from_dict(r.to_dict()) for r in state.server_regions], threshold)
            return
        self._recompute_regions()

    def _recompute_regions(self) -> None:
        """Find the regions of the current threshold on a worker thread (numpy only)."""
        state = self.prediction
        if state is None or self.is_busy("regions"):
            return  # the running task starts the next one when it ends (see done)
        wanted = self.region_params()
        names = self.class_names()

        def work(ctx: CallContext) -> list[Region]:
            return flag_regions(state.heatmap, state.label, state.ijk_to_ras, names, wanted)

        def done(fresh: list[Region]) -> None:
            if self.prediction is state and self.region_params() == wanted:
                self._set_regions(fresh, wanted.threshold)
            elif self.prediction is not None and not self._regions_are_current():
                self.set_threshold(self.threshold, force=True)  # the slider moved, or another prediction came

        self._start("regions", work, done)

    def region_params(self) -> RegionParams:
        """What the regions of the current threshold are found with: the prediction's minimum size and
        maximum count (sent by the server; ``min_region_voxels`` / ``max_regions`` override them)."""
        params = self.prediction.region_params if self.prediction is not None else RegionParams()
        return RegionParams.from_dict(params.to_dict(), threshold=self.threshold,
                                      min_voxels=self.min_region_voxels, max_regions=self.max_regions)

    def _regions_are_current(self) -> bool:
        """The shown regions are for the current threshold (e.g. the server's arrived meanwhile)."""
        return self.regions_threshold is not None and abs(self.regions_threshold - self.threshold) < 1e-9

    def _set_regions(self, fresh: list[Region], threshold: float) -> None:
        self.regions = keep_reviewed(self.regions, fresh)
        self.regions_threshold = threshold
        self.current_region = -1
        self._save_regions()
        self.regions_changed.emit(self.regions)

    def _save_regions(self) -> None:
        """Keep the regions and their reviewed ticks on the prediction's segmentation node (saved with the
        scene), so that they come back with it: after reloading the scene or choosing the volume again."""
        state = self.prediction
        node = self.scene.GetNodeByID(state.segmentation_id) if state is not None and state.segmentation_id else None
        if node is not None:
            node.SetAttribute(attributes.REGIONS_ATTRIBUTE, json.dumps(
                {"threshold": self.regions_threshold, "region_params": state.region_params.to_dict(),
                 "regions": [r.to_dict() for r in self.regions]}))

    def _server_regions_fit(self, state: PredictionState) -> bool:
        """The server's voxel indices are usable only when its grid is the volume's grid."""
        volume = self.scene.GetNodeByID(state.volume_id)
        text = volume.GetAttribute(CASE_GRID_ATTRIBUTE) if volume is not None else None
        if not text:
            return True
        matrix, shape = grids.grid_from_json(text)
        return shape == tuple(state.label.shape) and np.allclose(matrix, state.ijk_to_ras, atol=1e-3)

    def go_to_region(self, index: int, volume_node=None) -> Region | None:
        """Centre every slice view on region ``index`` (wraps around); returns it."""
        if not self.regions:
            return None
        index %= len(self.regions)
        region = self.regions[index]
        volume = volume_node
        if volume is None and self.prediction is not None:
            volume = self.scene.GetNodeByID(self.prediction.volume_id)
        navigation.center_slice_views_on(navigation.region_center_ras(region.to_dict(), volume), self.scene)
        self.current_region = index
        self.current_region_changed.emit(index)
        return region

    def next_region(self, step: int = 1) -> Region | None:
        start = self.current_region if self.current_region >= 0 else (-1 if step > 0 else 0)
        return self.go_to_region(start + step)

    def set_reviewed(self, index: int, reviewed: bool = True) -> None:
        if 0 <= index < len(self.regions):
            self.regions[index].reviewed = bool(reviewed)
            self._save_regions()

    # ------------------------------------------------------------------------------------------
    # Submit
    # ------------------------------------------------------------------------------------------
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

    # ------------------------------------------------------------------------------------------
    # Retrain
    # ------------------------------------------------------------------------------------------
    def retrain(self, iterations: int | None = None) -> None:
        """Start a training round (or follow the one already running); progress via ``training_progress``."""
        client_module = _client_module()

        def work(ctx: CallContext):
            client = self._client()
            try:
                job = client.train(iterations=iterations or None)
            except client_module.ConflictError:
                running = (client.info().get("jobs") or {}).get("training")
                if not running:
                    raise
                job = running
                ctx.report({"note": f"A training round is already running (job {job['id']}); following it."})
            job = self._follow_job(client, job, ctx)
            if job["status"] != JobStatus.DONE:
                raise client_module.JobFailedError(job)
            return job, client.info()

        def progress(update) -> None:
            if isinstance(update, dict) and "note" in update:
                self.status.emit(update["note"])
            elif isinstance(update, dict):
                self.training_progress.emit(TrainingProgress.from_job(update))

        def done(result) -> None:
            job, info = result
            self._apply_info(self.url, info)
            new_version = job.get("model_version")
            if new_version is not None:
                self.model_version = int(new_version)
                self.model_version_changed.emit(self.model_version)
            self.status.emit(f"Training round finished: {training_summary(job)}. Pseudo-label now uses it.")
            self.training_finished.emit(job)

        self.status.emit("Starting a training round…")
        self._start("train", work, done, progress)

    def cancel_training(self) -> None:
        self.cancel("train")

    # ------------------------------------------------------------------------------------------
    # Export
    # ------------------------------------------------------------------------------------------
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


def _saved_regions(segmentation_node, regions_json: str | None,
                   threshold: float) -> tuple[list[Region], float | None, RegionParams]:
    """The regions saved for a prediction, the threshold they are for and the server's region parameters:
    the segmentation's ``SynergyPL.Regions`` attribute, else ``regions_json`` (a list, for ``threshold``);
    ``([], None, defaults)`` when nothing was saved (then they are recomputed)."""
    text = segmentation_node.GetAttribute(attributes.REGIONS_ATTRIBUTE)
    if text:
        saved = json.loads(text)
        found = _float(saved.get("threshold"))
        params = RegionParams.from_dict(saved.get("region_params"))
        return [Region.from_dict(entry) for entry in saved.get("regions") or []], found, params
    entries = json.loads(regions_json or "[]")
    if not entries:
        return [], None, RegionParams()
    return [Region.from_dict(entry) for entry in entries], float(threshold), RegionParams()


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)).strip("._")
    return cleaned or "volume"


def _is_expected(exc: BaseException) -> bool:
    try:
        return isinstance(exc, (_client_module().SynergyPLError, grids.GridMismatch, nodes.SceneError))
    except ImportError:
        return False
