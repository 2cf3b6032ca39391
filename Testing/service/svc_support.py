"""Support for the service tests: real server processes on 127.0.0.1 driven by the real HTTP client,
and small helpers for volumes and DICOM ZIPs.

- ``Server``: ``python -m SynergyPLLib.cli serve`` in a subprocess (own session), with start, stop,
  ``kill9`` and the log; workers run with one torch thread on the CPU.
- ``make_project``: a project from the hippocampus data (a few cases, some labeled).
- ``trained_project``: a copy of a session-wide project that already has a tiny model (version 1),
  so tests needing predictions do not each train.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from SynergyPLLib.client import SynergyPLClient, token_for_project
from SynergyPLLib.engine.io import Volume, read_volume, write_volume

REPO = Path(__file__).resolve().parents[2]
TINY_ITERATIONS = 8
# database backends of the datastore, concurrency and crash tests (see conftest.py: ``database_url``)
BACKENDS = ["sqlite", "postgresql"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({"SYNERGYPL_THREADS": "1", "SYNERGYPL_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    for name in ("SYNERGYPL_FAULTS", "SYNERGYPL_TOKEN", "SYNERGYPL_ALLOWED_HOSTS"):
        env.pop(name, None)
    env.update(extra or {})
    return env


class Server:
    """A ``synergypl serve`` process for one project."""

    def __init__(self, project: Path, *, host: str = "127.0.0.1", port: int | None = None, args: tuple = (),
                 env: dict | None = None, token: str | None = None) -> None:
        self.project, self.host, self.port = Path(project), host, port or free_port()
        self.args, self.env, self.token = list(args), env or {}, token
        self.proc: subprocess.Popen | None = None
        self.log_path = self.project.parent / f"server-{self.project.name}-{self.port}.log"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "127.0.0.1") else self.host
        return f"http://{host}:{self.port}"

    def client(self, token: str | None = None, timeout: float = 60.0) -> SynergyPLClient:
        """A client as a user on this machine makes it: with the given token, else the one the server
        was started with, else the project's token file (``project=``, as the panel and CLI do)."""
        token = token if token is not None else self.token
        return SynergyPLClient(self.url, token=token, timeout=timeout, project=self.project)

    def auth_headers(self) -> dict[str, str]:
        """The token header for raw HTTP requests (read from the project's token file, like the client)."""
        return {"Authorization": f"Bearer {self.token or token_for_project(self.project)}"}

    def command(self) -> list[str]:
        """The serve command line; a token is passed in SYNERGYPL_TOKEN (never on the command line)."""
        return [sys.executable, "-m", "SynergyPLLib.cli", "serve", "--project", str(self.project),
                "--host", self.host, "--port", str(self.port), "--log-level", "warning", *self.args]

    def start(self, timeout: float = 60.0) -> Server:
        log = open(self.log_path, "ab")
        env = server_env({**({"SYNERGYPL_TOKEN": self.token} if self.token else {}), **self.env})
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        probe = SynergyPLClient(self.url, token=self.token, timeout=2)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                probe.health()
                return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        self.kill9()
        raise RuntimeError(f"server did not start within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def raw_request(port: int, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict]:
    """One HTTP request with exactly ``headers`` (a given ``Host`` replaces http.client's own), as a
    browser or an attacker would send it; returns (status, JSON body or {"text": ...})."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        out = json.loads(data) if data else {}
    except ValueError:
        out = {"text": data.decode(errors="replace")}
    return resp.status, out if isinstance(out, dict) else {"items": out}


def form_body(fields: dict, files: dict | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body (what an HTML form posts): (bytes, content type)."""
    from SynergyPLLib.client.transport import FilePart, multipart

    parts = [FilePart(name, filename, data=data) for name, (filename, data) in (files or {}).items()]
    ctype, _length, chunks = multipart(fields, parts)
    return b"".join(chunks), ctype


def make_project(dest: Path, data: Path, cases: int = 8, labeled: int = 4, **kw) -> Path:
    from SynergyPLLib.service.domain.project_init import init_project

    ws = init_project(dest, data, labeled=labeled, limit=cases, quiet=True, **kw)
    ws.close()
    return dest


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie counts as gone
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def project_files(project: Path) -> list[str]:
    """Files that make up stored data (cases, labels, predictions, models); tmp, logs and DB excluded."""
    out = []
    for sub in ("cases", "models"):
        for p in sorted((project / sub).rglob("*")):
            if p.is_file():
                out.append(str(p.relative_to(project)))
    return out

def label_file(tmp: Path, image: Volume, array: np.ndarray, name: str = "label.nrrd") -> Path:
    """Write ``array`` on ``image``'s grid to ``tmp/name``."""
    return write_volume(image.with_array(np.asarray(array)), tmp / name)


def volume_bytes(vol: Volume, name: str, tmp: Path) -> bytes:
    return write_volume(vol, tmp / name).read_bytes()


def read_bytes_volume(data: bytes, tmp: Path, name: str = "x.nrrd") -> Volume:
    p = tmp / name
    p.write_bytes(data)
    return read_volume(p, allow_constant=True)


def zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                zf.write(f, f"series/{f.name}")
    return buf.getvalue()


def case_image(project: Path, case_id: str) -> Volume:
    return read_volume(project / "cases" / case_id / "image.nrrd")


def dice(a: np.ndarray, b: np.ndarray, classes=(1, 2)) -> float:
    out = []
    for c in classes:
        x, y = a == c, b == c
        s = x.sum() + y.sum()
        out.append(1.0 if s == 0 else 2.0 * np.logical_and(x, y).sum() / s)
    return float(np.mean(out))


def import_slicer():
    """slicer-core's ``slicer`` package adopts every ``slicer`` folder on sys.path (pytest puts
    ``Testing/`` there, holding ``Testing/slicer``); drop such entries first, then import it."""
    import sys

    def foreign(entry: str) -> bool:
        d = Path(entry or ".").resolve() / "slicer"
        return d.is_dir() and not (d / "__init__.py").exists()

    sys.path[:] = [e for e in sys.path if not foreign(e)]
    import slicer

    return slicer
