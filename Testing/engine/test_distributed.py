"""``synergypl train`` under torchrun: 2 gloo processes on CPU, real hippocampus cases (a tiny network,
16^3 patches and a few iterations keep the cost small on 2 cores).

Checked: a 2-rank run trains, selects a checkpoint that loads and predicts; both ranks end with the same
teacher (SHA-256 of the weights, logged by every rank); 2 ranks with batch B draw as many samples per step
as 1 process with batch 2B, and per epoch the ranks' shards cover the cases without overlap; a run whose
rank is killed with SIGKILL resumes from its state.pt and finishes; progress is reported once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from SynergyPLLib.engine.distributed import RANK_LOG_ENV
from SynergyPLLib.engine.inference import Predictor
from SynergyPLLib.engine.io import read_volume

REPO = Path(__file__).resolve().parents[2]
N_CASES, N_LABELED = 8, 2  # val fraction 0.25: 2 validation, 2 labeled, 4 unlabeled
TINY = {"model": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"patch_size": [16, 16, 16], "warmup_fraction": 0.0, "batch_labeled": 1, "batch_unlabeled": 2, "iterations": 6,
                  "val_every": 3, "checkpoint_every": 2, "optimizer": "adamw", "lr": 0.002, "num_threads": 1},
        "inference": {"sw_batch_size": 4}}


@pytest.fixture(scope="module")
def data(hippocampus_dir, tmp_path_factory) -> Path:
    """A Decathlon folder of the first 8 real hippocampus cases (links)."""
    meta = json.loads((hippocampus_dir / "dataset.json").read_text())
    dst = tmp_path_factory.mktemp("ddp-data")
    (dst / "imagesTr").mkdir()
    (dst / "labelsTr").mkdir()
    meta["training"] = meta["training"][:N_CASES]
    for entry in meta["training"]:
        for key in ("image", "label"):
            os.symlink((hippocampus_dir / entry[key]).resolve(), dst / entry[key])
    meta["numTraining"] = N_CASES
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


def _config(tmp: Path, **train) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg["train"].update(train)
    path = tmp / f"cfg-{len(list(tmp.glob('cfg-*')))}.json"
    path.write_text(json.dumps(cfg))
    return path


def _command(nproc: int, data: Path, config: Path, out: Path, *extra: str) -> list[str]:
    train = ["-m", "SynergyPLLib.cli", "train", "--data", str(data), "--config", str(config),
             "--labeled", str(N_LABELED), "--val-fraction", "0.25", "--out", str(out), *extra]
    if nproc == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone", *train]


def _env(log: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), RANK_LOG_ENV: str(log), "OMP_NUM_THREADS": "1"}


def _run(nproc, data, config, out, log, *extra, timeout=240) -> subprocess.CompletedProcess:
    proc = subprocess.run(_command(nproc, data, config, out, *extra), env=_env(log), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _records(log: Path) -> dict[int, list[dict]]:
    out = {}
    for f in sorted(log.glob("rank*.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out[rows[0]["rank"]] = rows
    return out


@pytest.fixture(scope="module")
def two_rank_run(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp-run")
    proc = _run(2, data, _config(tmp), tmp / "out", tmp / "log")
    return tmp, proc


def test_two_ranks_train_select_once_and_model_loads_in_infer(two_rank_run, data):
    tmp, proc = two_rank_run
    # one result and one progress bar: only rank 0 reports
    assert proc.stdout.count('"checkpoint"') == 1, proc.stdout
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["best_iteration"] in (3, 6) and 0.0 <= result["best_val_dice"] <= 1.0
    assert proc.stderr.count("validation cases") == 1
    state = torch.load(tmp / "out" / "state.pt", map_location="cpu", weights_only=False)
    assert state["iteration"] == 6 and state["ema_updates"] == 6 and state["world_size"] == 2
    assert len(state["rank_states"]) == 2
    assert not list((tmp / "out").glob("*.tmp*")), "no temporary checkpoint files left"

    recs = _records(tmp / "log")
    assert sorted(recs) == [0, 1]
    for rank, rows in recs.items():
        assert [r["iteration"] for r in rows if "final" not in r] == [1, 2, 3, 4, 5, 6], rank
    final = {rank: rows[-1] for rank, rows in recs.items()}
    assert all(f["final"] and f["iteration"] == 6 for f in final.values())
    assert final[0]["teacher_sha256"] == final[1]["teacher_sha256"], "the EMA teacher differs between ranks"
    assert final[0]["student_sha256"] == final[1]["student_sha256"], "the student differs between ranks"

    predictor = Predictor.from_checkpoint(tmp / "out" / "model.pt")
    ckpt = torch.load(tmp / "out" / "model.pt", map_location="cpu", weights_only=False)
    assert ckpt["metrics"]["best_iteration"] == result["best_iteration"]
    image = read_volume(sorted((data / "imagesTr").iterdir())[0])
    pred = predictor.predict(image, heatmap=True)
    assert pred.label.shape == image.shape and pred.heatmap is not None
    assert set(map(int, pred.label.array.ravel()[::97])) <= {0, 1, 2}


def test_global_batch_and_shards(two_rank_run, data, tmp_path):
    """2 ranks x batch B == 1 process x batch 2B samples per step; per epoch the shards partition the cases."""
    tmp, _ = two_rank_run
    two = _records(tmp / "log")
    cfg = _config(tmp_path, iterations=2, val_every=2, checkpoint_every=2, batch_labeled=2, batch_unlabeled=4)
    _run(1, data, cfg, tmp_path / "out", tmp_path / "log")
    one = _records(tmp_path / "log")[0]
    split = _split(data)
    steps_one = [r for r in one if "final" not in r]
    assert all(r["world_size"] == 1 for r in steps_one)
    for name in ("labeled", "unlabeled"):
        per_step = defaultdict(int)
        for rows in two.values():
            for r in rows:
                if "final" not in r:
                    per_step[r["iteration"]] += len(r[name])
        assert set(per_step.values()) == {len(steps_one[0][name])}, (name, per_step)
        assert len(steps_one[0][name]) == 2 * len(two[0][0][name])

        cases = split[name]
        assert {c for r in steps_one for c in r[name]} <= cases  # the 1-process run draws from the same split
        by_epoch = defaultdict(list)
        for rows in two.values():
            for r in rows:
                if "final" not in r:
                    by_epoch[r[f"{name}_epoch"]].extend(r[name])
        assert len(by_epoch) >= 2
        for epoch, ids in by_epoch.items():
            assert sorted(ids) == sorted(cases), (name, epoch, ids)  # each case once per epoch

def _split(data: Path) -> dict[str, set[str]]:
    """The cases `synergypl train --seed 0` trains on (its permutation, validation first, then labeled)."""
    import numpy as np

    from SynergyPLLib.engine.data import load_decathlon

    _, cases = load_decathlon(data)
    ids = [cases[i].id for i in np.random.default_rng(0).permutation(len(cases))]
    return {"labeled": set(ids[2:2 + N_LABELED]), "unlabeled": set(ids[2 + N_LABELED:])}


def test_resume_after_kill9_of_one_rank(data, tmp_path):
    cfg = _config(tmp_path, iterations=60, val_every=30, checkpoint_every=3)
    out, log = tmp_path / "out", tmp_path / "log"
    proc = subprocess.Popen(_command(2, data, cfg, out), env=_env(log), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, saved = time.monotonic() + 180, 0
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "state.pt").exists():
                saved = torch.load(out / "state.pt", map_location="cpu", weights_only=False)["iteration"]
                if saved >= 6:
                    break
            time.sleep(0.2)
        assert proc.poll() is None and saved >= 6, f"the run ended or stalled before iteration 6: {saved}"
        victim = next(r["pid"] for r in _records(log)[1] if "pid" in r)
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, "torchrun must fail when a rank is killed"
    state = torch.load(out / "state.pt", map_location="cpu", weights_only=False)
    k = state["iteration"]
    assert 6 <= k < 60 and k % 3 == 0 and state["world_size"] == 2

    res = _run(2, data, cfg, out, tmp_path / "log2", "--resume")
    recs = _records(tmp_path / "log2")
    for rank, rows in recs.items():
        its = [r["iteration"] for r in rows if "final" not in r]
        assert its == list(range(k + 1, 61)), (rank, its[:3], k)
    final = [rows[-1] for rows in recs.values()]
    assert final[0]["teacher_sha256"] == final[1]["teacher_sha256"]
    after = torch.load(out / "state.pt", map_location="cpu", weights_only=False)
    assert after["iteration"] == 60 and after["ema_updates"] == 60
    assert json.loads(res.stdout[res.stdout.index("{"):])["best_iteration"] in (30, 60)
    Predictor.from_checkpoint(out / "model.pt")


def test_cpu_amp_wiring_and_default_off(hippocampus_dir, tmp_path):
    """amp=False (the cpu profile) trains in float32; amp=True on CPU autocasts the forward to bfloat16."""
    from SynergyPLLib.engine.config import EngineConfig, profile_config
    from SynergyPLLib.engine.data import Preprocessor, load_cases, load_decathlon
    from SynergyPLLib.engine.trainer import Trainer

    assert profile_config("cpu").train.amp is False and profile_config("gpu").train.amp is True
    classes, cases = load_decathlon(hippocampus_dir)
    cfg = EngineConfig.from_dict({**TINY, "classes": classes})
    cfg.train.method = "mean_teacher"
    loaded = load_cases(cases[:3], Preprocessor(cfg.preprocess), cfg.num_classes)
    x = torch.zeros(1, 1, 16, 16, 16)
    for amp, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        cfg.train.amp = amp
        tr = Trainer(cfg, loaded[:1], loaded[1:2], loaded[2:], tmp_path / str(amp), device="cpu")
        seen: list = []
        hook = tr.student.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        tr.train_net(x)
        hook.remove()
        assert seen == [dtype] and tr.train_net(x).dtype == torch.float32  # losses in float32
        assert not tr.scaler.is_enabled()  # GradScaler only on CUDA
        losses = tr.step()
        assert torch.isfinite(torch.tensor(losses["total"])) and tr.ema_updates == 1
