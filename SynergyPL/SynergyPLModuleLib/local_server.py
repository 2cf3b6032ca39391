"""Starting a local SynergyPL server: the command line and environment, without Qt.

The panel runs the command in a ``QProcess`` it owns (log shown in the panel, stopped with Slicer).
The server runs in a Python that has SynergyPL installed with its ``service`` extra -- a separate
environment, never Slicer's own Python, which stays free of torch.

Inside Slicer the process environment is the one Slicer's launcher made: PYTHONHOME and PYTHONPATH
point into Slicer's own Python and LD_LIBRARY_PATH / PATH start with Slicer's folders. Another Python
started with it fails ("SRE module mismatch") or imports Slicer's packages first, so the server gets
:func:`server_environment` of ``slicer.util.startupEnvironment()`` (the environment from before the
launcher changed it); the same function also cleans ``os.environ`` where that is all there is.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from SynergyPLLib.common.project_folder import check_project_folder

DEFAULT_PORT = 8765

# Set by Slicer's launcher (CMake/SlicerBlockCTKAppLauncherSettings.cmake, SuperBuild/External_python.cmake
# in Slicer 5.8 and 5.10): meaningful for Slicer's Python only, harmful for another one.
SLICER_LAUNCHER_VARIABLES = (
    "PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "SLICER_HOME",
    "ITK_AUTOLOAD_PATH", "PIP_REQUIRE_VIRTUALENV", "SSL_CERT_FILE", "QT_PLUGIN_PATH",
    "QTWEBENGINE_DISABLE_SANDBOX", "LibraryPaths",
)
# Search paths the launcher prepends Slicer's folders to; entries inside Slicer's tree are dropped.
SEARCH_PATH_VARIABLES = ("PATH", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "DYLD_FRAMEWORK_PATH")

INSTALL_HINT = "pip install 'synergypl[service]'"


class ServerConfigError(ValueError):
    """The local server cannot be started as configured; the message says what to fix."""


@dataclass(frozen=True)
class LocalServerCommand:
    """What to run: ``program`` with ``arguments`` in exactly ``environment`` (the whole environment)."""

    program: str
    arguments: list[str]
    environment: dict[str, str]
    url: str
    project: str = ""  # the served folder: its .synergypl-token holds the server's token

    def as_list(self) -> list[str]:
        return [self.program, *self.arguments]


def _inside(entry: str, roots: list[Path]) -> bool:
    try:
        path = Path(entry).expanduser().resolve()
    except (OSError, RuntimeError):
        return False
    return any(path == root or root in path.parents for root in roots)


def slicer_roots(environment: Mapping[str, str], slicer_home: str | os.PathLike | None = None) -> list[Path]:
    """Slicer's installation folders known from ``slicer_home``, ``SLICER_HOME`` and ``PYTHONHOME``."""
    candidates = [slicer_home, environment.get("SLICER_HOME")]
    home = environment.get("PYTHONHOME")
    if home:  # Slicer's is <Slicer>/lib/Python: its installation is two levels up
        candidates += [home, str(Path(home).parent.parent) if Path(home).name == "Python" else None]
    roots = []
    for candidate in candidates:
        if candidate:
            try:
                root = Path(candidate).expanduser().resolve()
            except (OSError, RuntimeError):
                continue
            if root != Path(root.anchor) and root not in roots:  # never treat "/" as Slicer's tree
                roots.append(root)
    return roots


def server_environment(environment: Mapping[str, str], slicer_home: str | os.PathLike | None = None,
                       extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for another Python started from Slicer.

    In: ``environment`` -- Slicer's startup environment (preferred) or its process environment;
    ``slicer_home`` -- Slicer's installation folder if known (``SLICER_HOME`` and ``PYTHONHOME`` in
    ``environment`` are used too); ``extra`` -- variables to set last.
    Out: a new dict without the variables of :data:`SLICER_LAUNCHER_VARIABLES`, with every entry of
    PATH / LD_LIBRARY_PATH / DYLD_* that lies inside Slicer's tree removed (a list left empty is
    dropped, except PATH), plus ``extra``.
    """
    roots = slicer_roots(environment, slicer_home)
    out = {key: value for key, value in environment.items() if key not in SLICER_LAUNCHER_VARIABLES}
    for key in SEARCH_PATH_VARIABLES:
        if key not in out:
            continue
        kept = [e for e in out[key].split(os.pathsep) if e and not _inside(e, roots)]
        if kept or key == "PATH":
            out[key] = os.pathsep.join(kept)
        else:
            del out[key]
    out.update(extra or {})
    return out


def find_python(configured: str | None = None, environment: Mapping[str, str] | None = None,
                slicer_home: str | os.PathLike | None = None) -> str:
    """The configured interpreter, else ``python3`` / ``python`` from ``environment``'s PATH (give the
    startup environment: Slicer's own PATH leads to Slicer's Python), never one inside Slicer's tree
    nor the running interpreter. Raises :class:`ServerConfigError` saying what to choose."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise ServerConfigError(f"Python interpreter {path} does not exist; choose the Python of the "
                                    f"environment where SynergyPL is installed ({INSTALL_HINT}).")
        return str(path)  # one that cannot run is reported by the process's FailedToStart
    environment = os.environ if environment is None else environment
    roots = slicer_roots(environment, slicer_home)
    folders = [f for f in environment.get("PATH", "").split(os.pathsep) if f and not _inside(f, roots)]
    for name in ("python3", "python"):
        for folder in folders:
            found = shutil.which(name, path=folder)
            if found and not _inside(found, roots) and found != sys.executable:
                return found
    raise ServerConfigError("No Python interpreter was chosen and none outside Slicer was found on the PATH. "
                            "Choose the Python of the environment where SynergyPL is installed "
                            f"({INSTALL_HINT}), e.g. <venv>/bin/python.")


def free_port(preferred: int = DEFAULT_PORT, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens there, else a free port chosen by the system."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise ServerConfigError("no free TCP port on 127.0.0.1")


def serve_command(python: str | None, project: str | os.PathLike, port: int = DEFAULT_PORT,
                  token: str | None = None, host: str = "127.0.0.1", log_level: str = "info",
                  environment: Mapping[str, str] | None = None,
                  slicer_home: str | os.PathLike | None = None) -> LocalServerCommand:
    """``python -m SynergyPLLib.cli serve --project ...`` in :func:`server_environment` of
    ``environment`` (default: ``os.environ``), with the token passed in the environment (never on
    the command line, where other users could read it). Without a token the server uses the
    project's own (``<project>/.synergypl-token``), which the panel then reads from there."""
    if not project:
        raise ServerConfigError("Project folder (none) does not exist; create one with "
                                "'synergypl init --project FOLDER --from DATA'.")
    try:
        project_path = check_project_folder(project).parent  # project.yaml, project.yml or project.json
    except ValueError as exc:  # the folder is missing or holds no project configuration
        raise ServerConfigError(str(exc)) from None
    environment = os.environ if environment is None else environment
    program = find_python(python, environment, slicer_home)
    arguments = ["-m", "SynergyPLLib.cli", "serve", "--project", str(project_path), "--host", host,
                 "--port", str(int(port)), "--log-level", log_level]
    extra = {"PYTHONUNBUFFERED": "1"}
    if token:
        extra["SYNERGYPL_TOKEN"] = token
    return LocalServerCommand(program, arguments, server_environment(environment, slicer_home, extra),
                              f"http://{host}:{int(port)}", str(project_path))
