"""Fixtures for the service tests (helpers live in svc_support.py).

- ``project``: a fresh project of 6 hippocampus cases, 3 labeled, no model.
- ``trained_project``: a copy of a session-wide project (10 cases, 4 labeled) that already has a tiny
  model (version 1), so tests needing predictions do not each train.
- ``database_url``: where those projects keep their database: None (SQLite in the project folder) unless
  a module parametrizes it, as the datastore, concurrency and crash tests do with ``svc_support.BACKENDS``:
  ``pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)`` runs each of their
  tests on SQLite and on a fresh database of a throwaway PostgreSQL cluster (``postgres_cluster``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from svc_support import TINY_ITERATIONS, Server, make_project


@pytest.fixture(scope="session")
def postgres_cluster():
    """A PostgreSQL cluster on 127.0.0.1 for this test session (see pg_support.py); stopped and removed
    at the end."""
    from pg_support import PostgresCluster, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        msg = "PostgreSQL is not installed (apt-get install postgresql; .ci/run does this)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must have it")
        pytest.skip(msg)
    cluster = PostgresCluster(bin_dir).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def database_url(request) -> str | None:
    """None for SQLite, else the URL of a new PostgreSQL database (parametrized indirectly)."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        return None
    assert backend == "postgresql", backend
    return request.getfixturevalue("postgres_cluster").create_database()


def use_database(project: Path, url: str) -> None:
    """Move a project's rows from its SQLite file into the database at ``url`` and point it there."""
    from SynergyPLLib.service.store.db import Database, copy_database

    src, dst = Database(f"sqlite:///{project / 'synergypl.sqlite'}"), Database(url)
    try:
        copy_database(src, dst)
    finally:
        src.dispose()
        dst.dispose()
    (project / "synergypl.sqlite").unlink()
    cfg_path = project / "project.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.setdefault("service", {})["database_url"] = url
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))


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
def trained_project(_trained_template, tmp_path, database_url) -> Path:
    """A project (10 hippocampus cases, 4 labeled) with model version 1 already trained."""
    dest = tmp_path / "project"
    shutil.copytree(_trained_template, dest, ignore=shutil.ignore_patterns(".serve.lock"))
    if database_url:
        use_database(dest, database_url)
    return dest


@pytest.fixture
def project(tmp_path, hippocampus_dir, database_url) -> Path:
    """A fresh project: 6 hippocampus cases, the first 3 labeled, no model."""
    return make_project(tmp_path / "project", hippocampus_dir, cases=6, labeled=3, database_url=database_url)
