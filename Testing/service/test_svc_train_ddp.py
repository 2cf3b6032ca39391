"""A project with ``training: gpus: 2`` trains its rounds with torchrun (2 gloo processes on this CPU
machine): the same progress events, model versions and cancel as a single-process round."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import torch
import yaml
from svc_support import TINY_ITERATIONS, Server

from SynergyPLLib.service.jobs import train_ddp
from SynergyPLLib.service.jobs.train_ddp import SPEC_NAME, torchrun_command, training_processes
from SynergyPLLib.service.store.project import ProjectConfig, TrainingOptions


def _use_gpus(project: Path, n: int) -> None:
    path = project / "project.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["training"] = {"gpus": n}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _processes_with(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmd:
                pids.append(int(entry))
    return pids


def test_setting_and_command_line(tmp_path):
    assert ProjectConfig.model_fields["training"].default_factory().gpus == 1
    cfg = ProjectConfig.model_construct(training=TrainingOptions())
    assert training_processes(cfg, "cuda") == 1
    cfg = ProjectConfig.model_construct(training=TrainingOptions.model_validate({"gpus": 2}))
    assert training_processes(cfg, "cpu") == 2
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="training.gpus: 2, but this machine has"):
            training_processes(cfg, "cuda")
    with pytest.raises(ValueError):
        TrainingOptions.model_validate({"gpus": 0})
    cmd = torchrun_command(4, tmp_path / SPEC_NAME)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=4" in cmd and "--standalone" in cmd
    assert cmd[cmd.index("-m", 3) + 1] == train_ddp.__name__ and cmd[-2:] == ["--spec", str(tmp_path / SPEC_NAME)]


def test_round_on_two_processes_progress_and_cancel(project):
    _use_gpus(project, 2)
    with Server(project) as srv:
        c = srv.client()
        job = c.train(iterations=TINY_ITERATIONS)
        events = list(c.events(job["id"], timeout=240))
        assert events[-1]["event"] == "end" and events[-1]["data"]["status"] == "done", events[-3:]
        progress = [e["data"] for e in events if e["event"] == "progress" and "iteration" in e["data"]]
        assert progress and progress[-1]["total"] == TINY_ITERATIONS
        assert any(p["val_dice"] is not None for p in progress) and any(p["losses"] for p in progress)
        done = c.job(job["id"])
        assert done["model_version"] == 1 and done["result"]["metrics"]["iterations"] == TINY_ITERATIONS
        out = project / "models" / f"job-{job['id']:06d}"
        state = torch.load(out / "state.pt", map_location="cpu", weights_only=False)
        assert state["world_size"] == 2 and state["iteration"] == TINY_ITERATIONS  # it did run on 2 ranks

        # cancel reaches both ranks through rank 0; they stop at the same iteration and leave
        job2 = c.train(iterations=5000)
        deadline, j = time.monotonic() + 180, {}
        while time.monotonic() < deadline:
            j = c.job(job2["id"], wait=5, since=c.job(job2["id"])["updated_at"])
            if j["status"] == "running" and (j["progress"].get("iteration") or 0) >= 2:
                break
        assert j["status"] == "running", j
        spec = str(project / "models" / f"job-{job2['id']:06d}" / SPEC_NAME)
        assert len(_processes_with(spec)) >= 3  # torchrun and its 2 ranks
        c.cancel_job(job2["id"])
        end = c.wait_job(job2["id"], timeout=90, check=False)
        assert end["status"] == "cancelled" and end["model_version"] is None, end
        stopped_at = int(re.search(r"cancelled at iteration (\d+)", end["error"]).group(1))
        state2 = torch.load(Path(spec).parent / "state.pt", map_location="cpu", weights_only=False)
        assert state2["iteration"] == stopped_at and state2["ema_updates"] == stopped_at
        assert 2 <= stopped_at < 5000
        deadline = time.monotonic() + 20
        while _processes_with(spec) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes_with(spec), "ranks left running after cancel"
        assert [m["version"] for m in c.models()] == [1]

        # the service killed during a round: its worker, torchrun and both ranks go with it (no orphans)
        job3 = c.train(iterations=5000)
        deadline = time.monotonic() + 180
        spec3 = str(project / "models" / f"job-{job3['id']:06d}" / SPEC_NAME)
        while time.monotonic() < deadline and len(_processes_with(spec3)) < 3:
            time.sleep(0.3)
        assert len(_processes_with(spec3)) >= 3
        srv.kill9()
        deadline = time.monotonic() + 30
        while _processes_with(spec3) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes_with(spec3), "torchrun or its ranks outlived the killed service"


def test_failed_distributed_round_says_why(tmp_path):
    """A rank's error (here: a missing image) reaches the job's error message, not only the log."""
    from SynergyPLLib.engine.config import profile_config
    from SynergyPLLib.engine.data import CaseSpec
    from SynergyPLLib.service.jobs.train_ddp import run_distributed

    cfg = profile_config("cpu")
    cfg.train.method = "supervised"
    missing = CaseSpec("gone", tmp_path / "gone.nii.gz", tmp_path / "gone_label.nii.gz")
    with pytest.raises(RuntimeError, match=r"failed \(torchrun exit status [1-9]\d*\): rank [01]: .*gone\.nii\.gz"):
        run_distributed(2, cfg, [missing], [], [missing], tmp_path / "out", device="cpu")

