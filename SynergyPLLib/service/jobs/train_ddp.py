"""A training round on several GPUs (or CPU processes): ``torchrun`` launched by the training worker.

``project.yaml``::

    training:
      gpus: 4      # processes (one per GPU) for a training round; 1 (the default) trains in the worker

With ``gpus: N > 1`` the worker does not train itself: :func:`run_distributed` writes the round's
inputs to ``<out_dir>/ddp-spec.json`` and starts ``python -m torch.distributed.run --standalone
--nproc_per_node N -m SynergyPLLib.service.jobs.train_ddp --spec ...`` (:func:`torchrun_command`). The
ranks run ``engine.trainer.train`` under DDP (see :mod:`SynergyPLLib.engine.distributed`); rank 0
writes one JSON line per progress event on its stdout, which the worker turns into the same job progress
and events as a single-process round. Cancel: the worker's ``should_stop`` (cancel message or
``cancel_requested`` in the database) creates ``<out_dir>/cancel.flag``; rank 0 checks it between
iterations and every rank stops after the same iteration. The batch sizes of the engine config are per
GPU (a global batch of N times the configured one).

If the worker is killed, the launcher and the ranks die with it (parent-death signal); a round that
ended badly fails with the launcher's exit status and the end of its output in the worker log.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from SynergyPLLib.engine.config import EngineConfig
from SynergyPLLib.engine.data import CaseSpec
from SynergyPLLib.engine.trainer import ProgressEvent, TrainResult

from .processes import pid_alive

SPEC_NAME, STOP_NAME = "ddp-spec.json", "cancel.flag"
PARENT_ENV = "SYNERGYPL_DDP_PARENT"  # the worker's pid, for the ranks (see _die_with_parent)


def training_processes(project_config, device: str) -> int:
    """How many processes a training round uses: ``training.gpus`` of the project (1 when absent).

    On CUDA it must not exceed the GPUs of the machine; on CPU the processes use gloo (for tests).
    """
    training = getattr(project_config, "training", None)
    n = int(getattr(training, "gpus", 1) or 1)
    if n > 1 and str(device).startswith("cuda"):
        import torch

        have = torch.cuda.device_count()
        if n > have:
            raise ValueError(f"project.yaml asks for training.gpus: {n}, but this machine has {have} GPU(s)")
    return n


def torchrun_command(nproc: int, spec: Path) -> list[str]:
    """The command line that trains the round described by ``spec`` on ``nproc`` processes of this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
            "-m", __spec__.name, "--spec", str(spec)]  # this module, wherever it is moved


def _specs(specs: list[CaseSpec]) -> list[dict]:
    return [{"id": s.id, "image": str(s.image), "label": str(s.label) if s.label else None} for s in specs]


def _die_with_parent(worker: str | None = None) -> None:
    """Be killed when the parent process dies (Linux), and end now if ``worker`` (a pid) has already gone.

    A rank sets this up only after its imports; had the worker (and so torchrun) died meanwhile, the
    parent-death signal would never come, hence the check.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if worker and worker.isdigit() and not pid_alive(int(worker)):
        os._exit(1)


def run_distributed(nproc: int, config: EngineConfig, labeled: list[CaseSpec], unlabeled: list[CaseSpec],
                    validation: list[CaseSpec], out_dir: str | Path, *, init_checkpoint=None, resume: bool = False,
                    on_progress: Callable[[ProgressEvent], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, device: str | None = None) -> TrainResult:
    """``engine.trainer.train`` with the same arguments and result, run by ``nproc`` torchrun processes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stop = out_dir / STOP_NAME
    stop.unlink(missing_ok=True)
    spec = out_dir / SPEC_NAME
    spec.write_text(json.dumps({
        "config": config.to_dict(), "labeled": _specs(labeled), "unlabeled": _specs(unlabeled),
        "validation": _specs(validation), "out_dir": str(out_dir), "resume": bool(resume), "device": device,
        "init_checkpoint": str(init_checkpoint) if init_checkpoint else None}, indent=1))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
    proc = subprocess.Popen(torchrun_command(nproc, spec), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=None, text=True, env=env, preexec_fn=_die_with_parent)
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True, name="ddp-progress").start()
    result = error = None
    try:
        while True:
            if should_stop is not None and not stop.exists() and should_stop():
                stop.touch()
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            if not line.startswith("{"):
                continue
            msg = json.loads(line)
            if msg.get("event") == "progress" and on_progress is not None:
                on_progress(ProgressEvent(**msg["data"]))
            elif msg.get("event") == "result":
                result = msg["data"]
            elif msg.get("event") == "error" and error is None:
                error = msg["data"]
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc != 0 or result is None:
        why = f": rank {error['rank']}: {error['message']}" if error else "; see the worker log"
        raise RuntimeError(f"distributed training on {nproc} processes failed (torchrun exit status {rc}){why}")
    result["checkpoint"] = Path(result["checkpoint"])
    return TrainResult(**result)


def main(argv: list[str] | None = None) -> int:
    """One rank (started by torchrun): train the round of ``--spec``; rank 0 reports on stdout."""
    ap = argparse.ArgumentParser(prog="python -m SynergyPLLib.service.jobs.train_ddp")
    ap.add_argument("--spec", required=True)
    args = ap.parse_args(argv)
    _die_with_parent(os.environ.get(PARENT_ENV))  # torchrun is killed with the worker; the ranks go with it
    from SynergyPLLib.engine.distributed import env_rank, shutdown
    from SynergyPLLib.engine.trainer import train

    spec = json.loads(Path(args.spec).read_text())
    out = os.fdopen(os.dup(1), "w", buffering=1)  # events only; library output goes to stderr (the log)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    main_rank = env_rank() == 0
    stop = Path(spec["out_dir"]) / STOP_NAME

    def send(event: str, data: dict) -> None:
        out.write(json.dumps({"event": event, "data": data}, default=str) + "\n")

    def cases(key: str) -> list[CaseSpec]:
        return [CaseSpec(e["id"], Path(e["image"]), Path(e["label"]) if e.get("label") else None) for e in spec[key]]

    try:
        try:
            result = train(EngineConfig.from_dict(spec["config"]), cases("labeled"), cases("unlabeled"),
                           cases("validation"), spec["out_dir"], init_checkpoint=spec["init_checkpoint"],
                           resume=spec["resume"], device=spec["device"],
                           on_progress=(lambda ev: send("progress", dataclasses.asdict(ev))) if main_rank else None,
                           should_stop=stop.exists if main_rank else None)
        except Exception as exc:  # the reason reaches the job's error, not only the log
            send("error", {"rank": env_rank(), "message": f"{type(exc).__name__}: {exc}"[:2000]})
            raise
    finally:
        shutdown()
    if main_rank:
        send("result", dataclasses.asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
