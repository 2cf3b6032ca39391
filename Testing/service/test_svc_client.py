"""The HTTP client: standard library only (no torch, FastAPI, numpy), runs on 3.11 and 3.12, and its
errors say what happened (server down, timeout, HTTP errors)."""

from __future__ import annotations

import builtins
import glob
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from svc_support import REPO, Server, free_port

from SynergyPLLib.client import ConnectionError, NotFoundError, SynergyPLClient, TimeoutError

SCRIPT = r"""
import sys
sys.path.insert(0, {repo!r})
BLOCK = ("torch", "fastapi", "starlette", "sqlalchemy", "numpy", "SimpleITK", "monai", "pydantic", "nrrd", "yaml")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError("blocked in this test: " + name)
sys.meta_path.insert(0, Block())
from SynergyPLLib.client import SynergyPLClient, ConflictError
c = SynergyPLClient({url!r}, project={project!r})  # the token from the project's token file
info = c.info()
assert info["classes"][0]["name"] == "Anterior", info
cases = c.list_cases()
cid = cases[0]["id"]
data = c.download_label(cid, 1)
assert data[:4] == b"NRRD", data[:8]
latest = c.list_labels(cid)[-1]["version"]
lv = c.submit_label(cid, data, author="py" + sys.version[:4], parent_version=latest, filename="l.nrrd")
try:
    c.submit_label(cid, data, author="late", parent_version=latest, filename="l.nrrd")
    raise SystemExit("no conflict")
except ConflictError as exc:
    assert exc.latest_version == lv["version"]
assert not [m for m in sys.modules if m.split(".")[0] in BLOCK]
print("OK", sys.version_info[:2], lv["version"])
"""


def _pythons() -> list[str]:
    found = [sys.executable]
    for name in ("python3.12", "python3.11"):
        for cand in [shutil.which(name), *glob.glob(os.path.expanduser(f"~/.pyenv/versions/*/bin/{name}"))]:
            if cand and os.path.exists(cand):
                try:
                    subprocess.run([cand, "-c", "pass"], check=True, capture_output=True, timeout=30)
                except (subprocess.SubprocessError, OSError):
                    continue
                found.append(cand)
                break
    return found


def test_client_runs_without_heavy_packages_on_311_and_312(project):
    pythons = _pythons()
    with Server(project) as srv:
        versions = []
        for py in pythons:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
            r = subprocess.run([py, "-I", "-c", SCRIPT.format(repo=str(REPO), url=srv.url, project=str(project))], capture_output=True,
                               text=True, timeout=120, env=env)
            assert r.returncode == 0, (py, r.stdout, r.stderr)
            assert r.stdout.startswith("OK")
            versions.append(r.stdout.split("(")[1].split(")")[0])
        assert "3, 11" in versions
        if any("3.12" in p for p in pythons):
            assert "3, 12" in versions


def test_connection_error_when_server_is_down():
    port = free_port()
    c = SynergyPLClient(f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(ConnectionError, match=f"cannot reach the SynergyPL server at http://127.0.0.1:{port}") as err:
        c.info()
    assert isinstance(err.value, builtins.ConnectionError)


def test_timeout_when_server_does_not_answer():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    held = []
    threading.Thread(target=lambda: held.append(srv.accept()), daemon=True).start()
    c = SynergyPLClient(f"http://127.0.0.1:{port}", timeout=1.0)
    t = time.monotonic()
    with pytest.raises(TimeoutError, match="no answer within 1 s|did not arrive within 1 s") as err:
        c.list_cases()
    assert time.monotonic() - t < 10
    assert isinstance(err.value, builtins.TimeoutError)
    srv.close()


def test_errors_carry_status_and_message(project, tmp_path):
    with Server(project) as srv:
        c = srv.client()
        with pytest.raises(NotFoundError) as err:
            c.prediction("hippocampus_001")
        assert err.value.status == 404 and "no prediction yet" in err.value.message
        assert err.value.body["detail"] == err.value.message
        with pytest.raises(ValueError, match="give filename"):
            c.upload_case(b"abc")
        with pytest.raises(FileNotFoundError):
            c.upload_case(tmp_path / "missing.nrrd")
        # the server going away between calls is a ConnectionError too
        srv.kill9()
        with pytest.raises(ConnectionError):
            c.list_cases()
