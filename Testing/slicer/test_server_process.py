"""Starting the local server from the panel (issue 7, 2.3): the environment the server's Python gets,
which Python is chosen, and the state the panel shows when the process cannot start or dies.

Runs without Slicer and without slicer-core (numpy + pytest), on Python 3.9 and 3.12: ``make
test-pythons``. The real-server tests start ``synergypl serve`` in the service's Python.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from SynergyPLModuleLib import local_server as server
from SynergyPLModuleLib.server_process import (
    FAILED,
    RUNNING,
    STARTING,
    STOPPED,
    QProcessDriver,
    ServerProcess,
    SubprocessDriver,
)

pytestmark = pytest.mark.portable

REPO = Path(__file__).resolve().parents[2]


def _executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _slicer_tree(root: Path) -> Path:
    """Folders laid out like an installed Slicer 5.8 (bin/, lib/Slicer-5.8/, lib/Python/)."""
    home = root / "Slicer-5.8.1-linux-amd64"
    for sub in ("bin", "lib/Slicer-5.8/cli-modules", "lib/Slicer-5.8/qt-scripted-modules", "lib/Python/lib",
                "lib/QtPlugins", "share/Slicer-5.8"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return home


def _slicer_process_env(home: Path, base: dict) -> dict:
    """The environment Slicer's launcher gives its process (and, without care, any child), on top of
    ``base``: the variables set by CMake/SlicerBlockCTKAppLauncherSettings.cmake and External_python.cmake."""
    env = dict(base)
    env.update({
        "SLICER_HOME": str(home),
        "PYTHONHOME": str(home / "lib/Python"),
        "PYTHONPATH": os.pathsep.join(str(home / p) for p in ("bin/Python", "lib/Slicer-5.8",
                                                               "lib/Slicer-5.8/qt-scripted-modules")),
        "PYTHONNOUSERSITE": "1",
        "PATH": os.pathsep.join([str(home / "bin"), str(home / "lib/Slicer-5.8/cli-modules"), base.get("PATH", "")]),
        "LD_LIBRARY_PATH": os.pathsep.join([str(home / "lib/Slicer-5.8"), str(home / "lib/Python/lib")]
                                           + ([base["LD_LIBRARY_PATH"]] if base.get("LD_LIBRARY_PATH") else [])),
        "QT_PLUGIN_PATH": str(home / "lib/QtPlugins"),
        "SSL_CERT_FILE": str(home / "share/Slicer-5.8/Slicer.crt"),
        "ITK_AUTOLOAD_PATH": str(home / "lib/Slicer-5.8/ITKFactories"),
        "PIP_REQUIRE_VIRTUALENV": "0",
    })
    return env


# ------------------------------------------------------------------------------------------------
# The environment (pure functions)
# ------------------------------------------------------------------------------------------------
def test_server_environment_removes_what_slicers_launcher_added(tmp_path):
    home = _slicer_tree(tmp_path)
    base = {"HOME": "/home/rad", "LANG": "en_US.UTF-8", "PATH": "/usr/local/bin:/usr/bin",
            "LD_LIBRARY_PATH": "/usr/local/cuda/lib64", "CUDA_VISIBLE_DEVICES": "0"}
    polluted = _slicer_process_env(home, base)
    env = server.server_environment(polluted, extra={"PYTHONUNBUFFERED": "1"})
    for key in ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE", "SLICER_HOME", "QT_PLUGIN_PATH", "SSL_CERT_FILE",
                "ITK_AUTOLOAD_PATH", "PIP_REQUIRE_VIRTUALENV"):
        assert key not in env, key
    assert env["PATH"] == "/usr/local/bin:/usr/bin"
    assert env["LD_LIBRARY_PATH"] == "/usr/local/cuda/lib64"
    assert {k: env[k] for k in ("HOME", "LANG", "CUDA_VISIBLE_DEVICES")} == \
        {"HOME": "/home/rad", "LANG": "en_US.UTF-8", "CUDA_VISIBLE_DEVICES": "0"}
    assert env["PYTHONUNBUFFERED"] == "1"
    assert polluted["PYTHONHOME"]  # the input is not changed


def test_startup_environment_passes_unchanged_and_slicer_home_finds_leftovers(tmp_path):
    home = _slicer_tree(tmp_path)
    startup = {"HOME": "/home/rad", "PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"}
    assert server.server_environment(startup, slicer_home=home) == startup
    # An entry of Slicer's tree without SLICER_HOME in the environment: found through slicer_home.
    leftover = {"PATH": f"{home / 'bin'}:/usr/bin", "LD_LIBRARY_PATH": str(home / "lib/Slicer-5.8")}
    assert server.server_environment(leftover, slicer_home=home) == {"PATH": "/usr/bin"}
    # Through PYTHONHOME alone (<Slicer>/lib/Python): its installation is recognised too.
    only_home = {"PYTHONHOME": str(home / "lib/Python"), "PATH": f"{home / 'bin'}:/usr/bin"}
    assert server.server_environment(only_home) == {"PATH": "/usr/bin"}


def test_python_comes_from_the_startup_path_never_from_slicers_tree(tmp_path):
    home = _slicer_tree(tmp_path)
    _executable(home / "bin" / "python3")            # stands where Slicer's own Python would be found
    user = _executable(tmp_path / "venv" / "bin" / "python3")
    slicer_first = {"PATH": f"{home / 'bin'}:{user.parent}", "SLICER_HOME": str(home)}
    assert server.find_python(None, slicer_first) == str(user)
    assert server.find_python(None, {"PATH": f"{home / 'bin'}:{user.parent}"}, slicer_home=home) == str(user)
    with pytest.raises(server.ServerConfigError, match="No Python interpreter was chosen.*synergypl\\[service\\]"):
        server.find_python(None, {"PATH": str(home / "bin")}, slicer_home=home)
    with pytest.raises(server.ServerConfigError, match="does not exist"):
        server.find_python(str(tmp_path / "missing" / "python"))


def test_serve_command_carries_the_whole_cleaned_environment(tmp_path):
    home = _slicer_tree(tmp_path)
    user = _executable(tmp_path / "venv" / "bin" / "python3")
    project = tmp_path / "project"
    project.mkdir()
    (project / "project.yaml").write_text("name: x\n")
    polluted = _slicer_process_env(home, {"PATH": str(user.parent), "HOME": "/home/rad"})
    command = server.serve_command(None, project, port=8801, token="tok", environment=polluted)
    assert command.program == str(user)
    assert command.environment["PATH"] == str(user.parent)
    assert "PYTHONHOME" not in command.environment and "LD_LIBRARY_PATH" not in command.environment
    assert command.environment["SYNERGYPL_TOKEN"] == "tok" and "tok" not in command.as_list()
    assert command.url == "http://127.0.0.1:8801"


# ------------------------------------------------------------------------------------------------
# The state the panel shows
# ------------------------------------------------------------------------------------------------
def _recorded(process: ServerProcess) -> list:
    seen = []
    process.state_changed.connect(lambda state, message: seen.append((state, message)))
    return seen


def test_failed_to_start_leaves_starting_with_the_reason():
    process = ServerProcess("/opt/missing/python3", ["-m", "SynergyPLLib.cli"], "http://127.0.0.1:8765")
    seen = _recorded(process)
    process.launching()
    assert process.state == STARTING and process.check()
    process.error_occurred(0)  # QProcess::FailedToStart, as PythonQt hands it over
    assert process.state == FAILED and not process.check()
    assert "/opt/missing/python3" in process.message and "synergypl[service]" in process.message
    process.finished(None)  # nothing more to say
    assert [s for s, _ in seen] == [STARTING, FAILED]


def test_exit_while_starting_says_why_and_a_requested_stop_is_not_a_failure():
    process = ServerProcess("python3", [], "http://127.0.0.1:8765")
    process.launching()
    process.output_received("Traceback (most recent call last):\nModuleNotFoundError: No module named 'SynergyPLLib'\n")
    process.finished(1)
    assert process.state == FAILED and "exited with code 1 while starting" in process.message
    assert "has no SynergyPL" in process.message
    process.launching()
    process.server_answered("CPU, model v1")
    assert process.state == RUNNING and "CPU, model v1" in process.message
    process.stopping()
    process.finished(0)
    assert process.state == STOPPED
    process.launching()
    process.error_occurred("Crashed")
    process.finished(-11, crashed=True)
    assert process.state == FAILED and "crashed" in process.message


def test_no_answer_within_the_timeout_fails_the_start():
    now = [100.0]
    process = ServerProcess("python3", [], "http://127.0.0.1:8765", start_timeout=60, clock=lambda: now[0])
    process.launching()
    now[0] += 59
    assert process.check() and process.state == STARTING
    now[0] += 2
    assert not process.check()
    assert process.state == FAILED and "did not answer within 60 s" in process.message


def _run_until_final(driver: SubprocessDriver, url: str | None, timeout: float = 90.0) -> None:
    """What the panel's timers do: deliver output, and tell the process once the server answers."""
    import time

    from serve_support import wait_healthy

    deadline = time.monotonic() + timeout
    while driver.process.state == STARTING and time.monotonic() < deadline:
        driver.poll()
        if url and driver.popen is not None and wait_healthy(url, driver.popen, timeout=0.5):
            driver.process.server_answered()
        driver.process.check()
        time.sleep(0.05)


def test_a_program_that_cannot_start_fails_for_real(tmp_path):
    process = ServerProcess(str(tmp_path / "no-such-python"), ["-V"], "http://127.0.0.1:9")
    driver = SubprocessDriver(process)
    driver.start()
    assert process.state == FAILED and "no-such-python" in process.message


def test_a_python_without_synergypl_fails_with_advice(tmp_path):
    process = ServerProcess(sys.executable, ["-m", "SynergyPLLib.cli", "serve"], "http://127.0.0.1:9")
    env = server.server_environment(dict(os.environ))
    env.pop("PYTHONPATH", None)
    driver = SubprocessDriver(process, env, cwd=str(tmp_path))
    driver.start()
    _run_until_final(driver, None, timeout=60)
    if process.state == STARTING:
        driver.stop()
    assert process.state == FAILED, process.message
    assert "has no SynergyPL" in process.message or "exited with code" in process.message


# ------------------------------------------------------------------------------------------------
# The real server, started with Slicer's polluted environment passed through server_environment
# ------------------------------------------------------------------------------------------------
def _pollution(tmp_path: Path) -> tuple[Path, dict]:
    """Slicer's process environment around the server's Python: PYTHONHOME is another Python's prefix
    (Slicer's Python is another build: here pyenv's 3.9, or an empty folder), and PYTHONPATH holds a
    decoy ``numpy`` (Slicer's own, built for its Python) that must never be imported."""
    home = _slicer_tree(tmp_path)
    other = Path("/root/.pyenv/versions/3.9.18")
    python_home = home / "lib" / "Python"
    if other.is_dir() and sys.version_info[:2] != (3, 9):
        shutil.rmtree(python_home)
        python_home.symlink_to(other, target_is_directory=True)
    decoy = home / "lib" / "Slicer-5.8" / "numpy"  # Slicer's numpy, built for Slicer's Python
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError(\"Slicer's numpy was imported\")\n")
    from serve_support import quiet_env

    return home, _slicer_process_env(home, quiet_env())


@pytest.mark.data
def test_real_server_comes_up_through_server_environment(tmp_path, server_python, small_project):
    home, polluted = _pollution(tmp_path)
    url_of = {}

    def start(env: dict) -> ServerProcess:
        port = server.free_port(0)
        url_of["url"] = f"http://127.0.0.1:{port}"
        process = ServerProcess(server_python, ["-m", "SynergyPLLib.cli", "serve", "--project", str(small_project),
                                                "--port", str(port), "--log-level", "warning"], url_of["url"],
                                start_timeout=90)
        driver = SubprocessDriver(process, env, cwd=str(REPO))
        driver.start()
        try:
            _run_until_final(driver, url_of["url"])
        finally:
            driver.stop()
        return process

    # As the panel did before: the process environment as it is inside Slicer -> the server never comes up.
    raw = start(polluted)
    assert raw.state == FAILED, raw.message
    # Only PYTHONHOME removed: PYTHONPATH still brings Slicer's packages first -> still no server.
    half = start({k: v for k, v in polluted.items() if k != "PYTHONHOME"})
    assert half.state == FAILED and "Slicer's numpy was imported" in "\n".join(half.log), half.message
    # Through server_environment: it comes up and answers.
    env = server.server_environment(polluted, extra={"PYTHONUNBUFFERED": "1"})
    good = start(env)
    assert good.state == STOPPED, good.message  # it was RUNNING until the test stopped it
    assert RUNNING in good.history, "\n".join(good.log)


def test_qprocess_driver_imports_and_waits_without_qt():
    """The panel's QProcess driver lives beside the state machine; Qt is imported only to start it."""
    import subprocess

    code = ("import sys; from SynergyPLModuleLib.server_process import QProcessDriver, ServerProcess\n"
            "d = QProcessDriver(ServerProcess('python', ['-V'], 'http://127.0.0.1:1'))\n"
            "assert not d.is_running and d.process.state == 'stopped'\n"
            "d.stop()  # nothing started: nothing to stop, no Qt needed\n"
            "assert 'qt' not in sys.modules, sorted(sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "SynergyPL")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert QProcessDriver.__module__.endswith("server_process")
