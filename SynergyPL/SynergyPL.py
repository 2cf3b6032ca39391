"""SynergyPL: the 3D Slicer panel for interactive semi-supervised labeling.

The panel talks to a SynergyPL server (``synergypl serve``) through the standard-library client in
``SynergyPLLib.client``; the Qt-free work (scene helpers, the labeling loop, background tasks) lives in
``SynergyPLModuleLib``. This file holds the module description, the parameter node, the widget (Qt),
a thin module logic and the in-Slicer self-test.
"""

import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated


def _make_client_importable() -> None:
    """Put the folder holding ``SynergyPLLib`` on sys.path.

    Installed extension: SynergyPLLib sits beside this file. From source ("additional module paths"
    pointing at ``<repo>/SynergyPL``): it is the repository root, one level up.
    """
    here = Path(__file__).resolve().parent
    for folder in (here, here.parent):
        if (folder / "SynergyPLLib" / "client").is_dir():
            if str(folder) not in sys.path:
                sys.path.append(str(folder))
            return


_make_client_importable()

import qt  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode  # noqa: E402
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper  # noqa: E402
from slicer.ScriptedLoadableModule import (  # noqa: E402
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin  # noqa: E402
from SynergyPLModuleLib.background import POLL_INTERVAL_MS, BackgroundRunner  # noqa: E402
from SynergyPLModuleLib.local_server import ServerConfigError, free_port, serve_command  # noqa: E402
from SynergyPLModuleLib.logic import LabelingLogic, default_author, training_summary  # noqa: E402
from SynergyPLModuleLib.scene import (  # noqa: E402
    attributes,
    files,
    heatmap_layer,
    navigation,
    ownership,
    segment_editor,
    segmentations,
    terminology,
    transforms,
    volumes,
)
from SynergyPLModuleLib.server_process import FAILED as SERVER_FAILED  # noqa: E402
from SynergyPLModuleLib.server_process import QProcessDriver, ServerProcess  # noqa: E402
from SynergyPLModuleLib.transfers import panel_client_factory  # noqa: E402

from SynergyPLLib.common import regions as flagged  # noqa: E402


def _startupEnvironment() -> dict:
    """The environment Slicer was started with (before its launcher set PYTHONHOME, PYTHONPATH,
    LD_LIBRARY_PATH...): ``slicer.util.startupEnvironment()`` in Slicer 5.8 and 5.10; the process
    environment where that is missing (``serve_command`` strips Slicer's variables from it)."""
    try:
        return dict(slicer.util.startupEnvironment())
    except (AttributeError, RuntimeError):
        return dict(os.environ)


ERROR_STYLE = "color: #c0392b; font-weight: bold;"


#
# SynergyPL
#
class SynergyPL(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SynergyPL"
        self.parent.categories = ["Segmentation"]
        # Modules whose logic and nodes the panel uses (segment editor hand-off, colour legend).
        self.parent.dependencies = ["Segmentations", "SegmentEditor", "Colors"]
        self.parent.contributors = ["SynergyPL developers"]
        self.parent.helpText = (
            "Interactive semi-supervised labeling with a SynergyPL server: upload the volume, get a "
            "pseudo-label and a confidence heatmap, review the flagged regions, fix them in the Segment "
            "Editor, submit the label and retrain the model. See docs/slicer.md.")
        self.parent.acknowledgementText = (
            "Uses the SynergyPL service (synergy-guided regional supervision, soft pseudo-labels and "
            "confidence heatmaps). Example data: Medical Segmentation Decathlon, Task04_Hippocampus "
            "(CC-BY-SA 4.0).")


#
# Parameter node: the panel's state, saved with the scene
#
@parameterNodeWrapper
class SynergyPLParameterNode:
    """What a saved scene restores: server address, selected nodes, heatmap display, regions."""

    serverUrl: str = "http://127.0.0.1:8765"
    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    heatmap: vtkMRMLScalarVolumeNode
    heatmapVisible: bool = True
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    confidenceThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    trainIterations: Annotated[int, WithinRange(0, 1000000)] = 0
    exportFormat: Annotated[str, Choice(["seg.nrrd", "nifti", "dicom-seg"])] = "seg.nrrd"
    exportFolder: Path
    regionsJson: str = "[]"
    currentRegion: int = -1
    modelVersion: int = -1


#
# Widget
#
class SynergyPLWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: connects the .ui to :class:`LabelingLogic` and shows what it reports."""

    # Buttons disabled while an action runs (the others stay usable).
    BUTTONS_BY_ACTION = {
        "connect": ("connectButton",),
        "upload": ("uploadButton", "pseudoLabelButton", "submitButton"),
        "next_case": ("nextCaseButton", "uploadButton", "pseudoLabelButton"),
        "predict": ("pseudoLabelButton", "nextCaseButton", "submitButton"),
        "submit": ("submitButton", "pseudoLabelButton"),
        "load_label": ("submitButton",),
        "train": ("retrainButton",),
        "export": ("exportButton",),
    }

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._applied = {}
        self._updatingRegions = False
        self.serverProcess = None
        self.localServer = None
        self.serverState = None

    # -- setup --------------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SynergyPL.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SynergyPLLogic()
        self.labeling = self.logic.labeling
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)  # also when worker threads get the GIL in Slicer
        self.pollTimer.timeout.connect(self.labeling.runner.poll)
        self.labeling.runner.busy_changed.connect(self._onRunnerBusy)
        self.labeling.runner.unhandled_error.connect(lambda name, exc: self._showError(name, str(exc)))

        self._setupTable()
        self.ui.tokenLineEdit.text = os.environ.get("SYNERGYPL_TOKEN", "")
        self.ui.authorLineEdit.placeholderText = default_author()
        self.ui.activityProgressBar.visible = False

        # Buttons
        self.ui.connectButton.clicked.connect(self.onConnect)
        self.ui.startServerButton.clicked.connect(self.onStartServer)
        self.ui.stopServerButton.clicked.connect(self.onStopServer)
        self.ui.uploadButton.clicked.connect(self.onUpload)
        self.ui.nextCaseButton.clicked.connect(self.onNextCase)
        self.ui.pseudoLabelButton.clicked.connect(self.onPseudoLabel)
        self.ui.previousRegionButton.clicked.connect(lambda: self.onStepRegion(-1))
        self.ui.nextRegionButton.clicked.connect(lambda: self.onStepRegion(1))
        self.ui.segmentEditorButton.clicked.connect(self.onSegmentEditor)
        self.ui.submitButton.clicked.connect(lambda: self.onSubmit())  # not clicked(bool) -> parentVersion
        self.ui.retrainButton.clicked.connect(self.onRetrain)
        self.ui.cancelTrainingButton.clicked.connect(self.labeling.cancel_training)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.cancelActivityButton.clicked.connect(self.onCancelActivity)
        self.ui.tokenLineEdit.editingFinished.connect(self._configureServer)
        # Not on every keystroke (the parameter node follows the text): a new URL drops the connection.
        self.ui.serverUrlLineEdit.editingFinished.connect(self._configureServer)

        # What the logic reports
        labeling = self.labeling
        labeling.status.connect(self._showStatus)
        labeling.error.connect(self._showError)
        labeling.busy_changed.connect(self._onBusyChanged)
        labeling.server_changed.connect(self._onServerChanged)
        labeling.case_changed.connect(self._onCaseChanged)
        labeling.next_case_loaded.connect(self._onNextCaseLoaded)
        labeling.prediction_ready.connect(self._onPredictionReady)
        labeling.regions_changed.connect(self._onRegionsChanged)
        labeling.current_region_changed.connect(self._onCurrentRegionChanged)
        labeling.submitted.connect(self._onSubmitted)
        labeling.conflict.connect(self._onConflict)
        labeling.training_progress.connect(self._onTrainingProgress)
        labeling.training_finished.connect(self._onTrainingFinished)
        labeling.model_version_changed.connect(self._onModelVersionChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self._hideNonCaseVolumes)
        slicer.app.connect("aboutToQuit()", self.onStopServer)
        self.initializeParameterNode()

    def _setupTable(self) -> None:
        table = self.ui.regionsTable
        table.setHorizontalHeaderLabels(["Reviewed", "Rank", "Size (ml)", "Confidence", "Classes", "Likely error"])
        table.verticalHeader().visible = False
        table.horizontalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)
        table.horizontalHeader().setStretchLastSection(True)
        table.itemSelectionChanged.connect(self.onRegionSelected)
        table.itemChanged.connect(self.onRegionItemChanged)

    # -- module life cycle --------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Slicer closes or the module is reloaded: stop the server, cancel work, drop observers."""
        self.onStopServer()
        slicer.app.disconnect("aboutToQuit()", self.onStopServer)  # else each reload keeps the old widget
        self.removeObservers()
        if self.logic is not None:
            self.pollTimer.stop()
            self.labeling.shutdown()

    def onReload(self) -> None:
        """Developer reload: also reload the Qt-free lib (Slicer reloads only this file)."""
        import importlib

        scene_modules = tuple(f"scene.{name}" for name in (
            "nodes", "attributes", "transforms", "volumes", "terminology", "segmentations", "files", "ownership",
            "slice_views", "heatmap_layer", "navigation", "segment_editor"))  # in import order
        for name in ("signals", "background", "grids", *scene_modules, "nrrdfile", "messages", "local_server",
                     "server_process", "transfers", "workflows.base", "workflows.connection", "workflows.cases",
                     "workflows.prediction", "workflows.review", "workflows.labels", "workflows.training",
                     "workflows.export", "logic"):
            module = sys.modules.get(f"SynergyPLModuleLib.{name}")
            if module is not None:
                importlib.reload(module)
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self._hideNonCaseVolumes()
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            cases = ownership.case_volumes(slicer.mrmlScene)
            if cases:
                self._parameterNode.inputVolume = cases[0]

    def _hideNonCaseVolumes(self, caller=None, event=None) -> None:
        """The case selector offers images only, never the heatmaps and region maps the panel made."""
        self.ui.inputVolumeSelector.sortFilterProxyModel().hiddenNodeIDs = ownership.non_case_volume_ids(slicer.mrmlScene)

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = parameterNode
        self._applied = {}
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._restoreFromScene()
            self._onParameterNodeModified()

    def _restoreFromScene(self) -> None:
        """A loaded scene: give the logic back the prediction and the regions the panel showed."""
        p = self._parameterNode
        self._configureServer()
        if p.modelVersion >= 0:
            self.labeling.model_version = p.modelVersion
            self._onModelVersionChanged(p.modelVersion)
        if p.inputVolume and p.segmentation and p.heatmap and self.labeling.prediction is None:
            self.labeling.restore(p.inputVolume, p.segmentation, p.heatmap, p.regionsJson, p.confidenceThreshold)

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Apply display settings that changed; refresh labels and button states."""
        p = self._parameterNode
        if p is None:
            return
        current = {"opacity": p.heatmapOpacity, "visible": p.heatmapVisible,
                   "threshold": p.confidenceThreshold, "volume": p.inputVolume.GetID() if p.inputVolume else None}
        changed = {key for key, value in current.items() if self._applied.get(key) != value}
        self._applied = current
        # A changed URL is applied on editingFinished and before each action, not here (every keystroke).
        if p.heatmap and changed & {"opacity", "visible"}:
            heatmap_layer.set_heatmap_visible(p.heatmap, p.heatmapVisible, p.heatmapOpacity)
        if "threshold" in changed:
            self.labeling.set_threshold(p.confidenceThreshold, heatmap_node=p.heatmap)
        if "volume" in changed:
            self._followVolume(p)
            self._onCaseChanged(p.inputVolume, None)
        self._updateButtons()

    def _followVolume(self, p) -> None:
        """Another volume was chosen: select the segmentation and heatmap made for it (or none), so that
        a pseudo-label never lands in another case's segmentation."""
        volume = p.inputVolume
        segmentation, heatmap = ownership.nodes_for_volume(volume, p.segmentation, p.heatmap)
        if segmentation is not p.segmentation:
            p.segmentation = segmentation
        if heatmap is not p.heatmap:
            p.heatmap = heatmap
        self.labeling.show_volume(volume, p.segmentation, p.heatmap, p.confidenceThreshold)

    # -- server -------------------------------------------------------------------------------------
    def _configureServer(self) -> None:
        if self._parameterNode is not None:
            url = self._parameterNode.serverUrl
            # The server this panel started: its token is read from its project folder.
            local = self.localServer if self.localServer is not None and self.localServer.url == url else None
            self.labeling.configure(url, self.ui.tokenLineEdit.text, project=local.project if local else None)

    def onConnect(self) -> None:
        self._configureServer()
        self.ui.serverStatusLabel.text = "Connecting…"
        self.labeling.check_connection()

    def _onServerChanged(self, server) -> None:
        if server is None:
            self.ui.serverStatusLabel.text = "Not connected."
            self.ui.serverStatusLabel.styleSheet = ""
        else:
            self.ui.serverStatusLabel.text = server.summary()
            self.ui.serverStatusLabel.styleSheet = ""
            self.ui.serverStatusLabel.toolTip = (f"{server.url}\nclasses: {', '.join(c.name for c in server.classes)}"
                                                 f"\ncases: {server.cases}")
        self._updateButtons()

    def onStartServer(self) -> None:
        """Run ``synergypl serve`` for the chosen project (:class:`QProcessDriver`, owned by the panel).

        The server's Python gets Slicer's startup environment (before the launcher set PYTHONHOME,
        PYTHONPATH, LD_LIBRARY_PATH...), cleaned once more by :func:`server_environment`; the state
        shown ("Starting…", running, failed with the reason) is kept by :class:`ServerProcess`."""
        if self.serverProcess is not None and self.serverProcess.is_running:
            self._showStatus("The local server is already running.")
            return
        try:
            port = free_port()
            command = serve_command(self.ui.pythonPathLineEdit.currentPath or None,
                                    self.ui.projectPathLineEdit.currentPath, port,
                                    token=self.ui.tokenLineEdit.text or None,
                                    environment=_startupEnvironment(), slicer_home=slicer.app.slicerHome)
        except ServerConfigError as exc:
            self._showError("start server", str(exc))
            return
        self.ui.pythonPathLineEdit.addCurrentPathToHistory()
        self.ui.projectPathLineEdit.addCurrentPathToHistory()
        self.serverState = ServerProcess(command.program, command.arguments, command.url)
        self.serverState.state_changed.connect(self._onServerStateChanged)
        # `python -m` puts the working directory first on sys.path: the project folder, not Slicer's.
        self.serverProcess = QProcessDriver(self.serverState, command.environment,
                                            cwd=str(Path(self.ui.projectPathLineEdit.currentPath).expanduser()))
        self.serverProcess.log.connect(self.ui.serverLogTextEdit.appendPlainText)
        self.localServer = command
        self._parameterNode.serverUrl = command.url
        self.serverProcess.start()
        self._updateButtons()
        qt.QTimer.singleShot(2000, self._checkLocalServer)

    def _checkLocalServer(self) -> None:
        """Poll the new server until it answers (up to a minute), then show its device and model."""
        state = self.serverState
        if state is None or not state.check():
            return
        if self.labeling.server is not None and self.labeling.url == state.url:
            state.server_answered(self.labeling.server.summary())
            return
        if not self.labeling.is_busy("connect"):
            self._configureServer()
            self.labeling.check_connection()
        qt.QTimer.singleShot(2000, self._checkLocalServer)

    def _onServerStateChanged(self, state: str, message: str) -> None:
        if state == SERVER_FAILED:
            self._showError("start server", message)
        else:
            self._showStatus(message)
        self._updateButtons()

    def onStopServer(self) -> None:
        if self.serverProcess is not None and self.serverProcess.is_running:
            self.serverProcess.stop()
            self._updateButtons()

    # -- case ---------------------------------------------------------------------------------------
    def onUpload(self) -> None:
        self._configureServer()
        self.labeling.upload(self._parameterNode.inputVolume)

    def onNextCase(self) -> None:
        self._configureServer()

        self.labeling.next_case()

    def _onNextCaseLoaded(self, volume, case) -> None:
        self._parameterNode.inputVolume = volume
        if case.get("prediction"):
            self.onPseudoLabel()

    def _onCaseChanged(self, volume, case_id) -> None:
        known = self.labeling.case_id_of(volume)
        self.ui.caseIdLabel.text = known or ("not uploaded" if volume is not None else "-")

    # -- pseudo-label -------------------------------------------------------------------------------
    def onPseudoLabel(self) -> None:
        p = self._parameterNode
        if self.labeling.would_lose_edits(p.segmentation):
            if not slicer.util.confirmOkCancelDisplay(
                    f"Replace the contents of {p.segmentation.GetName()} with a new pseudo-label? Edits not "
                    "submitted are lost (choose an empty segmentation to keep them).", windowTitle="SynergyPL"):
                return
        self._configureServer()
        self.labeling.threshold = p.confidenceThreshold
        self.labeling.pseudo_label(p.inputVolume, p.segmentation, p.heatmap, opacity=p.heatmapOpacity,
                                   show_heatmap=p.heatmapVisible)

    def _onPredictionReady(self, segmentation, heatmap) -> None:
        self._hideNonCaseVolumes()
        p = self._parameterNode
        p.segmentation = segmentation
        p.heatmap = heatmap
        heatmap_layer.set_heatmap_visible(heatmap, p.heatmapVisible, p.heatmapOpacity)
        self.ui.labelVersionLabel.text = f"label: from v{segmentation.GetAttribute(attributes.LABEL_VERSION_ATTRIBUTE)}"

    def _onModelVersionChanged(self, version) -> None:
        self.ui.modelVersionLabel.text = f"model: v{version}" if version is not None else "model: none yet"
        if self._parameterNode is not None and version is not None and self._parameterNode.modelVersion != version:
            self._parameterNode.modelVersion = int(version)

    # -- flagged regions ----------------------------------------------------------------------------
    def _onRegionsChanged(self, regions) -> None:
        table = self.ui.regionsTable
        self._updatingRegions = True
        try:
            table.setRowCount(len(regions))
            for row, region in enumerate(regions):
                tick = qt.QTableWidgetItem()
                tick.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
                tick.setCheckState(qt.Qt.Checked if region.reviewed else qt.Qt.Unchecked)
                table.setItem(row, 0, tick)
                values = [str(region.rank), f"{region.volume_ml:.3f}", f"{region.mean_confidence:.2f}",
                          ", ".join(c for c in region.classes if c != "background") or "background",
                          region.likely_error]
                for column, text in enumerate(values, start=1):
                    item = qt.QTableWidgetItem(text)
                    item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
                    table.setItem(row, column, item)
        finally:
            self._updatingRegions = False
        self._saveRegions()

    def _saveRegions(self) -> None:
        import json

        regions = self.labeling.regions
        self.ui.regionsSummaryLabel.text = flagged.summary(regions)
        if self._parameterNode is not None:
            self._parameterNode.regionsJson = json.dumps([r.to_dict() for r in regions])
        self._updateButtons()

    def onRegionSelected(self) -> None:
        if self._updatingRegions:
            return
        row = self.ui.regionsTable.currentRow()
        if 0 <= row < len(self.labeling.regions) and row != self.labeling.current_region:
            self.labeling.go_to_region(row, self._parameterNode.inputVolume)

    def onRegionItemChanged(self, item) -> None:
        if self._updatingRegions or item.column() != 0:
            return
        self.labeling.set_reviewed(item.row(), item.checkState() == qt.Qt.Checked)
        self._saveRegions()

    def onStepRegion(self, step: int) -> None:
        self.labeling.next_region(step)

    def _onCurrentRegionChanged(self, index) -> None:
        self._updatingRegions = True
        try:
            self.ui.regionsTable.selectRow(index)
        finally:
            self._updatingRegions = False
        if self._parameterNode is not None:
            self._parameterNode.currentRegion = index

    def onSegmentEditor(self) -> None:
        """Open the Segment Editor on this segmentation and its source volume."""
        p = self._parameterNode
        if not p.segmentation or not p.inputVolume:
            self._showError("segment editor", "Pseudo-label first (or choose a segmentation and a volume).")
            return
        segment_editor.configure_segment_editor(p.segmentation, p.inputVolume)
        slicer.util.selectModule("SegmentEditor")
        editorWidget = slicer.modules.segmenteditor.widgetRepresentation().self()
        editor = getattr(editorWidget, "editor", None)
        if editor is not None:
            editor.setSegmentationNode(p.segmentation)
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(p.inputVolume)

    # -- submit -------------------------------------------------------------------------------------
    def onSubmit(self, parentVersion=None) -> None:
        p = self._parameterNode
        self._configureServer()
        self.labeling.submit(p.inputVolume, p.segmentation, author=self.ui.authorLineEdit.text or default_author(),
                             parent_version=parentVersion)

    def _onSubmitted(self, version) -> None:
        self.ui.labelVersionLabel.text = f"label: v{version['version']} by {version.get('author', '?')}"

    def _onConflict(self, info) -> None:
        """Someone else submitted first: explain, keep the local segmentation, let the user choose."""
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle("SynergyPL: label conflict")
        box.setIcon(qt.QMessageBox.Warning)
        box.setText(info["explanation"])
        box.setDetailedText(info.get("message", ""))
        mine = box.addButton(f"Submit mine as version {int(info['latest_version'] or 0) + 1}", qt.QMessageBox.AcceptRole)
        theirs = box.addButton(f"Load version {info['latest_version']} to compare", qt.QMessageBox.ActionRole)
        box.addButton("Keep editing", qt.QMessageBox.RejectRole)
        box.exec_()
        if box.clickedButton() == mine:
            self.onSubmit(parentVersion=int(info["latest_version"] or 0))
        elif box.clickedButton() == theirs:
            self.labeling.load_label_version(self._parameterNode.inputVolume, info["case_id"], info["latest_version"])
        self._showStatus("Label conflict: your segmentation is unchanged.")

    # -- retrain ------------------------------------------------------------------------------------
    def onRetrain(self) -> None:
        self._configureServer()
        self.ui.trainingProgressBar.value = 0
        self.ui.trainingStatusLabel.text = "Starting…"
        self.labeling.retrain(self._parameterNode.trainIterations or None)

    def _onTrainingProgress(self, progress) -> None:
        self.ui.trainingProgressBar.value = int(round(100 * progress.fraction))
        self.ui.trainingStatusLabel.text = progress.text()

    def _onTrainingFinished(self, job) -> None:
        self.ui.trainingProgressBar.value = 100
        self.ui.trainingStatusLabel.text = f"Done: {training_summary(job)}."

    # -- export -------------------------------------------------------------------------------------
    def onExport(self) -> None:
        p = self._parameterNode
        folder = str(p.exportFolder) if str(p.exportFolder) not in ("", ".") else str(Path.home())
        self.labeling.export(p.inputVolume, p.segmentation, p.exportFormat, folder)

    # -- busy state, status and errors --------------------------------------------------------------
    def _onRunnerBusy(self, busy: bool) -> None:
        if busy:
            self.pollTimer.start()
        else:
            self.pollTimer.stop()

    def _onBusyChanged(self, action: str, busy: bool) -> None:
        self._updateButtons()
        if action == "connect" and not busy and self.labeling.server is None:
            self.ui.serverStatusLabel.text = "Not connected."

    def _updateButtons(self) -> None:
        """Enable what can be done now; an action that runs disables only its own buttons."""
        p = self._parameterNode
        labeling = self.labeling
        if p is None or labeling is None:
            return
        hasVolume = bool(p.inputVolume)
        hasSegmentation = bool(p.segmentation)
        ui = self.ui
        ui.uploadButton.enabled = hasVolume
        ui.pseudoLabelButton.enabled = hasVolume
        ui.nextCaseButton.enabled = True
        ui.connectButton.enabled = True
        ui.submitButton.enabled = hasVolume and hasSegmentation
        ui.segmentEditorButton.enabled = hasVolume and hasSegmentation
        ui.exportButton.enabled = hasVolume and hasSegmentation
        ui.retrainButton.enabled = True
        ui.previousRegionButton.enabled = ui.nextRegionButton.enabled = bool(labeling.regions)
        for action, names in self.BUTTONS_BY_ACTION.items():
            if labeling.is_busy(action):
                for name in names:
                    getattr(ui, name).enabled = False
        ui.cancelTrainingButton.enabled = labeling.is_busy("train")
        others = [a for a in self.BUTTONS_BY_ACTION if a != "train" and labeling.is_busy(a)]
        ui.activityProgressBar.visible = bool(others)
        ui.cancelActivityButton.enabled = bool(others)
        running = self.serverProcess is not None and self.serverProcess.is_running
        ui.startServerButton.enabled = not running
        ui.stopServerButton.enabled = running

    def onCancelActivity(self) -> None:
        for action in self.BUTTONS_BY_ACTION:
            if action != "train":
                self.labeling.cancel(action)

    def _showStatus(self, message: str) -> None:
        self.ui.statusLabel.styleSheet = ""
        self.ui.statusLabel.text = message
        slicer.util.showStatusMessage(f"SynergyPL: {message}", 5000)

    def _showError(self, action: str, message: str) -> None:
        logging.warning("SynergyPL %s: %s", action, message)
        self.ui.statusLabel.styleSheet = ERROR_STYLE
        self.ui.statusLabel.text = message
        slicer.util.showStatusMessage(f"SynergyPL: {message}", 10000)
        if action == "connect":
            self.ui.serverStatusLabel.text = "Not connected."
        self._updateButtons()


#
# Logic
#
class SynergyPLLogic(ScriptedLoadableModuleLogic):
    """Module logic: the parameter node, and the labeling loop (:class:`LabelingLogic`, Qt-free)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        runner = BackgroundRunner()
        # Volumes move in a helper process started by the GUI thread: fast despite Slicer's GIL.
        self.labeling = LabelingLogic(runner=runner, client_factory=panel_client_factory(runner))

    def getParameterNode(self):
        return SynergyPLParameterNode(super().getParameterNode())


#
# Test (runs inside Slicer: Reload and Test)
#
class SynergyPLTest(ScriptedLoadableModuleTest):
    """Scene helpers on the real application, then the whole labeling loop against a server.

    The loop needs a running server with a trained model and an image:
    SYNERGYPL_TEST_URL (e.g. http://127.0.0.1:8765) and SYNERGYPL_TEST_IMAGE (e.g.
    .../hippocampus/imagesTr/hippocampus_050.nii.gz), and the server's token in SYNERGYPL_TOKEN or its
    project folder in SYNERGYPL_TEST_PROJECT. Without them only the scene test runs.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_scene_helpers()
        self.setUp()
        self.test_labeling_loop()

    def test_scene_helpers(self) -> None:
        import numpy as np

        self.delayDisplay("Scene helpers")
        direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        matrix = transforms.ijk_to_ras_from_lps((0.8, 0.9, 1.5), (10.0, -20.0, 5.0), direction)
        image = np.random.default_rng(0).normal(size=(20, 24, 12)).astype(np.float32)
        volume = volumes.add_volume_from_array(image, matrix, "SynergyPL test volume")
        label = np.zeros(image.shape, np.uint8)
        label[3:8, 4:12, 2:6] = 1
        label[10:15, 5:20, 4:9] = 2
        classes = terminology.classes_from_dicts([{"value": 1, "name": "A", "color": [255, 0, 0]},
                                           {"value": 2, "name": "B", "color": [0, 255, 0]}])
        segmentation = segmentations.labelmap_to_segmentation(label, volume, classes)
        back, _ = segmentations.segmentation_to_labelmap(segmentation, volume, classes)
        self.assertTrue(np.array_equal(back, label))
        heat = heatmap_layer.show_heatmap(np.linspace(0, 1, image.size, dtype=np.float32).reshape(image.shape), volume)
        layout = slicer.app.layoutManager()
        composite = layout.sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(composite.GetForegroundVolumeID(), heat.GetID())
        navigation.center_slice_views_on((1.0, 2.0, 3.0))
        center = navigation.slice_view_center_ras(layout.sliceWidget("Red").mrmlSliceNode())
        self.assertTrue(np.allclose(center, (1.0, 2.0, 3.0), atol=1e-3))
        path = Path(tempfile.mkdtemp()) / "test.seg.nrrd"
        files.export_segmentation(segmentation, path, volume)
        loaded = slicer.util.loadSegmentation(str(path))
        again, _ = segmentations.segmentation_to_labelmap(loaded, volume, classes)
        self.assertTrue(np.array_equal(again, label))
        self.delayDisplay("Scene helpers passed")

    def test_labeling_loop(self) -> None:
        url, image = os.environ.get("SYNERGYPL_TEST_URL"), os.environ.get("SYNERGYPL_TEST_IMAGE")
        testing = Path(__file__).resolve().parent.parent / "Testing" / "slicer"  # the scenario is test code
        if not url or not image or not (testing / "selftest.py").is_file():
            self.delayDisplay("Labeling loop skipped: run the module from the source tree and set "
                              "SYNERGYPL_TEST_URL and SYNERGYPL_TEST_IMAGE", 3000)
            return
        if str(testing) not in sys.path:
            sys.path.append(str(testing))
        from selftest import run_labeling_loop
        logic = LabelingLogic(runner=BackgroundRunner())
        logic.configure(url, os.environ.get("SYNERGYPL_TOKEN"), project=os.environ.get("SYNERGYPL_TEST_PROJECT"))
        volume = slicer.util.loadVolume(image)

        def wait(timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while logic.is_busy() or logic.runner.busy:
                logic.runner.poll()
                slicer.app.processEvents()
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)
            logic.runner.poll()
            return True

        try:
            run_labeling_loop(logic, volume, tempfile.mkdtemp(), wait, retrain_iterations=2,
                              log=lambda message: self.delayDisplay(message, 200))
        finally:
            logic.shutdown()
        self.delayDisplay("Labeling loop passed")
