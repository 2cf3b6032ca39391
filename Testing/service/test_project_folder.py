"""The one project-folder check: ``project.yaml``, ``project.yml`` and ``project.json`` are each a
project for the loader and for ``synergypl serve``; any other folder is refused, naming the folder and
the accepted file names."""

from __future__ import annotations

import json

import pytest
import yaml
from svc_support import Server

from SynergyPLLib.common.project_folder import CONFIG_NAMES, NotAProjectError, check_project_folder
from SynergyPLLib.service.settings import ServiceSettings, SettingsError
from SynergyPLLib.service.store.project import ProjectConfig


def test_project_yml_serves(project):
    """A project whose configuration is ``project.yml`` starts and answers like any other."""
    (project / "project.yaml").rename(project / "project.yml")
    with Server(project) as srv:
        info = srv.client().info()
    assert info["name"] == ProjectConfig.load(project).name
    assert len(info["classes"]) == len(ProjectConfig.load(project).classes)


def test_every_accepted_name_and_the_refusal(project, tmp_path):
    cfg = dict(yaml.safe_load((project / "project.yaml").read_text()), name="p")
    for name in CONFIG_NAMES:
        folder = tmp_path / name.replace(".", "-")
        folder.mkdir()
        text = json.dumps(cfg) if name.endswith(".json") else yaml.safe_dump(cfg)
        (folder / name).write_text(text)
        assert check_project_folder(folder) == folder / name
        assert ProjectConfig.load(folder).name == "p"
        ServiceSettings(project=folder).check_project()  # serve accepts it too
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "nowhere"):
        with pytest.raises(NotAProjectError) as err:
            check_project_folder(folder)
        msg = str(err.value)
        assert str(folder) in msg and all(n in msg for n in CONFIG_NAMES), msg
        with pytest.raises(SettingsError, match="not a SynergyPL project"):
            ServiceSettings(project=folder).check_project()
        with pytest.raises(ValueError, match="no project.yaml"):
            ProjectConfig.load(folder)
