"""The one check that a folder is a SynergyPL project: it holds ``project.yaml``, ``project.yml`` or
``project.json`` (first found wins, in that order). Used by the project loader, ``serve`` and the Slicer
module's server starter, so all three accept the same folders. Standard library only (Python 3.9+).
"""

from __future__ import annotations

from pathlib import Path

#: accepted configuration file names, in the order they are looked for
CONFIG_NAMES = ("project.yaml", "project.yml", "project.json")


class NotAProjectError(ValueError):
    """The folder is not a SynergyPL project; the message names the folder and the accepted files."""


def config_file(folder: str | Path) -> Path | None:
    """The project's configuration file in ``folder``, or None when it has none."""
    for name in CONFIG_NAMES:
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


def check_project_folder(folder: str | Path) -> Path:
    """The configuration file of the project in ``folder``; :class:`NotAProjectError` if there is none."""
    path = config_file(folder)
    if path is None:
        names = ", ".join(CONFIG_NAMES[:-1]) + " or " + CONFIG_NAMES[-1]
        why = "; the folder does not exist" if not Path(folder).exists() else ""
        raise NotAProjectError(f"{folder} is not a SynergyPL project (no {names}{why}); "
                               "create one with `synergypl init`")
    return path
