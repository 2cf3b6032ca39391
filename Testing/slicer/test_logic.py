"""The panel's Qt-free plumbing: background tasks, signals, error messages, the local-server command,
and logic flows that need no server (a stand-in client that records calls)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from SynergyPLModuleLib import mrml, server, tasks
from SynergyPLModuleLib.logic import LabelingLogic, TrainingProgress, describe_error
from SynergyPLModuleLib.signals import Signal

from SynergyPLLib import client as real_client
from SynergyPLLib.engine.io import Volume, write_volume


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
    runner = tasks.TaskRunner()
    busy, delivered = [], []
    runner.busy_changed.connect(busy.append)
    main = threading.get_ident()

    def work(ctx):
        assert threading.get_ident() != main
        ctx.report(1)
        ctx.report(2)
        return "result"

    handle = runner.submit(tasks.Task("ok", work, on_done=lambda r: delivered.append(("done", r, threading.get_ident())),
                                      on_progress=lambda p: delivered.append(("progress", p, threading.get_ident()))))
    failing = runner.submit(tasks.Task("bad", lambda ctx: 1 / 0, on_error=lambda e: delivered.append(("error", type(e)))))
    assert runner.wait(timeout=10)
    assert handle.finished and handle.result == "result" and failing.error is not None
    assert [d for d in delivered if d[0] == "progress"] == [("progress", 1, main), ("progress", 2, main)]
    assert ("done", "result", main) in delivered and ("error", ZeroDivisionError) in delivered
    assert busy == [True, False]


def test_task_runner_cancel_and_unhandled_errors():
    runner = tasks.TaskRunner()
    unhandled = []
    runner.unhandled_error.connect(lambda name, exc: unhandled.append((name, type(exc))))
    started = threading.Event()

    def slow(ctx):
        started.set()
        while not ctx.sleep(0.01):
            pass
        ctx.check_cancelled()

    handle = runner.submit(tasks.Task("slow", slow))
    started.wait(5)
    assert runner.busy and not runner.wait(handle, timeout=0.1)
    handle.cancel()
    assert runner.wait(handle, timeout=5)
    assert unhandled == [("slow", tasks.TaskCancelled)]
    broken = runner.submit(tasks.Task("broken callback", lambda ctx: 1, on_done=lambda r: 1 / 0))
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
        FakeClient.cases[case_id] = {"id": case_id, "has_dicom": False, "shape": [4, 5, 6], "spacing": [1, 1, 1],
                                     "origin": [0, 0, 0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
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
    return mrml.add_volume_from_array(data, np.diag([-1.0, -1.0, 1.0, 1.0]), name, scene=scene)


def test_upload_is_done_once_and_a_taken_id_is_adopted_only_for_the_same_voxels(fake_logic, mrml_env):
    assert fake_logic.url == "http://127.0.0.1:9"
    busy = []
    fake_logic.busy_changed.connect(lambda action, b: busy.append((action, b)))
    first = _volume(mrml_env.scene, "scan", 0)
    fake_logic.upload(first)
    assert fake_logic.runner.wait(timeout=10)
    assert mrml.case_id(first) == "scan"
    fake_logic.upload(first)                      # remembered: no second upload
    assert fake_logic.runner.wait(timeout=10)
    assert [c for c in FakeClient.calls if c[0] == "upload"] == [("upload", "scan")]

    same = _volume(mrml_env.scene, "scan", 0)     # the same image loaded again: adopts the case
    fake_logic.upload(same)
    assert fake_logic.runner.wait(timeout=10)
    assert mrml.case_id(same) == "scan"
    other = _volume(mrml_env.scene, "scan", 1)    # another image with the same name: a fresh id
    fake_logic.upload(other)
    assert fake_logic.runner.wait(timeout=10)
    assert mrml.case_id(other) == "scan-2"
    assert not fake_logic.is_busy() and busy[-1] == ("upload", False)
    assert {a for a, _ in busy} == {"connect", "upload"}


def test_restore_from_a_saved_scene_keeps_regions_and_reviewed_ticks(fake_logic, mrml_env):
    scene = mrml_env.scene
    volume = _volume(scene, "scan", 0)
    label = np.zeros((4, 5, 6), np.uint8)
    label[1:3, 1:4, 1:5] = 1
    classes = mrml.classes_from_dicts([{"value": 1, "name": "Anterior"}])
    segmentation = mrml.labelmap_to_segmentation(label, volume, classes, scene=scene)
    heat = np.ones((4, 5, 6), np.float32)
    heat[0:2, 0:2, 0:2] = 0.2
    heat[3, 4, 3:6] = 0.1
    heatmap = mrml.show_heatmap(heat, volume, scene=scene)
    from SynergyPLModuleLib.regions import flag_regions

    regions = flag_regions(heat, label, mrml.ijk_to_ras(volume), ["background", "Anterior"], 0.5, min_voxels=1)
    regions[1].reviewed = True
    saved = json.dumps([r.to_dict() for r in regions])

    assert fake_logic.restore(volume, segmentation, heatmap, saved, 0.5)
    assert [r.reviewed for r in fake_logic.regions] == [False, True]
    fake_logic.set_threshold(0.5, force=True)
    assert [r.reviewed for r in fake_logic.regions] == [False, True]
    fake_logic.min_region_voxels = 1
    fake_logic.set_threshold(0.15)                 # only the 0.1 voxels remain: that region was reviewed
    assert [(r.voxel_count, r.reviewed) for r in fake_logic.regions] == [(3, True)]
    region = fake_logic.go_to_region(0)
    assert np.allclose(mrml.slice_view_center_ras(mrml.slice_nodes(scene)[0]),
                       mrml.region_center_ras(region.to_dict(), volume))


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
    image = Volume(mrml.array_ijk(volume), **mrml.geometry_lps(mrml.ijk_to_ras(volume)))
    assert fake_logic._same_voxels(write_volume(image, tmp_path / "same.nrrd"), volume)
    image.array[0, 0, 0] += 1
    assert not fake_logic._same_voxels(write_volume(image, tmp_path / "other.nrrd"), volume)
