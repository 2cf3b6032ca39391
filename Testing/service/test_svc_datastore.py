"""The datastore on SQLite and on PostgreSQL: write-once label versions under contention from separate
database connections (no shared in-process lock), sequences after a copy, and text PostgreSQL would
refuse (NUL characters, names longer than their column) answered or stored cleanly, never a 500.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from svc_support import BACKENDS, Server, case_image, label_file

from SynergyPLLib.client import BadRequestError
from SynergyPLLib.engine.io import read_volume
from SynergyPLLib.service.domain.errors import Conflict
from SynergyPLLib.service.domain.labels import add_label_version, list_versions
from SynergyPLLib.service.store.project import DATABASE_URL_ENV, ProjectConfig
from SynergyPLLib.service.store.workspace import Workspace

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
CID = "hippocampus_001"


def test_write_once_versions_across_connections(project, tmp_path, database_url):
    """8 workspaces (each its own engine and lock, like separate processes) race to add versions to one
    case: every success is a distinct next version, every loss a 409 naming the winner, no gap, no
    duplicate, no database error."""
    image = case_image(project, CID)
    gt = read_volume(next((project / "cases" / CID / "labels").glob("v0001-*.nrrd"))).array
    spaces = [Workspace(project) for _ in range(8)]
    files = []
    for k in range(len(spaces)):
        arr = gt.copy()
        arr[k, 0, 0] = 2
        files.append(label_file(tmp_path, image, arr, f"w{k}.nrrd"))
    won: list[tuple[int, int]] = []
    lost: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(spaces))

    def racer(k: int) -> None:
        ws = spaces[k]
        try:
            for _ in range(6):
                barrier.wait()
                latest = list_versions(ws, CID)[-1]["version"]
                try:
                    lv = add_label_version(ws, CID, files[k], filename="l.nrrd", author=f"w{k}", source="human",
                                           parent_version=latest)
                    won.append((lv["version"], k))
                except Conflict as exc:
                    assert exc.extra["latest_version"] > latest
                    lost.append(k)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=racer, args=(k,)) for k in range(len(spaces))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors, errors[:3]
        versions = list_versions(spaces[0], CID)
        assert [v["version"] for v in versions] == list(range(1, len(won) + 2))
        assert sorted(v for v, _ in won) == list(range(2, len(won) + 2))  # no duplicate, no gap
        assert all(v["parent_version"] == v["version"] - 1 for v in versions[1:])
        assert {v["version"]: v["author"] for v in versions[1:]} == {v: f"w{k}" for v, k in won}
        assert len(won) >= 6 and lost  # each round has a winner; the others were told
        stored = {p.name for p in (project / "cases" / CID / "labels").iterdir()}
        assert len(stored) == len(versions)  # the losers left no file
        print(f"\n{database_url and 'postgresql' or 'sqlite'}: 8 connections x 6 rounds: {len(won)} versions, "
              f"{len(lost)} conflicts, 0 duplicates")
    finally:
        for ws in spaces:
            ws.close()


def test_text_the_database_would_refuse(project, tmp_path, database_url):
    """NUL in an author is refused with 400; an upload's over-long or odd file name is stored cleaned."""
    with Server(project) as srv:
        c = srv.client()
        image = case_image(project, CID)
        data = label_file(tmp_path, image, np.zeros(image.shape, np.uint8)).read_bytes()
        for author in ("bad\x00name", "tab\tname", "x" * 201):
            with pytest.raises(BadRequestError) as err:
                c.submit_label(CID, data, author=author, parent_version=1, filename="l.nrrd")
            assert err.value.status == 400 and "author" in err.value.message
        src = project / "cases" / "hippocampus_003" / "image.nrrd"
        name = "n\x00ame-" + "y" * 400 + ".nrrd"
        case = c.upload_case(src.read_bytes(), case_id="long-name", filename=name)
        assert case["original_name"] == ("name-" + "y" * 400 + ".nrrd")[:255]
        assert c.get_case("long-name")["original_name"] == case["original_name"]
        assert [v["version"] for v in c.list_labels(CID)] == [1]


def test_database_url_from_environment(project, monkeypatch, database_url):
    """SYNERGYPL_DATABASE_URL wins over project.yaml; a plain postgresql:// URL gets the psycopg driver."""
    from SynergyPLLib.service.store.db import normalise_url

    cfg = ProjectConfig.load(project)
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://team:secret@db.example:5432/labels")
    assert cfg.database_url(project) == "postgresql://team:secret@db.example:5432/labels"
    assert normalise_url(cfg.database_url(project)) == "postgresql+psycopg://team:secret@db.example:5432/labels"
    monkeypatch.delenv(DATABASE_URL_ENV)
    assert cfg.database_url(project) == (database_url or f"sqlite:///{project.resolve() / 'synergypl.sqlite'}")
