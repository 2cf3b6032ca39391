"""Starting a local SynergyPL server: the command line and environment, without Qt.

The panel runs the command in a ``QProcess`` it owns (log shown in the panel, stopped with Slicer).
The server runs in a Python that has SynergyPL installed with its ``service`` extra -- a separate
environment, never Slicer's own Python, which stays free of torch.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8765


class ServerConfigError(ValueError):
    """The local server cannot be started as configured; the message says what to fix."""


@dataclass(frozen=True)
class LocalServerCommand:
    program: str
    arguments: list[str]
    environment: dict[str, str]
    url: str
    project: str = ""  # the served folder: its .synergypl-token holds the server's token

    def as_list(self) -> list[str]:
        return [self.program, *self.arguments]


def find_python(configured: str | None = None) -> str:
    """The configured interpreter, else a ``synergypl``-capable ``python3`` on PATH (not Slicer's)."""
    if configured:
        path = Path(configured).expanduser()
        if not path.exists():
            raise ServerConfigError(f"Python interpreter {path} does not exist; choose the Python of the "
                                    "environment where SynergyPL is installed (pip install synergypl[service]).")
        return str(path)
    for name in ("python3", "python"):
        found = shutil.which(name)
        if found and Path(found).resolve() != Path(sys.executable).resolve():
            return found
    raise ServerConfigError("Choose the Python interpreter of the environment where SynergyPL is installed "
                            "(pip install synergypl[service]).")


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
                  token: str | None = None, host: str = "127.0.0.1", log_level: str = "info") -> LocalServerCommand:
    """``python -m SynergyPLLib.cli serve --project ...`` with the token passed in the environment
    (never on the command line, where other users could read it). Without a token the server uses the
    project's own (``<project>/.synergypl-token``), which the panel then reads from there."""
    project_path = Path(project).expanduser() if project else None
    if project_path is None or not project_path.is_dir():
        raise ServerConfigError(f"Project folder {project or '(none)'} does not exist; create one with "
                                "'synergypl init --project FOLDER --from DATA'.")
    if not any((project_path / name).exists() for name in ("project.yaml", "project.json")):
        raise ServerConfigError(f"{project_path} is not a SynergyPL project (no project.yaml); create one with "
                                "'synergypl init'.")
    program = find_python(python)
    arguments = ["-m", "SynergyPLLib.cli", "serve", "--project", str(project_path), "--host", host,
                 "--port", str(int(port)), "--log-level", log_level]
    environment = {"PYTHONUNBUFFERED": "1"}
    if token:
        environment["SYNERGYPL_TOKEN"] = token
    return LocalServerCommand(program, arguments, environment, f"http://{host}:{int(port)}", str(project_path))
