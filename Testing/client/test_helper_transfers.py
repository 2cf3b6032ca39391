"""Volume transfers in a helper process (SynergyPLLib.client.helper), as the panel runs them: started,
fed and reaped by the BackgroundRunner's ProcessLauncher on the polling thread, against a real server.

Portable: runs on Python 3.9 and 3.12 with numpy + pytest (``make test-pythons``); the server runs in
the service's Python.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from SynergyPLModuleLib.background import BackgroundCall, BackgroundRunner, ProcessLauncher
from SynergyPLModuleLib.transfers import panel_client_factory

from SynergyPLLib import client as client_module
from SynergyPLLib.client import SynergyPLClient
from SynergyPLLib.client.helper import SubprocessLauncher

pytestmark = [pytest.mark.portable, pytest.mark.data]

REPO = Path(__file__).resolve().parents[2]
TOKEN = "helper-test-token"


@pytest.fixture(scope="module")
def served(server_python, small_project, tmp_path_factory):
    """A real server that wants the token from every client (also on loopback)."""
    from serve_support import quiet_env, wait_healthy
    from SynergyPLModuleLib.local_server import free_port

    port = free_port(0)
    log = tmp_path_factory.mktemp("helper") / "server.log"
    env = quiet_env()
    env["SYNERGYPL_TOKEN"] = TOKEN
    with open(log, "wb") as out:
        proc = subprocess.Popen([server_python, "-m", "SynergyPLLib.cli", "serve", "--project", str(small_project),
                                 "--port", str(port), "--log-level", "warning", "--token-everywhere"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_healthy(url, proc, token=TOKEN), log.read_text()[-3000:]
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _through_runner(runner: BackgroundRunner, work):
    handle = runner.submit(BackgroundCall("transfer", work))
    assert runner.wait(handle, timeout=120)
    if handle.error is not None:
        raise handle.error
    return handle.result


def test_upload_and_downloads_run_in_the_helper_and_match_the_plain_client(served, small_project, tmp_path):
    plain = SynergyPLClient(served, token=TOKEN)
    case_id = plain.list_cases()[0]["id"]
    expected = plain.download_image(case_id)
    runner = BackgroundRunner()
    make = panel_client_factory(runner)
    started = []
    original = runner.processes._spawn

    def spawn(argv, env):  # count the helper processes (the real ones)
        started.append(argv)
        return original(argv, env)

    runner.processes._spawn = spawn
    try:
        path = _through_runner(runner, lambda ctx: make(served, TOKEN, 60).download_image(case_id, tmp_path / "a.nrrd"))
        assert Path(path).read_bytes() == expected
        assert not (tmp_path / "a.nrrd.part").exists()
        case = _through_runner(runner, lambda ctx: make(served, TOKEN, 60).upload_case(
            Path(path), case_id="via-helper"))
        assert case["id"] == "via-helper"
        assert plain.download_image("via-helper") == expected  # stored as sent
        label = plain.download_label(case_id, "latest") if plain.list_labels(case_id) else None
        if label is not None:
            got = _through_runner(runner, lambda ctx: make(served, TOKEN, 60).download_label(
                case_id, "latest", tmp_path / "l.nrrd"))
            assert Path(got).read_bytes() == label
    finally:
        runner.shutdown()
    assert started and all("SynergyPLLib.client.helper" in " ".join(argv) for argv in started)
    assert all(TOKEN not in " ".join(argv) for argv in started)  # the token travels on stdin only


def test_errors_from_the_helper_keep_their_type(served, tmp_path):
    runner = BackgroundRunner()
    make = panel_client_factory(runner)
    try:
        with pytest.raises(client_module.NotFoundError, match="no-such-case"):
            _through_runner(runner, lambda ctx: make(served, TOKEN, 60).download_image("no-such-case", tmp_path / "x"))
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()
        with pytest.raises(client_module.AuthError):
            _through_runner(runner, lambda ctx: make(served, "wrong", 60).download_image("x", tmp_path / "y"))
        bad = tmp_path / "not-an-image.nrrd"
        bad.write_bytes(b"this is not a volume")
        with pytest.raises(client_module.BadRequestError):
            _through_runner(runner, lambda ctx: make(served, TOKEN, 60).upload_case(bad, case_id="bad"))
        with pytest.raises(client_module.ConnectionError, match="cannot reach"):
            _through_runner(runner, lambda ctx: make("http://127.0.0.1:9", None, 5).download_image("x", tmp_path / "z"))
    finally:
        runner.shutdown()


def test_subprocess_launcher_and_a_missing_python(served, tmp_path):
    c = SynergyPLClient(served, token=TOKEN, launcher=SubprocessLauncher())
    case_id = c.list_cases()[0]["id"]
    assert Path(c.download_image(case_id, tmp_path / "s.nrrd")).stat().st_size > 0
    from SynergyPLLib.client.helper import HelperTransport

    broken = SynergyPLClient(served, token=TOKEN)
    broken.http = HelperTransport(served, TOKEN, 60, SubprocessLauncher(), python=str(tmp_path / "no-python"))
    with pytest.raises(client_module.ConnectionError, match="could not be started"):
        broken.download_image(case_id, tmp_path / "t.nrrd")


def _run_on_worker(launcher: ProcessLauncher, argv, stdin: bytes):
    """``launcher.run`` on a worker thread while this (polling) thread polls, as in the panel."""
    import threading

    result = {}

    def work():
        try:
            result["out"] = launcher.run(argv, dict(os.environ), stdin)
        except OSError as exc:
            result["error"] = exc

    worker = threading.Thread(target=work)
    worker.start()
    while worker.is_alive():
        launcher.poll()
        worker.join(0.01)
    return result


def test_process_launcher_keeps_one_ready_replaces_a_dead_one_and_shutdown_stops_it(tmp_path):
    import sys

    launcher = ProcessLauncher()
    argv = [sys.executable, "-c", "import sys; data = sys.stdin.read(); print(data.upper())"]
    launcher.prepare(argv, dict(os.environ))
    launcher.poll()
    assert len(launcher._ready) == 1
    ready = next(iter(launcher._ready.values()))
    assert ready.poll() is None  # waiting on stdin
    assert _run_on_worker(launcher, argv, b"hello") == {"out": (0, b"HELLO\n")}
    assert ready.poll() == 0  # the ready process did the run ...
    again = next(iter(launcher._ready.values()))
    assert again is not ready  # ... and was replaced
    again.kill()
    again.wait()
    assert _run_on_worker(launcher, argv, b"after a death") == {"out": (0, b"AFTER A DEATH\n")}
    missing = _run_on_worker(launcher, [str(tmp_path / "no-such-program")], b"")
    assert isinstance(missing.get("error"), FileNotFoundError)
    launcher.kill_all()
    launcher.poll()
    assert not launcher._ready
