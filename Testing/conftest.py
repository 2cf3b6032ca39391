"""Shared fixtures: where the real data lives, and skipping only where it truly is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import serve_support  # imported now, while Testing/ is on sys.path (Testing/slicer/conftest.py drops it)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SYNERGYPL_SHARED", REPO.parent / "shared"))
HIPPOCAMPUS = SHARED / "data" / "hippocampus"
DICOM = SHARED / "data" / "dicom"


def _need(path: Path) -> Path:
    if not path.exists():
        msg = f"real data not found at {path} (put ../shared beside the checkout or set SYNERGYPL_SHARED)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must have it")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def hippocampus_dir() -> Path:
    return _need(HIPPOCAMPUS)


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    return _need(DICOM)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # Tests share 2 cores with each other and with servers they start.
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass


@pytest.fixture(scope="session")
def server_python() -> str:
    """A Python that runs ``synergypl serve`` (see Testing/serve_support.py); the portable tests run in
    small environments without torch and start the server with it."""
    python = serve_support.server_python()
    if python is None:
        msg = ("no Python with the SynergyPL service (set SYNERGYPL_SERVER_PYTHON to the .venv's python, "
               "or run in the .venv)")
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must have it")
        pytest.skip(msg)
    return python


@pytest.fixture(scope="session")
def small_project(server_python, hippocampus_dir, tmp_path_factory) -> Path:
    """A project of 2 hippocampus cases (1 labeled), made by ``synergypl init`` in the server's Python."""
    return serve_support.init_project(server_python, tmp_path_factory.mktemp("served") / "project", hippocampus_dir)
