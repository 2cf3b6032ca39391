"""Fixtures for the service tests (helpers live in svc_support.py).

- ``project``: a fresh project of 6 hippocampus cases, 3 labeled, no model.
- ``trained_project``: a copy of a session-wide project (10 cases, 4 labeled) that already has a tiny
  model (version 1), so tests needing predictions do not each train.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from svc_support import TINY_ITERATIONS, Server, make_project


@pytest.fixture(scope="session")
def _trained_template(tmp_path_factory, hippocampus_dir) -> Path:
    root = tmp_path_factory.mktemp("template")
    project = make_project(root / "trained", hippocampus_dir, cases=10, labeled=4)
    with Server(project) as srv:
        c = srv.client()
        job = c.train(iterations=TINY_ITERATIONS)
        c.wait_job(job["id"], timeout=300)
    return project


@pytest.fixture
def trained_project(_trained_template, tmp_path) -> Path:
    """A project (10 hippocampus cases, 4 labeled) with model version 1 already trained."""
    dest = tmp_path / "project"
    shutil.copytree(_trained_template, dest, ignore=shutil.ignore_patterns(".serve.lock"))
    return dest


@pytest.fixture
def project(tmp_path, hippocampus_dir) -> Path:
    """A fresh project: 6 hippocampus cases, the first 3 labeled, no model."""
    return make_project(tmp_path / "project", hippocampus_dir, cases=6, labeled=3)
