"""End to end: the panel's logic on real MRML (slicer-core) against a real service process on 127.0.0.1
with the hippocampus data. No Qt: the logic's background tasks are delivered by polling, as the
panel's QTimer does.

The server fixture creates a small project (6 cases, 4 labeled), starts ``synergypl serve`` on a free
port and trains a first short round so that there is a model to pseudo-label with. Set
SYNERGYPL_E2E_ITERATIONS to change the length of that round (default 10).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scene_checks
import selftest
from SynergyPLModuleLib import grids
from SynergyPLModuleLib.local_server import free_port
from SynergyPLModuleLib.logic import LabelingLogic
from SynergyPLModuleLib.scene import (
    files,
    navigation,
    ownership,
    segmentations,
    slice_views,
    terminology,
    transforms,
    volumes,
)

from SynergyPLLib.client import SynergyPLClient
from SynergyPLLib.engine.io import read_volume

pytestmark = [pytest.mark.data, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
INITIAL_ITERATIONS = int(os.environ.get("SYNERGYPL_E2E_ITERATIONS", "10"))


@pytest.fixture(scope="module")
def live_server(hippocampus_dir, tmp_path_factory):
    """A real ``synergypl serve`` process with a trained model; yields (url, project folder)."""
    root = tmp_path_factory.mktemp("e2e")
    project = root / "project"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "SynergyPLLib.cli", "init", "--project", str(project),
                    "--from", str(hippocampus_dir), "--labeled", "4", "--cases", "6"],
                   check=True, env=env, cwd=root, capture_output=True, timeout=300)
    port = free_port(0)
    log = open(root / "serve.log", "w")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen([sys.executable, "-m", "SynergyPLLib.cli", "serve", "--project", str(project),
                                "--port", str(port), "--log-level", "warning"],
                               env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    probe = SynergyPLClient(url, timeout=10)  # /api/health needs no token
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                probe.health()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start: {(root / 'serve.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        client = SynergyPLClient(url, timeout=10, project=project)  # its token, as the panel reads it
        job = client.train(iterations=INITIAL_ITERATIONS)
        client.wait_job(job["id"], timeout=1800)
        yield url, project
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def logic(mrml_env, tmp_path):
    made = LabelingLogic(scene=mrml_env.scene, work_dir=tmp_path / "work", poll_seconds=0.5)
    yield made
    made.shutdown()


def _wait(logic: LabelingLogic, timeout: float = 600.0) -> bool:
    return logic.runner.wait(timeout=timeout)


def test_labeling_loop_against_a_live_server(live_server, logic, mrml_env, hippocampus_dir, tmp_path):
    url, project = live_server
    logic.configure(url, project=project)
    image_path = hippocampus_dir / "imagesTr" / "hippocampus_050.nii.gz"
    volume = files.read_volume_file(image_path, scene=mrml_env.scene)
    started = time.monotonic()
    out = selftest.run_labeling_loop(logic, volume, tmp_path / "export", lambda t: _wait(logic, t),
                                     retrain_iterations=2, log=lambda m: print(f"{time.monotonic() - started:7.1f} s  {m}"))
    record = out["recorder"]
    client = SynergyPLClient(url, project=project)

    # Every action ended with busy False, and there were no errors.
    assert record.errors == []
    actions = {action for action, _ in record.busy}
    assert {"connect", "upload", "predict", "submit", "load_label", "train"} <= actions
    for action in actions:
        assert [busy for a, busy in record.busy if a == action][-1] is False, action

    # The server holds the case with the volume's geometry, and the label that was submitted.
    case = client.get_case(out["case_id"])
    matrix, shape = grids.case_grid(case)
    assert shape == tuple(volume.GetImageData().GetDimensions())
    assert np.allclose(matrix, transforms.ijk_to_ras(volume), atol=1e-6)
    assert case["latest_label"]["version"] == out["label_version"]["version"]
    label_file = client.download_label(out["case_id"], "latest", tmp_path / "latest.nrrd")
    server_label = read_volume(label_file, allow_constant=True)
    assert np.array_equal(server_label.array, out["expected"])

    # The heatmap in Slicer is the server's heatmap, voxel for voxel, on the volume's geometry.
    heat_file = client.download_prediction(out["case_id"], "heatmap", tmp_path / "heat.nrrd")
    server_heat = read_volume(heat_file, allow_constant=True)
    assert np.array_equal(volumes.array_ijk(logic.scene.GetNodeByID(out["heatmap"].GetID())), server_heat.array)
    assert np.allclose(transforms.ijk_to_ras(out["heatmap"]), server_heat.ijk_to_ras, atol=1e-6)
    composite = slice_views.slice_composite_nodes(logic.scene)[0]
    assert composite.GetForegroundVolumeID() == out["heatmap"].GetID()
    assert composite.GetBackgroundVolumeID() == volume.GetID()

    # Segments carry the project's names, colours and terminology.
    info = client.info()
    summary = terminology.segment_summary(out["segmentation"])
    for segment, cls in zip(summary, [c for c in info["classes"] if c["value"] > 0], strict=True):
        assert segment["name"] == cls["name"]
        assert np.allclose(segment["color"], np.array(cls["color"]) / 255.0, atol=1e-6)
        assert f"{cls['terminology']['type']['code']}^{cls['terminology']['type']['meaning']}" in segment["terminology"]

    # The retrained model is the one pseudo-labels now come from.
    assert out["model_after"] == client.prediction(out["case_id"])["model_version"]
    assert any(p.total and p.iteration for p in record.progress)

    # The exported .seg.nrrd is a standard NRRD in LPS with the image's geometry.
    exported = read_volume(out["export_path"], allow_constant=True)
    assert exported.same_geometry(read_volume(image_path), tol=1e-5) is None
    print(f"e2e loop: {time.monotonic() - started:.1f} s")


def test_threshold_slider_recomputes_regions_like_the_engine(live_server, logic, mrml_env, hippocampus_dir):
    from SynergyPLLib.engine.inference import flag_regions
    from SynergyPLLib.engine.io import Volume

    url, project = live_server
    logic.configure(url, project=project)
    volume = files.read_volume_file(hippocampus_dir / "imagesTr" / "hippocampus_050.nii.gz", scene=mrml_env.scene)
    got: dict = {}
    logic.prediction_ready.connect(lambda seg, heat: got.update(seg=seg, heat=heat))
    logic.pseudo_label(volume)
    assert _wait(logic, 600)
    server_regions = [r.to_dict() for r in logic.regions]
    state = logic.prediction
    assert state.server_threshold is not None
    assert server_regions == [r.to_dict() for r in state.server_regions]

    logic.set_threshold(0.3, heatmap_node=got["heat"])       # found by a background task
    assert _wait(logic, 120)
    regions = logic.regions
    assert got["heat"].GetDisplayNode().GetUpperThreshold() == pytest.approx(0.3)
    reference = Volume(state.heatmap, **scene_checks.geometry_lps(transforms.ijk_to_ras(volume)))
    expected = flag_regions(reference, reference.with_array(state.label), logic.class_names(), threshold=0.3,
                            min_voxels=logic.region_params().min_voxels, max_regions=logic.region_params().max_regions)
    assert [(r.rank, r.voxel_count, r.bbox_ijk) for r in regions] == \
        [(r.rank, r.voxel_count, r.bbox_ijk) for r in expected]
    if regions:
        logic.set_reviewed(0)
        region = logic.next_region()
        for slice_node in scene_checks.slice_nodes(logic.scene):
            assert np.allclose(navigation.slice_view_center_ras(slice_node),
                               navigation.region_center_ras(region.to_dict(), volume), atol=1e-6)
        logic.set_threshold(0.3)  # unchanged: keeps the reviewed tick
        assert logic.regions[0].reviewed


def test_dicom_series_upload_then_dicom_seg_export(live_server, logic, mrml_env, dicom_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    url, project = live_server
    logic.configure(url, project=project)
    series = sorted((dicom_dir / "Study1" / "13_HCropVolume").glob("*.dcm"))
    volume = files.read_volume_file(series[0], name="HCrop DICOM", scene=mrml_env.scene)
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in series}
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(uids))  # what Slicer's DICOM module sets
    logic.dicom_files = lambda node: [uids[u] for u in node.GetAttribute("DICOM.instanceUIDs").split()]
    errors = []
    logic.error.connect(lambda action, message: errors.append((action, message)))

    logic.check_connection()
    assert _wait(logic, 60)
    label = np.zeros(tuple(volume.GetImageData().GetDimensions()), np.uint8)
    label[10:20, 15:30, 8:20] = 1
    label[20:25, 15:30, 8:20] = 2
    segmentation = segmentations.labelmap_to_segmentation(label, volume, logic.server.classes, scene=mrml_env.scene)
    submitted = []
    logic.submitted.connect(submitted.append)
    logic.submit(volume, segmentation, author="dicom test")
    assert _wait(logic, 120) and not errors, errors
    case_id = ownership.case_id(volume)
    case = SynergyPLClient(url, project=project).get_case(case_id)
    assert case["has_dicom"] and case["source_format"] != "nrrd"

    logic.export(volume, segmentation, "dicom-seg", tmp_path)
    assert _wait(logic, 120)
    if errors and "server failed" in errors[-1][1]:
        pytest.xfail(f"the service could not make the DICOM SEG (a service bug, not the panel's): {errors[-1][1]}")
    assert not errors, errors
    path = tmp_path / f"{case_id}.dcm"
    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG"
    assert len(seg.SegmentSequence) == 2
    # The server's copy of the label matches Slicer's segmentation voxel for voxel.
    server_label = read_volume(SynergyPLClient(url, project=project).download_label(case_id, "latest", tmp_path / "l.nrrd"),
                               allow_constant=True)
    mapper = grids.array_mapper(transforms.ijk_to_ras(volume), label.shape, *grids.case_grid(case))
    assert np.array_equal(server_label.array, mapper(label))


def test_refused_input_and_cancel_leave_buttons_enabled(live_server, logic, mrml_env):
    url, project = live_server
    logic.configure(url, project=project)
    record = selftest.Recorder(logic)
    flat = volumes.add_volume_from_array(np.full((8, 9, 10), 7, np.int16), np.eye(4), "constant", scene=mrml_env.scene)
    logic.upload(flat)
    assert _wait(logic, 60)
    assert record.errors and record.errors[-1][0] == "upload"
    assert "refused" in record.errors[-1][1] and "constant" in record.errors[-1][1]
    assert not logic.is_busy() and record.busy[-1] == ("upload", False)

    logic.retrain(1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # let the job reach the server, then cancel
        logic.runner.poll()
        time.sleep(0.05)
    logic.cancel_training()
    assert _wait(logic, 300)
    assert not logic.is_busy("train") and record.busy[-1] == ("train", False)
    assert any("cancel" in s.lower() for s in record.statuses[-3:]) or record.errors
    jobs = SynergyPLClient(url, project=project).jobs(kind="train", limit=1)
    assert jobs[0]["status"] in ("cancelled", "done")


def test_server_down_and_timeouts_are_reported(logic):
    record = selftest.Recorder(logic)
    logic.configure(f"http://127.0.0.1:{free_port(0)}")  # nothing listens there
    logic.check_connection()
    assert _wait(logic, 30)
    assert record.errors[-1][0] == "connect" and "cannot be reached" in record.errors[-1][1]
    assert record.busy[-1] == ("connect", False)

    # A server that accepts the connection and never answers.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        logic.configure(f"http://127.0.0.1:{listener.getsockname()[1]}")
        logic.timeout = 1.0
        logic.check_connection()
        assert _wait(logic, 30)
        assert record.errors[-1][0] == "connect" and "did not answer in time" in record.errors[-1][1]
        assert not logic.is_busy()
    finally:
        stop.set()
        thread.join(2)
        for connection in accepted:
            connection.close()
        listener.close()
