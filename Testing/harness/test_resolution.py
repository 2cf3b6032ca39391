"""The plan's resolution chosen on validation (harness/resolution.py), on a tiny real left_atrium folder."""

from __future__ import annotations

import json

import pytest
from bench_support import DATA, SHARED_DATA, TINY_ITERATIONS, tiny_dataset

from SynergyPLLib.cli import main
from SynergyPLLib.harness.resolution import choose_resolution, resolution_for

LA = SHARED_DATA / "left_atrium"
pytestmark = pytest.mark.skipif(not (LA / "dataset.json").exists(), reason="../shared/data/left_atrium missing")


@pytest.fixture(scope="module")
def tiny_la(tmp_path_factory):
    """10 real left_atrium cases: 2 test, 2 validation, 6 pool (each 96x71x44-ish at 1.25 mm)."""
    ids = sorted(p.name[: -len(".nii.gz")] for p in (LA / "labelsTr").glob("*.nii.gz"))[:10]
    return tiny_dataset(tmp_path_factory.mktemp("la") / "data", ids, LA)


def test_supervised_at_each_candidate_chooses_on_validation_and_the_bench_trains_there(tiny_la, tmp_path, capsys):
    out = tmp_path / "bench"
    doc = choose_resolution(str(tiny_la), 2, "cpu", str(out), subsets=2, seeds=[0], progress=False,
                            iterations=TINY_ITERATIONS)
    assert list(doc["candidates"]) == ["full", "low"] and doc["method"] == "supervised"
    full, low = doc["candidates"]["full"], doc["candidates"]["low"]
    assert full["plan"]["spacing"] is None and low["plan"]["spacing"][0] > 1.25  # 1.25 mm is the images' own grid
    for c in (full, low):
        assert [(r["subset"], r["seed"]) for r in c["runs"]] == [(0, 0), (1, 0)]
        assert all(0.0 <= r["val_dice"] <= 1.0 for r in c["runs"])
        assert c["val_dice_mean"] == pytest.approx(sum(r["val_dice"] for r in c["runs"]) / 2)
    better = "low" if low["val_dice_mean"] > full["val_dice_mean"] else "full"
    assert doc["chosen"] == better
    assert json.loads((out / "resolution.json").read_text()) == doc

    # the same settings read the choice back without training; other subsets choose again
    (out / "resolution.json").write_text(json.dumps({**doc, "chosen": "low"}))  # marks that it was read
    assert resolution_for(str(tiny_la), 2, "cpu", str(out), 2, [0], iterations=TINY_ITERATIONS) == "low"
    other = tmp_path / "other"
    other.mkdir()
    (other / "resolution.json").write_text(json.dumps({**doc, "chosen": "low"}))
    assert resolution_for(str(tiny_la), 2, "cpu", str(other), 1, [0], iterations=TINY_ITERATIONS,
                          progress=False) == json.loads((other / "resolution.json").read_text())["chosen"]
    assert len(json.loads((other / "resolution.json").read_text())["subsets"]) == 1

    # bench --resolution auto trains every method at the chosen plan and records it
    assert main(["bench", "--data", str(tiny_la), "--labeled", "2", "--methods", "supervised", "--subsets", "2",
                 "--seeds", "0", "--profile", "cpu", "--iterations", str(TINY_ITERATIONS), "--resolution", "auto",
                 "--out", str(out)]) == 0
    assert "plan (low resolution)" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["plan"]["resolution"] == "low" and res["plan"]["spacing"] == low["plan"]["spacing"]
    assert res["plan"]["patch_size"] == low["plan"]["patch_size"]


def test_one_candidate_trains_nothing_and_low_is_refused_where_there_is_none(tmp_path, capsys):
    if not (DATA / "dataset.json").exists():
        pytest.skip("../shared/data/hippocampus missing")
    ids = sorted(p.name[: -len(".nii.gz")] for p in (DATA / "labelsTr").glob("*.nii.gz"))[:10]
    data = tiny_dataset(tmp_path / "data", ids)
    doc = choose_resolution(str(data), 2, "cpu", str(tmp_path / "out"), subsets=1, progress=False)
    assert doc["chosen"] == "full" and list(doc["candidates"]) == ["full"] and doc["candidates"]["full"]["runs"] == []
    assert not (tmp_path / "out" / "runs").exists()
    assert main(["plan", "--data", str(data), "--resolution", "low"]) == 2
    assert "no low-resolution plan" in capsys.readouterr().err
