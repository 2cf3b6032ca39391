"""What every workflow of the labeling logic shares: the constants, the prediction state, and the
plumbing that runs an action (background call, busy/error signals, scene-close guard, temp files)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from SynergyPLLib.common.regions import Region, RegionParams

from .. import grids
from ..background import BackgroundCall, CallCancelled, CallContext, CallHandle
from ..messages import (
    _client_module,
    _float,
    describe_error,
)
from ..scene import attributes, nodes

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



class LogicBase:
    """The plumbing under every workflow; the state lives on the facade (see ``LabelingLogic.__init__``)."""

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
