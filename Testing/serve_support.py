"""A real ``synergypl serve`` for the tests that must also run in small Python 3.9 / 3.12 environments
(numpy + pytest only: the Slicer module's Qt-free code and the client).

The server needs torch and FastAPI, so it runs in another Python: ``$SYNERGYPL_SERVER_PYTHON`` (the
Makefile points it at the project's .venv), else the running one if it has the service installed --
exactly as in Slicer, where the panel's Python (3.9 in 5.8, 3.12 in 5.10+) talks to a server in its
own environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def server_python() -> str | None:
    """A Python that can run ``synergypl serve``, or None."""
    configured = os.environ.get("SYNERGYPL_SERVER_PYTHON")
    candidates = [configured] if configured else [sys.executable]
    for python in candidates:
        try:
            probe = subprocess.run([python, "-c", "import fastapi, torch, SynergyPLLib.service"], cwd=REPO,
                                   capture_output=True, timeout=120)
        except OSError:
            continue
        if probe.returncode == 0:
            return python
    return None


def quiet_env(base: dict | None = None) -> dict:
    """One torch thread on the CPU: the tests share two cores."""
    env = dict(os.environ if base is None else base)
    env.update({"SYNERGYPL_THREADS": "1", "SYNERGYPL_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def init_project(python: str, dest: Path, data: Path, cases: int = 2) -> Path:
    """``synergypl init`` of the first ``cases`` hippocampus cases (one labeled) into ``dest``."""
    done = subprocess.run([python, "-m", "SynergyPLLib.cli", "init", "--project", str(dest), "--from", str(data),
                           "--cases", str(cases), "--labeled", "1", "--max-upload-mb", "1024"],
                          cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"synergypl init failed:\n{done.stdout}\n{done.stderr}")
    return dest


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 90.0,
                 token: str | None = None) -> bool:
    """True once ``url`` answers /api/health; False if ``proc`` exits first or time runs out."""
    from SynergyPLLib.client import SynergyPLClient

    probe = SynergyPLClient(url, token=token, timeout=2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            probe.health()
            return True
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    return False
