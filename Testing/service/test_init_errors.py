"""``synergypl init --from DIR`` on sources it cannot use: a clear error naming the folder or file and
the problem, no traceback, and nothing left behind, so the same command works once the source is fixed."""

from __future__ import annotations

import shutil

import pytest

from SynergyPLLib.cli import main as cli_main

pytestmark = pytest.mark.data


def _init(project, source, capsys) -> tuple[int, str]:
    rc = cli_main(["init", "--project", str(project), "--from", str(source), "--classes", "Anterior,Posterior"])
    return rc, capsys.readouterr().err


def test_sub_folder_with_two_dicom_series_is_refused_cleanly_and_retry_works(dicom_dir, hippocampus_dir, tmp_path,
                                                                            capsys):
    source = tmp_path / "source"
    mixed = source / "mixed"
    mixed.mkdir(parents=True)
    shutil.copy(hippocampus_dir / "imagesTr" / "hippocampus_001.nii.gz", source)  # a good case first
    for tag, series in (("a", dicom_dir / "Study1" / "13_HCropVolume"), ("b", dicom_dir / "Study3" / "11_HCropVolume")):
        for f in series.iterdir():
            shutil.copy(f, mixed / f"{tag}_{f.name}")
    project = tmp_path / "project"
    rc, err = _init(project, source, capsys)
    assert rc == 2
    assert f"{mixed}: sub-folder holds 2 DICOM series" in err
    assert "'HippoCrop' (32 files" in err and "'HippoCrop' (40 files" in err  # the series found, by size
    assert "ZIP" not in err and "Traceback" not in err
    assert not project.exists()
    # the user splits the series; the same command now works
    (source / "other").mkdir()
    for f in mixed.glob("b_*"):
        f.rename(source / "other" / f.name)
    rc, err = _init(project, source, capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (project / "cases").iterdir()) == ["hippocampus_001", "mixed", "other"]


def test_bad_image_midway_leaves_nothing_behind(hippocampus_dir, tmp_path, capsys):
    source = tmp_path / "source"
    source.mkdir()
    for n in ("001", "003"):
        shutil.copy(hippocampus_dir / "imagesTr" / f"hippocampus_{n}.nii.gz", source)
    bad = source / "hippocampus_002.nii.gz"
    bad.write_bytes((source / "hippocampus_001.nii.gz").read_bytes()[:300])  # truncated
    project = tmp_path / "project"
    project.mkdir()  # an existing empty folder is used, and emptied again on failure
    rc, err = _init(project, source, capsys)
    assert rc == 2
    assert str(bad) in err and "truncated" in err and f"nothing was kept at {project}" in err
    assert "Traceback" not in err
    assert project.is_dir() and list(project.iterdir()) == []
    bad.unlink()
    rc, err = _init(project, source, capsys)
    assert rc == 0, err
    assert (project / "project.yaml").exists()
