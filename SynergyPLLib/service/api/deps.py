"""What every route depends on: the application state (:class:`AppState`) and :func:`get_state`.

The app factory (:mod:`...app`) builds one :class:`AppState` and stores it on ``app.state``; routes get
it with ``Depends(get_state)``, so no route imports the app factory.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass, field

from fastapi import Request

from ..jobs.queue import JobManager
from ..settings import ServiceSettings
from ..store.workspace import Workspace

PROBE = ("import os, torch\n"
         "n = int(os.environ.get('SYNERGYPL_THREADS', '0') or 0)\n"
         "n and torch.set_num_threads(n)\n"
         "from SynergyPLLib.engine.model import default_device, device_name\n"
         "print(device_name(os.environ.get('SYNERGYPL_DEVICE') or default_device()))")


@dataclass
class AppState:
    ws: Workspace
    settings: ServiceSettings
    jobs: JobManager
    max_upload_bytes: int
    _device: str | None = None
    _device_lock: threading.Lock = field(default_factory=threading.Lock)

    def device(self) -> str:
        """The workers' device (GPU name or CPU threads): reported by a worker when one has run, else
        found once by a short-lived process, so the API process never imports torch."""
        reported = self.ws.db.get_meta("device")
        if reported:
            return reported
        with self._device_lock:
            if not self._device:
                self._device = _probe_device()
        return self._device


def _probe_device() -> str:
    try:
        r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    if r.returncode == 0 and r.stdout.strip():
        return r.stdout.strip().splitlines()[-1]
    return f"unknown (device probe failed: {(r.stderr.strip().splitlines() or [str(r.returncode)])[-1]})"


def get_state(request: Request) -> AppState:
    return request.app.state.synergypl
