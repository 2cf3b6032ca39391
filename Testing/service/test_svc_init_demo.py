"""``synergypl init`` (Decathlon folder, folder of images) and the headless ``synergypl demo``."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from svc_support import REPO, Server, server_env

from SynergyPLLib.engine.config import EngineConfig


def _cli(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SynergyPLLib.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=server_env())


def test_init_from_decathlon_with_some_labels(tmp_path, hippocampus_dir):
    project = tmp_path / "hippo"
    r = _cli("init", "--project", str(project), "--from", str(hippocampus_dir), "--cases", "7", "--labeled", "3")
    assert r.returncode == 0, r.stderr
    assert "7 cases, 3 labeled" in r.stdout
    cfg = yaml.safe_load((project / "project.yaml").read_text())
    assert cfg["name"] == "Hippocampus" and [c["name"] for c in cfg["classes"]] == ["Anterior", "Posterior"]
    assert cfg["classes"][0]["terminology"]["type"]["meaning"] == "Hippocampus"
    assert EngineConfig.from_dict({**cfg["engine"], "classes": ["b", "a", "p"]}).train.method == "synergypl"
    with Server(project) as srv:
        cases = srv.client().list_cases()
        assert [c["status"] for c in cases] == ["confirmed"] * 3 + ["unlabeled"] * 4
        assert all(c["latest_label"]["author"] == "import" for c in cases[:3])
    r = _cli("init", "--project", str(project), "--from", str(hippocampus_dir))
    assert r.returncode == 2 and "not empty" in r.stderr


def test_init_from_folder_of_images_and_dicom_series(tmp_path, hippocampus_dir, dicom_dir):
    r = _cli("init", "--project", str(tmp_path / "p0"), "--from", str(dicom_dir / "Study1"))
    assert r.returncode == 2 and "--classes" in r.stderr
    project = tmp_path / "p1"
    r = _cli("init", "--project", str(project), "--from", str(dicom_dir / "Study1"), "--classes", "Hippocampus",
             "--name", "crops")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load((project / "project.yaml").read_text())
    assert cfg["name"] == "crops" and cfg["classes"][0]["terminology"]["type"]["code"] == "5366008"
    assert len(list((project / "cases" / "13_HCropVolume" / "dicom").glob("*.dcm"))) == 32
    images = tmp_path / "images"
    images.mkdir()
    for f in sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[:2]:
        (images / f.name).write_bytes(f.read_bytes())
    r = _cli("init", "--project", str(tmp_path / "p2"), "--from", str(images), "--classes", "left, right")
    assert r.returncode == 0 and "2 cases, 0 labeled" in r.stdout, r.stderr


def test_headless_demo_writes_report(tmp_path):
    out = tmp_path / "report"
    r = _cli("demo", "--iterations", "10", "--round-iterations", "4", "--labeled", "2", "--pool", "3",
             "--review", "2", "--evaluate", "1", "--threads", "1", "--out", str(out), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "round 1: iteration 10/10" in r.stdout and "annotator on hippocampus_" in r.stdout
    assert "labeling efficiency:" in r.stdout and "held-out Dice: before" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    assert 0.0 <= s["dice_before"] <= 1.0 and 0.0 <= s["dice_after"] <= 1.0
    assert s["reviewed"] == 2 and s["voxels_touched"] > 0 and s["full_review_voxels"] > 0
    assert s["efficiency_share"] == s["voxels_to_target"] / s["full_review_voxels"]
    assert s["review_dice_after"] >= s["review_dice_before"]
    report = (out / "report.md").read_text()
    assert "held-out Dice, model v1 (before)" in report and "heatmap_regions.png" in report
    # the rounds table, effort in bench-loop's unit (a fully reviewed case = 1.0)
    assert 0.0 < s["effort_cases"] <= s["reviewed"]
    assert f"| 2 | 4 (2 corrected) | 4 iterations fine-tuning from round 1 | {s['effort_cases']:.2f} |" in report
    for png in ("heatmap_regions.png", "annotator_curve.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
