"""Unit tests of the service's small parts (no server): ids, atomic files, project config,
terminology, validation split, write transactions."""

from __future__ import annotations

import threading

import pytest
import yaml

from SynergyPLLib.service.domain.terminology import guess_terminology, to_slicer
from SynergyPLLib.service.domain.training_data import split_validation
from SynergyPLLib.service.store.db import Database, Meta
from SynergyPLLib.service.store.files import (
    IdError,
    atomic_write_bytes,
    case_id_from_filename,
    check_case_id,
    remove_partials,
)
from SynergyPLLib.service.store.project import ProjectConfig


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", "a\\b", ".hidden", "-x", "a..b", "x" * 101, "a b", "é"])
def test_unsafe_case_ids_are_refused(bad):
    with pytest.raises(IdError):
        check_case_id(bad)


def test_case_ids_from_file_names():
    assert case_id_from_filename("hippocampus_001.nii.gz") == "hippocampus_001"
    assert case_id_from_filename("../../etc/passwd") == "passwd"
    assert case_id_from_filename("My Scan (2).seg.nrrd") == "My_Scan_2"
    assert case_id_from_filename("...zip") == "case"
    for name in ("a..b.nrrd", "x/../y.mha", "C:\\data\\s 1.nii"):
        check_case_id(case_id_from_filename(name))


def test_atomic_write_leaves_whole_files_only(tmp_path):
    p = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(p, b"one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two" and [x.name for x in p.parent.iterdir()] == ["f.bin"]
    (p.parent / ".f.bin.1234.partial").write_bytes(b"half")
    (p.parent / ".abcd.partial.nrrd").write_bytes(b"half")
    assert remove_partials(tmp_path) == 2 and [x.name for x in p.parent.iterdir()] == ["f.bin"]


def test_validation_split_rules():
    assert split_validation([], 0.2) == ([], [])
    assert split_validation(["a"], 0.2) == (["a"], ["a"])  # nothing to hold out: used for both
    train, val = split_validation(["a", "b"], 0.2)
    assert len(val) == 1 and len(train) == 1
    ids = [f"case_{i:03d}" for i in range(10)]
    train, val = split_validation(ids, 0.2)
    assert len(val) == 2 and sorted(train + val) == ids and not set(train) & set(val)
    assert split_validation(list(reversed(ids)), 0.2) == (train, val)  # order does not matter
    assert split_validation(ids, 0.2, seed=1) != (train, val)
    assert len(split_validation(ids, 0.5)[1]) == 5 and len(split_validation(ids[:3], 0.9)[0]) == 1


def test_project_config_checks(tmp_path):
    good = {"name": "x", "classes": [{"value": 1, "name": "liver", "color": [1, 2, 3],
                                      "terminology": guess_terminology("liver")}]}
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(good))
    cfg = ProjectConfig.load(tmp_path)
    assert cfg.num_classes == 2 and cfg.engine_config().classes == ["background", "liver"]
    bad = dict(good, classes=[dict(good["classes"][0], value=2)])
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="project.yaml.*1..1 without gaps"):
        ProjectConfig.load(tmp_path)
    bad = dict(good, engine={"train": {"method": "magic"}})
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        ProjectConfig.load(tmp_path)
    bad = dict(good, classes=[dict(good["classes"][0], color=[300, 0, 0])])
    (tmp_path / "project.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="0-255"):
        ProjectConfig.load(tmp_path)
    with pytest.raises(ValueError, match="no project.yaml"):
        ProjectConfig.load(tmp_path / "nowhere")


def test_terminology_guesses():
    t = guess_terminology("Liver")
    assert t["type"] == {"scheme": "SCT", "code": "10200004", "meaning": "Liver"}
    assert t["category"]["meaning"] == "Anatomical Structure"
    h = guess_terminology("Anterior", "Hippocampus")
    assert h["type"]["meaning"] == "Hippocampus" and h["typeModifier"]["meaning"] == "Anterior"
    assert guess_terminology("blob-17")["type"]["meaning"] == "Tissue"
    s = to_slicer(h)
    assert s["type"] == ["SCT", "5366008", "Hippocampus"] and s["typeModifier"][2] == "Anterior"


def test_write_sessions_serialise_check_then_insert(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'x.sqlite'}")
    db.create()
    with db.write_session() as s:
        s.add(Meta(key="n", value=0))
    lost = []

    def bump():
        for _ in range(25):
            with db.write_session() as s:
                row = s.get(Meta, "n")
                v = row.value
                row.value = v + 1
            with db.Session() as s:
                if s.get(Meta, "n").value < v + 1:
                    lost.append(v)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert db.get_meta("n") == 200 and not lost
