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

The logic is a facade: :class:`LabelingLogic` holds the shared state (client settings, the shown
prediction and its regions, the current case) and the signals, and takes its actions from one small
piece per workflow in :mod:`.workflows` (connection, cases, prediction, review, labels, training, export;
the plumbing in :mod:`.workflows.base`). The pieces report through the signals only.

Closing the scene (File > Close Scene, ``vtkMRMLScene.Clear``) forgets the shown prediction and its
regions, and results of scene-bound actions still running then are dropped: node IDs restart in the
next scene, so they would land on the wrong volume.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from SynergyPLLib.common.regions import Region

from .background import BackgroundRunner, CallHandle
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
from .scene import terminology
from .signals import Signal
from .workflows.base import (  # noqa: F401 - re-exported for the widget and tests
    CASE_GRID_ATTRIBUTE,
    EXPORT_FORMATS,
    HAS_DICOM_ATTRIBUTE,
    SCENE_BOUND_ACTIONS,
    PredictionState,
)
from .workflows.cases import CasesWorkflow
from .workflows.connection import ConnectionWorkflow
from .workflows.export import ExportWorkflow
from .workflows.labels import LabelsWorkflow
from .workflows.prediction import PredictionWorkflow
from .workflows.review import ReviewWorkflow
from .workflows.training import TrainingWorkflow

_log = logging.getLogger(__name__)


class LabelingLogic(ConnectionWorkflow, CasesWorkflow, PredictionWorkflow, ReviewWorkflow, LabelsWorkflow,
                    TrainingWorkflow, ExportWorkflow):
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
