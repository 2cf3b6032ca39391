"""The one project-folder check: a SynergyPL project is a folder with project.yaml, project.yml or project.json."""

from __future__ import annotations

from pathlib import Path

CONFIG_NAMES = ("project.yaml", "project.yml", "project.json")


class NotAProjectError(ValueError):
    """The folder does not exist or holds no project configuration."""


def find_project_config(folder) -> Path:
    """The configuration file of the project in ``folder`` (the first of ``CONFIG_NAMES`` present)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise NotAProjectError(f"Project folder {path} does not exist; create one with 'synergypl init --project FOLDER --from DATA'.")
    for name in CONFIG_NAMES:
        if (path / name).is_file():
            return path / name
    raise NotAProjectError(f"{path} is not a SynergyPL project (no {', '.join(CONFIG_NAMES)}); "
                           f"create one with 'synergypl init --project FOLDER --from DATA'.")
