"""The panel's *Start local server* path needs no typed token: the server is started with the panel's
own command (``server.serve_command``, no token), and the logic reads the token from the project folder
the panel knows. Real ``synergypl serve`` on 127.0.0.1, real client, real MRML (slicer-core)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import selftest
from SynergyPLModuleLib import local_server as server
from SynergyPLModuleLib.logic import LabelingLogic
from SynergyPLModuleLib.scene import files, ownership

from SynergyPLLib.client import SynergyPLClient

pytestmark = pytest.mark.data

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def panel_server(hippocampus_dir, tmp_path_factory):
    """``synergypl serve`` started as the panel starts it; yields (command, process)."""
    import sys

    from SynergyPLLib.service.domain.project_init import init_project

    project = tmp_path_factory.mktemp("panel") / "project"
    init_project(project, hippocampus_dir, labeled=2, limit=3, quiet=True).close()
    command = server.serve_command(sys.executable, project, port=server.free_port(0), log_level="warning")
    assert "--token" not in command.as_list() and "SYNERGYPL_TOKEN" not in command.environment
    env = {**os.environ, **command.environment, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("SYNERGYPL_TOKEN", None)
    log = open(project.parent / "serve.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(command.as_list(), env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        probe = SynergyPLClient(command.url, timeout=5)  # /api/health needs no token
        deadline = time.monotonic() + 90
        while True:
            try:
                probe.health()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((project.parent / "serve.log").read_text()[-2000:]) from None
                time.sleep(0.3)
        # The first /api/info probes the device in a fresh Python (imports torch): on a busy machine that
        # can pass the panel's 15 s connect timeout, which is not what these tests are about.
        SynergyPLClient(command.url, timeout=300, project=command.project).info()
        yield command, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _connect(logic: LabelingLogic) -> selftest.Recorder:
    """*Check connection*, as the panel does; returns what the logic reported."""
    record = selftest.Recorder(logic)
    logic.check_connection()
    assert logic.runner.wait(timeout=60)
    return record


def test_start_local_server_connects_and_uploads_without_a_typed_token(panel_server, mrml_env, hippocampus_dir,
                                                                         tmp_path):
    command, _process = panel_server
    logic = LabelingLogic(scene=mrml_env.scene, work_dir=tmp_path / "work", poll_seconds=0.2)
    try:
        logic.configure(command.url, "", project=command.project)  # what the panel does for its own server
        record = _connect(logic)
        assert record.errors == [] and logic.server is not None and logic.server.project == "Hippocampus"
        volume = files.read_volume_file(hippocampus_dir / "imagesTr" / "hippocampus_050.nii.gz", scene=mrml_env.scene)
        logic.upload(volume)
        assert logic.runner.wait(timeout=120)
        assert record.errors == [], record.errors
        assert ownership.case_id(volume, logic.server.key)
    finally:
        logic.shutdown()


def test_without_the_project_folder_the_token_is_asked_for(panel_server, mrml_env, tmp_path):
    from SynergyPLLib.client import token_for_project

    command, _process = panel_server
    logic = LabelingLogic(scene=mrml_env.scene, work_dir=tmp_path / "work", poll_seconds=0.2)
    try:
        logic.configure(command.url)  # a URL typed in, no token, no folder
        record = _connect(logic)
        assert logic.server is None and record.errors[-1][0] == "connect"
        assert "needs a token" in record.errors[-1][1] and "synergypl token --project" in record.errors[-1][1]
        logic.configure(command.url, token_for_project(command.project))  # the token typed in
        record = _connect(logic)
        assert record.errors == [] and logic.server is not None
    finally:
        logic.shutdown()
