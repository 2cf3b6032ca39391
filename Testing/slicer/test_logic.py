"""The panel's Qt-free plumbing: background tasks, signals, error messages, the local-server command,
and logic flows that need no server (a stand-in client that records calls)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import scene_checks
from SynergyPLModuleLib import background
from SynergyPLModuleLib import local_server as server
from SynergyPLModuleLib.logic import LabelingLogic, TrainingProgress, describe_error
from SynergyPLModuleLib.scene import (
    attributes,
    heatmap_layer,
    navigation,
    ownership,
    segmentations,
    slice_views,
    terminology,
    transforms,
    volumes,
)
from SynergyPLModuleLib.signals import Signal

from SynergyPLLib import client as real_client
from SynergyPLLib.engine.io import Volume, read_volume, write_volume


# ------------------------------------------------------------------------------------------------
# Signals and tasks
# ------------------------------------------------------------------------------------------------
def test_signal_calls_every_slot_even_if_one_fails():
    signal, seen = Signal("s"), []
    signal.connect(lambda x: seen.append(("a", x)))
    signal.connect(lambda x: 1 / 0)
    signal.connect(lambda x: seen.append(("c", x)))
    signal.emit(5)
    assert seen == [("a", 5), ("c", 5)]
    signal.disconnect()
    signal.emit(6)
    assert len(seen) == 2 and len(signal) == 0


def test_task_runner_delivers_results_progress_and_errors_on_the_polling_thread():
    runner = background.BackgroundRunner()
    busy, delivered = [], []
    runner.busy_changed.connect(busy.append)
    main = threading.get_ident()

    def work(ctx):
        assert threading.get_ident() != main
        ctx.report(1)
        ctx.report(2)
        return "result"

    handle = runner.submit(background.BackgroundCall("ok", work, on_done=lambda r: delivered.append(("done", r, threading.get_ident())),
                                      on_progress=lambda p: delivered.append(("progress", p, threading.get_ident()))))
    failing = runner.submit(background.BackgroundCall("bad", lambda ctx: 1 / 0, on_error=lambda e: delivered.append(("error", type(e)))))
    assert runner.wait(timeout=10)
    assert handle.finished and handle.result == "result" and failing.error is not None
    assert [d for d in delivered if d[0] == "progress"] == [("progress", 1, main), ("progress", 2, main)]
    assert ("done", "result", main) in delivered and ("error", ZeroDivisionError) in delivered
    assert busy == [True, False]


def test_task_runner_cancel_and_unhandled_errors():
    runner = background.BackgroundRunner()
    unhandled = []
    runner.unhandled_error.connect(lambda name, exc: unhandled.append((name, type(exc))))
    started = threading.Event()

    def slow(ctx):
        started.set()
        while not ctx.sleep(0.01):
            pass
        ctx.check_cancelled()

    handle = runner.submit(background.BackgroundCall("slow", slow))
    started.wait(5)
    assert runner.busy and not runner.wait(handle, timeout=0.1)
    handle.cancel()
    assert runner.wait(handle, timeout=5)
    assert unhandled == [("slow", background.CallCancelled)]
    broken = runner.submit(background.BackgroundCall("broken callback", lambda ctx: 1, on_done=lambda r: 1 / 0))
    assert runner.wait(broken, timeout=5) and unhandled[-1] == ("broken callback", ZeroDivisionError)


# ------------------------------------------------------------------------------------------------
# Messages, training progress, local server command
# ------------------------------------------------------------------------------------------------
def test_errors_become_sentences():
    assert "cannot be reached" in describe_error(real_client.ConnectionError("x"))
    assert "did not answer in time" in describe_error(real_client.TimeoutError("slow"))
    assert "token" in describe_error(real_client.AuthError(401, "no"))
    assert describe_error(real_client.BadRequestError(422, "image is constant")) == \
        "The server refused the request: image is constant"
    assert "HTTP 500" in describe_error(real_client.ServerError(500, "boom"))
    job = {"id": 3, "kind": "train", "status": "failed", "error": "out of memory"}
    assert describe_error(real_client.JobFailedError(job)) == "Training job 3 failed: out of memory"


def test_training_progress_text():
    job = {"id": 7, "status": "running", "progress": {"phase": "train", "iteration": 30, "total": 120,
                                                       "losses": {"total": 0.5, "ce": 0.2}, "val_dice": 0.81,
                                                       "eta_seconds": 125}}
    progress = TrainingProgress.from_job(job)
    assert progress.fraction == 0.25 and progress.loss == 0.5
    assert progress.text() == ("running (train), iteration 30/120, loss 0.5000, validation Dice 0.810, "
                               "ETA 2 min 05 s")


def test_training_summary():
    from SynergyPLModuleLib.logic import training_summary

    job = {"model_version": 4, "result": {"metrics": {"val_dice": 0.7131, "iterations": 250}}}
    assert training_summary(job) == "model v4, validation Dice 0.713 (250 iterations)"
    assert training_summary({"model_version": 2}) == "model v2"


def test_local_server_command(tmp_path, monkeypatch):
    with pytest.raises(server.ServerConfigError, match="does not exist"):
        server.serve_command("/usr/bin/python3", tmp_path / "missing")
    with pytest.raises(server.ServerConfigError, match="not a SynergyPL project"):
        server.serve_command("/usr/bin/python3", tmp_path)
    (tmp_path / "project.yml").write_text("name: x\n")   # project.yml is a project too (it was refused)
    assert server.serve_command("/usr/bin/python3", tmp_path).project == str(tmp_path)
    (tmp_path / "project.yml").unlink()
    (tmp_path / "project.yaml").write_text("name: x\n")
    python = tmp_path / "python"
    python.write_text("")
    command = server.serve_command(str(python), tmp_path, port=8800, token="secret-token")
    assert command.as_list()[:5] == [str(python), "-m", "SynergyPLLib.cli", "serve", "--project"]
    assert "secret-token" not in " ".join(command.as_list())
    assert command.environment["SYNERGYPL_TOKEN"] == "secret-token"
    assert command.url == "http://127.0.0.1:8800"
    assert command.project == str(tmp_path)  # where the panel reads the server's token from
    with pytest.raises(server.ServerConfigError, match="Python interpreter"):
        server.serve_command(str(tmp_path / "nope"), tmp_path)
    assert 0 < server.free_port(0) < 65536


# ------------------------------------------------------------------------------------------------
# Logic flows with a stand-in client
# ------------------------------------------------------------------------------------------------
class FakeClient:
    """Records calls; behaves like the service for the few routes the tests use."""

    calls: list = []
    cases: dict = {}
    images: dict = {}

    def __init__(self, url, token=None, timeout=60):
        self.url = url

    def info(self):
        FakeClient.calls.append(("info",))
        return {"name": "Demo", "device": "CPU", "server_version": "test", "active_model": 1,
                "models": [{"version": 1}], "cases": {}, "jobs": {"training": None},
                "classes": [{"value": 1, "name": "Anterior", "color": [255, 0, 0],
                             "terminology": {"category": {"scheme": "SCT", "code": "1", "meaning": "c"},
                                             "type": {"scheme": "SCT", "code": "2", "meaning": "t"}}}]}

    def upload_case(self, path, case_id=None, filename=None, timeout=None):
        FakeClient.calls.append(("upload", case_id))
        if case_id in FakeClient.cases:
            raise real_client.ConflictError(409, f"case {case_id!r} already exists")
        image = read_volume(path)  # the case's grid is the uploaded file's, as on the service
        FakeClient.cases[case_id] = {"id": case_id, "has_dicom": False, "shape": list(image.shape),
                                     "spacing": list(image.spacing), "origin": list(image.origin),
                                     "direction": np.asarray(image.direction).ravel().tolist()}
        FakeClient.images[case_id] = Path(path).read_bytes()
        return FakeClient.cases[case_id]

    def get_case(self, case_id):
        return FakeClient.cases[case_id]

    def download_image(self, case_id, path):
        Path(path).write_bytes(FakeClient.images[case_id])
        return Path(path)

    def list_cases(self):
        return list(FakeClient.cases.values())


@pytest.fixture
def fake_logic(mrml_env, tmp_path):
    FakeClient.calls, FakeClient.cases, FakeClient.images = [], {}, {}
    logic = LabelingLogic(scene=mrml_env.scene, client_factory=FakeClient, work_dir=tmp_path / "w")
    logic.configure("127.0.0.1:9")
    yield logic
    logic.shutdown()


def _volume(scene, name, seed):
    data = np.random.default_rng(seed).integers(0, 100, (4, 5, 6)).astype(np.int16)
    return volumes.add_volume_from_array(data, np.diag([-1.0, -1.0, 1.0, 1.0]), name, scene=scene)


def test_upload_is_done_once_and_a_taken_id_is_adopted_only_for_the_same_voxels(fake_logic, mrml_env):
    assert fake_logic.url == "http://127.0.0.1:9"
    busy = []
    fake_logic.busy_changed.connect(lambda action, b: busy.append((action, b)))
    first = _volume(mrml_env.scene, "scan", 0)
    fake_logic.upload(first)
    assert fake_logic.runner.wait(timeout=10)
    assert ownership.case_id(first) == "scan"
    fake_logic.upload(first)                      # remembered: no second upload
    assert fake_logic.runner.wait(timeout=10)
    assert [c for c in FakeClient.calls if c[0] == "upload"] == [("upload", "scan")]

    same = _volume(mrml_env.scene, "scan", 0)     # the same image loaded again: adopts the case
    fake_logic.upload(same)
    assert fake_logic.runner.wait(timeout=10)
    assert ownership.case_id(same) == "scan"
    other = _volume(mrml_env.scene, "scan", 1)    # another image with the same name: a fresh id
    fake_logic.upload(other)
    assert fake_logic.runner.wait(timeout=10)
    assert ownership.case_id(other) == "scan-2"
    assert not fake_logic.is_busy() and busy[-1] == ("upload", False)
    assert {a for a, _ in busy} == {"connect", "upload"}


def test_restore_from_a_saved_scene_keeps_regions_and_reviewed_ticks(fake_logic, mrml_env):
    scene = mrml_env.scene
    volume = _volume(scene, "scan", 0)
    label = np.zeros((4, 5, 6), np.uint8)
    label[1:3, 1:4, 1:5] = 1
    classes = terminology.classes_from_dicts([{"value": 1, "name": "Anterior"}])
    segmentation = segmentations.labelmap_to_segmentation(label, volume, classes, scene=scene)
    heat = np.ones((4, 5, 6), np.float32)
    heat[0:2, 0:2, 0:2] = 0.2
    heat[3, 4, 3:6] = 0.1
    heatmap = heatmap_layer.show_heatmap(heat, volume, scene=scene)
    from SynergyPLLib.common.regions import RegionParams, flag_regions

    regions = flag_regions(heat, label, transforms.ijk_to_ras(volume), ["background", "Anterior"], RegionParams(0.5, 1))
    regions[1].reviewed = True
    saved = json.dumps([r.to_dict() for r in regions])

    assert fake_logic.restore(volume, segmentation, heatmap, saved, 0.5)
    assert [r.reviewed for r in fake_logic.regions] == [False, True]
    fake_logic.set_threshold(0.5, force=True)
    assert fake_logic.runner.wait(timeout=10)
    assert [r.reviewed for r in fake_logic.regions] == [False, True]
    fake_logic.min_region_voxels = 1
    fake_logic.set_threshold(0.15)                 # only the 0.1 voxels remain: that region was reviewed
    assert fake_logic.runner.wait(timeout=10)
    assert [(r.voxel_count, r.reviewed) for r in fake_logic.regions] == [(3, True)]
    region = fake_logic.go_to_region(0)
    assert np.allclose(navigation.slice_view_center_ras(scene_checks.slice_nodes(scene)[0]),
                       navigation.region_center_ras(region.to_dict(), volume))


def test_actions_report_missing_input_without_staying_busy(fake_logic):
    errors = []
    fake_logic.error.connect(lambda action, message: errors.append(action))
    fake_logic.upload(None)
    fake_logic.pseudo_label(None)
    fake_logic.submit(None, None)
    fake_logic.export(None, None, "seg.nrrd", ".")
    assert errors == ["upload", "predict", "submit", "export"]
    assert not fake_logic.is_busy()


def test_same_voxels_check_reads_through_slicer(fake_logic, mrml_env, tmp_path):
    volume = _volume(mrml_env.scene, "scan", 0)
    image = Volume(volumes.array_ijk(volume), **scene_checks.geometry_lps(transforms.ijk_to_ras(volume)))
    assert fake_logic._same_voxels(write_volume(image, tmp_path / "same.nrrd"), volume)
    image.array[0, 0, 0] += 1
    assert not fake_logic._same_voxels(write_volume(image, tmp_path / "other.nrrd"), volume)


# ------------------------------------------------------------------------------------------------
# A stand-in service with predictions, next case and label submission
# ------------------------------------------------------------------------------------------------
class PredictingClient(FakeClient):
    """FakeClient plus the prediction, next-case and submit routes. ``download_gate`` (when set to an
    unset Event) holds prediction downloads until the test releases it; ``downloading`` tells it one
    is waiting."""

    predictions: dict = {}
    submitted: list = []
    next_id: str | None = None
    download_gate: threading.Event | None = None
    downloading = threading.Event()

    def get_case(self, case_id):
        case = dict(FakeClient.cases[case_id])
        if case_id in PredictingClient.predictions:
            case["prediction"] = {"model_version": 1}
        return case

    def prediction(self, case_id):
        return PredictingClient.predictions[case_id]["document"]

    def download_prediction(self, case_id, kind, path):
        if PredictingClient.download_gate is not None:
            PredictingClient.downloading.set()
            assert PredictingClient.download_gate.wait(10)
        return write_volume(PredictingClient.predictions[case_id][kind], path)

    def next_case(self, predict=True):
        return {"case": self.get_case(PredictingClient.next_id), "reason": "least sure"}

    def submit_label(self, case_id, path, author, parent_version=None):
        PredictingClient.submitted.append((case_id, read_volume(path, allow_constant=True)))
        return {"version": int(parent_version or 0) + 1, "author": author}


class GatedRunner(background.BackgroundRunner):
    """A BackgroundRunner whose worker threads wait for ``gate`` before running the tasks named in ``gated``:
    what the GUI thread did before the task ran can then be checked deterministically."""

    def __init__(self, gated=()):
        super().__init__()
        self.gated = set(gated)
        self.gate = threading.Event()
        self.started: list[str] = []

    def _run(self, handle):
        self.started.append(handle.name)
        if handle.name in self.gated:
            assert self.gate.wait(10)
        super()._run(handle)


CLASSES = [{"value": 1, "name": "Anterior", "color": [255, 0, 0]}]


def _predicting_logic(mrml_env, tmp_path, runner=None, **kwargs):
    FakeClient.calls, FakeClient.cases, FakeClient.images = [], {}, {}
    PredictingClient.predictions, PredictingClient.submitted = {}, []
    PredictingClient.download_gate = None
    PredictingClient.downloading.clear()
    logic = LabelingLogic(runner=runner, scene=mrml_env.scene, client_factory=PredictingClient,
                          work_dir=tmp_path / "work", **kwargs)
    logic.configure("127.0.0.1:9")
    return logic


def _prediction_for(case_id, volume, label, heat, regions_threshold=0.5):
    image = Volume(volumes.array_ijk(volume).astype(np.float32), **scene_checks.geometry_lps(transforms.ijk_to_ras(volume)))
    PredictingClient.predictions[case_id] = {
        "label": image.with_array(label.astype(np.uint8)), "heatmap": image.with_array(heat.astype(np.float32)),
        "document": {"model_version": 1, "classes": ["background", "Anterior"], "regions": [],
                     "flag_threshold": regions_threshold}}


def _label_and_heat(shape=(12, 12, 12)):
    label = np.zeros(shape, np.uint8)
    label[2:6, 2:6, 2:6] = 1
    heat = np.ones(shape, np.float32)
    heat[2:4, 2:4, 2:4] = 0.2                      # two low-confidence blobs of different size
    heat[8:11, 8:11, 8:10] = 0.4
    return label, heat


def _scan(scene, name):
    """A 12^3 image (1 mm voxels at the origin) with varying voxels, as the service requires."""
    return volumes.add_volume_from_array(np.arange(12 ** 3, dtype=np.int16).reshape(12, 12, 12), np.eye(4), name,
                                      scene=scene)


def _upload(logic, volume):
    logic.upload(volume)
    assert logic.runner.wait(timeout=10)
    return ownership.case_id(volume)


def test_pseudo_label_and_submit_of_a_transformed_volume(mrml_env, tmp_path):
    """After registration the volume sits under a 5 mm translation: the pseudo-label lies on the heatmap
    in world space (segment bounds 6.5..10.5 mm, not 1.5..5.5) and the submitted label is the
    prediction voxel for voxel, on the case's grid."""
    scene = mrml_env.scene
    logic = _predicting_logic(mrml_env, tmp_path)
    volume = _scan(scene, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[0, 3] = 5.0
    transform.SetMatrixTransformToParent(transforms.array_to_matrix(shift))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    case_id = _upload(logic, volume)
    label, heat = _label_and_heat()
    _prediction_for(case_id, volume, label, heat)
    got = {}
    logic.prediction_ready.connect(lambda seg, heatmap: got.update(seg=seg, heat=heatmap))
    logic.pseudo_label(volume)
    assert logic.runner.wait(timeout=20) and got
    bounds = [0.0] * 6
    got["seg"].GetRASBounds(bounds)
    assert np.allclose(bounds, [6.5, 10.5, 1.5, 5.5, 1.5, 5.5])
    assert np.allclose(transforms.ijk_to_world_ras(got["heat"]), transforms.ijk_to_world_ras(volume))
    low = np.argwhere(volumes.array_ijk(got["heat"]) < 0.3)    # the heatmap's blob inside the segment, in mm
    world = (transforms.ijk_to_world_ras(got["heat"]) @ np.c_[low, np.ones(len(low))].T)[:3]
    assert world.min(axis=1)[0] > bounds[0] and world.max(axis=1)[0] < bounds[1]

    logic.submit(volume, got["seg"], author="test")
    assert logic.runner.wait(timeout=20)
    (submitted_case, submitted), = PredictingClient.submitted
    assert submitted_case == case_id
    assert np.array_equal(submitted.array, label)
    assert np.allclose(submitted.ijk_to_ras, transforms.ijk_to_ras(volume), atol=1e-9)   # the case's own grid
    logic.shutdown()


def test_closing_the_scene_forgets_the_prediction_and_drops_late_results(mrml_env, tmp_path):
    scene = mrml_env.scene
    logic = _predicting_logic(mrml_env, tmp_path)
    volume = _scan(scene, "first")
    first_id = volume.GetID()
    label, heat = _label_and_heat()
    _prediction_for(_upload(logic, volume), volume, label, heat)
    logic.min_region_voxels = 1
    logic.pseudo_label(volume)
    assert logic.runner.wait(timeout=20)
    assert logic.prediction is not None and len(logic.regions) == 2
    emitted = []
    logic.regions_changed.connect(emitted.append)

    scene.Clear(0)                                           # File > Close Scene
    assert logic.prediction is None and logic.regions == [] and emitted == [[]]
    # Node IDs restart: the next scene's first volume has the old one's ID, and nothing attaches to it.
    second = _scan(scene, "second")
    assert second.GetID() == first_id
    assert logic.go_to_region(0, second) is None
    logic.set_threshold(0.3)
    assert not logic.is_busy("regions") and logic.regions == []

    # A prediction still downloading when the scene closes does not land in the next scene.
    _prediction_for(_upload(logic, second), second, label, heat)
    PredictingClient.download_gate = threading.Event()
    statuses = []
    logic.status.connect(statuses.append)
    logic.pseudo_label(second)
    assert PredictingClient.downloading.wait(10)
    scene.Clear(0)
    PredictingClient.download_gate.set()
    assert logic.runner.wait(timeout=20)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert ownership.non_case_volume_ids(scene) == [] and logic.prediction is None
    assert any("scene was closed" in s for s in statuses)
    seen = len(emitted)
    logic.shutdown()
    scene.Clear(0)                                           # no observer left after shutdown
    assert len(emitted) == seen


def test_regions_are_found_off_the_gui_thread_for_the_latest_threshold(mrml_env, tmp_path):
    from SynergyPLLib.common.regions import RegionParams, flag_regions

    runner = GatedRunner(gated={"regions"})
    logic = _predicting_logic(mrml_env, tmp_path, runner=runner)
    scene = mrml_env.scene
    volume = volumes.add_volume_from_array(np.zeros((12, 12, 12), np.int16), np.eye(4), "scan", scene=scene)
    label, heat = _label_and_heat()
    classes = terminology.classes_from_dicts(CLASSES)
    segmentation = segmentations.labelmap_to_segmentation(label, volume, classes, scene=scene)
    heatmap = heatmap_layer.show_heatmap(heat, volume, scene=scene)
    logic.min_region_voxels = 1
    start = flag_regions(heat, label, np.eye(4), ["background", "Anterior"], RegionParams(0.5, 1))
    start[1].reviewed = True                                  # the 0.4 blob (ranked second)
    assert logic.restore(volume, segmentation, heatmap, json.dumps([r.to_dict() for r in start]), 0.5)
    before = [r.to_dict() for r in logic.regions]

    logic.set_threshold(0.45, heatmap_node=heatmap)          # returns at once: nothing computed here
    assert heatmap.GetDisplayNode().GetUpperThreshold() == pytest.approx(0.45)
    assert [r.to_dict() for r in logic.regions] == before and logic.is_busy("regions")
    logic.set_threshold(0.3)                                  # the slider moves on meanwhile
    logic.set_threshold(0.42)
    runner.gate.set()
    assert runner.wait(timeout=20)
    expected = flag_regions(heat, label, np.eye(4), ["background", "Anterior"], RegionParams(0.42, 1))
    assert [(r.voxel_count, r.bbox_ijk) for r in logic.regions] == [(r.voxel_count, r.bbox_ijk) for r in expected]
    assert logic.regions_threshold == pytest.approx(0.42)
    assert [r.reviewed for r in logic.regions] == [False, True]     # unchanged regions keep their tick
    assert runner.started.count("regions") == 2                     # 0.45, then only the latest (0.42)
    logic.shutdown()


def test_upload_and_submit_write_their_gzip_nrrd_in_the_task(mrml_env, oblique_geometry, tmp_path):
    runner = GatedRunner(gated={"upload", "submit"})
    logic = _predicting_logic(mrml_env, tmp_path, runner=runner)
    logic.check_connection()
    assert runner.wait(timeout=10)
    image = Volume(np.random.default_rng(1).integers(-1000, 2000, (20, 24, 12)).astype(np.int16), **oblique_geometry)
    volume = volumes.add_volume_from_array(image.array, image.ijk_to_ras, "ct", scene=mrml_env.scene)

    logic.upload(volume)
    assert logic.is_busy("upload") and not list((tmp_path / "work").rglob("*.nrrd"))   # not on the GUI thread
    runner.gate.set()
    assert runner.wait(timeout=20)
    uploaded = tmp_path / "uploaded.nrrd"
    uploaded.write_bytes(FakeClient.images[ownership.case_id(volume)])
    again = read_volume(uploaded)
    assert np.array_equal(again.array, image.array) and again.same_geometry(image, tol=1e-9) is None

    label = np.zeros(image.shape, np.uint8)
    label[3:9, 4:15, 2:7] = 1
    segmentation = segmentations.labelmap_to_segmentation(label, volume, terminology.classes_from_dicts(CLASSES), scene=mrml_env.scene)
    runner.gate.clear()
    logic.submit(volume, segmentation, author="test")
    assert logic.is_busy("submit") and not list((tmp_path / "work").rglob("*-label.nrrd"))
    runner.gate.set()
    assert runner.wait(timeout=20)
    (_, submitted), = PredictingClient.submitted
    assert np.array_equal(submitted.array, label) and submitted.same_geometry(image, tol=1e-9) is None
    logic.shutdown()


def test_reviewed_ticks_come_back_with_the_volume_and_with_a_saved_scene(mrml_env, tmp_path):
    scene, slicer = mrml_env.scene, mrml_env.slicer
    logic = _predicting_logic(mrml_env, tmp_path)
    logic.min_region_voxels = 1
    volume = _scan(scene, "scan")
    label, heat = _label_and_heat()
    _prediction_for(_upload(logic, volume), volume, label, heat)
    got = {}
    logic.prediction_ready.connect(lambda seg, heatmap: got.update(seg=seg, heat=heatmap))
    logic.pseudo_label(volume)
    assert logic.runner.wait(timeout=20) and len(logic.regions) == 2
    logic.set_reviewed(1)
    ticks = [r.reviewed for r in logic.regions]
    assert ticks == [False, True]

    logic.clear_prediction()                                  # another volume chosen, then this one again
    assert logic.restore(volume, got["seg"], got["heat"], "[]", 0.5)
    assert [r.reviewed for r in logic.regions] == ticks

    # Saved to disk, loaded into a fresh scene, restored by a fresh panel.
    folder = tmp_path / "scene"
    folder.mkdir()
    for node, name in ((volume, "scan.nrrd"), (got["heat"], "heat.nrrd"), (got["seg"], "seg.seg.nrrd")):
        node.AddDefaultStorageNode()
        node.GetStorageNode().SetFileName(str(folder / name))
        assert node.GetStorageNode().WriteData(node)
    scene.SetURL(str(folder / "scene.mrml"))
    assert scene.Commit()
    loaded = slicer.vtkMRMLScene()
    loaded.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    loaded.SetURL(str(folder / "scene.mrml"))
    loaded.Import()
    fresh = LabelingLogic(scene=loaded, client_factory=PredictingClient, work_dir=tmp_path / "fresh")
    nodes = {loaded.GetNthNode(i).GetName(): loaded.GetNthNode(i) for i in range(loaded.GetNumberOfNodes())}
    assert fresh.restore(nodes["scan"], nodes[got["seg"].GetName()], nodes[got["heat"].GetName()], "[]", 0.5)
    assert [r.reviewed for r in fresh.regions] == ticks
    assert fresh.threshold == 0.5 and not fresh.is_busy("regions")
    fresh.shutdown()
    loaded.Clear(1)
    logic.shutdown()


def test_choosing_a_volume_shows_its_prediction_again_or_forgets_it(mrml_env, tmp_path):
    """What the panel asks when another volume is chosen (decided by the logic, not the widget)."""
    scene = mrml_env.scene
    logic = _predicting_logic(mrml_env, tmp_path)
    logic.min_region_voxels = 1
    volume, other = _scan(scene, "scan"), _scan(scene, "other")
    label, heat = _label_and_heat()
    case_id = _upload(logic, volume)
    _prediction_for(case_id, volume, label, heat)
    assert logic.case_id_of(volume) == case_id and logic.case_id_of(other) is None and logic.case_id_of(None) is None
    got = {}
    logic.prediction_ready.connect(lambda seg, heatmap: got.update(seg=seg, heat=heatmap))
    logic.pseudo_label(volume)
    assert logic.runner.wait(timeout=20) and len(logic.regions) == 2
    assert logic.would_lose_edits(got["seg"]) and not logic.would_lose_edits(None)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert not logic.would_lose_edits(empty)

    assert not logic.show_volume(volume, got["seg"], got["heat"], 0.5)       # already shown: nothing to do
    assert not logic.show_volume(other, None, None, 0.5)                      # nothing made for it: forget
    assert logic.prediction is None and logic.regions == []
    assert logic.show_volume(volume, got["seg"], got["heat"], 0.5)            # back: shown again
    assert logic.prediction.volume_id == volume.GetID() and len(logic.regions) == 2
    logic.shutdown()


def test_restore_never_raises_on_a_scene_it_cannot_use(fake_logic, mrml_env):
    scene = mrml_env.scene
    volume = _volume(scene, "scan", 0)
    classes = terminology.classes_from_dicts(CLASSES)
    segmentation = segmentations.labelmap_to_segmentation(np.ones((4, 5, 6), np.uint8), volume, classes, scene=scene)
    heatmap = heatmap_layer.show_heatmap(np.ones((4, 5, 6), np.float32), volume, scene=scene)
    segmentation.SetAttribute(attributes.REGIONS_ATTRIBUTE, "{not json")
    assert fake_logic.restore(volume, segmentation, heatmap, "[]", 0.5) is False
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no voxels")
    segmentation.RemoveAttribute(attributes.REGIONS_ATTRIBUTE)
    assert fake_logic.restore(volume, segmentation, empty, "[]", 0.5) is False
    assert fake_logic.restore(volume, segmentation, heatmap, '[{"rank": "x"}]', 0.5) is False
    assert fake_logic.restore(volume, segmentation, heatmap, "[]", 0.5) is True


def test_next_case_shows_the_case_and_fits_the_views(mrml_env, tmp_path):
    from SynergyPLModuleLib.messages import default_slice_logics

    assert default_slice_logics() == []                      # outside the Slicer application
    scene = mrml_env.scene
    logic = _predicting_logic(mrml_env, tmp_path, slice_logics=lambda: mrml_env.slice_logics)
    source = volumes.add_volume_from_array(np.arange(12 ** 3, dtype=np.int16).reshape(12, 12, 12),
                                        np.diag([-2.0, -2.0, 3.0, 1.0]), "elsewhere", scene=scene)
    PredictingClient.next_id = _upload(logic, source)
    scene.RemoveNode(source)                                  # the next case is not in the scene yet
    for slice_node in scene_checks.slice_nodes(scene):
        slice_node.SetFieldOfView(2.0, 2.0, 1.0)
    navigation.center_slice_views_on((300.0, 300.0, 300.0), scene)
    loaded = []
    logic.next_case_loaded.connect(lambda volume, case: loaded.append(volume))
    logic.next_case()
    assert logic.runner.wait(timeout=20) and loaded
    volume = loaded[0]
    assert ownership.case_id(volume) == PredictingClient.next_id
    centre = (transforms.ijk_to_world_ras(volume) @ np.array([5.5, 5.5, 5.5, 1.0]))[:3]
    for composite in slice_views.slice_composite_nodes(scene):
        assert composite.GetBackgroundVolumeID() == volume.GetID()
    for slice_node in scene_checks.slice_nodes(scene):
        assert max(slice_node.GetFieldOfView()[:2]) >= 24.0, slice_node.GetName()
        offset = np.asarray(navigation.slice_view_center_ras(slice_node)) - centre
        normal = transforms.matrix_to_array(slice_node.GetSliceToRAS())[:3, 2]
        assert np.allclose(offset - normal * (offset @ normal), 0.0, atol=1e-6), slice_node.GetName()
    logic.shutdown()
