"""``synergypl bench-loop`` end to end on a tiny Decathlon folder of real hippocampus cases."""

from __future__ import annotations

import json

import pytest


@pytest.mark.data
@pytest.mark.slow
def test_bench_loop_writes_loop_json(hippocampus_dir, tmp_path):
    from SynergyPLLib.cli import main

    meta = json.loads((hippocampus_dir / "dataset.json").read_text())
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    entries = [{"image": str((hippocampus_dir / e["image"]).resolve()), "label": str((hippocampus_dir / e["label"]).resolve())}
               for e in meta["training"][:10]]  # split: 2 test, 2 validation, 6 pool
    (tiny / "dataset.json").write_text(json.dumps({**meta, "numTraining": 10, "training": entries, "test": []}))
    out = tmp_path / "out"
    assert main(["bench-loop", "--data", str(tiny), "--start-labeled", "2", "--rounds", "2", "--cases-per-round", "1",
                 "--iterations", "3", "--round-iterations", "2", "--threads", "1", "--out", str(out)]) == 0
    doc = json.loads((out / "loop.json").read_text())
    assert list(doc) == ["rounds"] and [r["round"] for r in doc["rounds"]] == [0, 1, 2]
    assert [r["labeled"] for r in doc["rounds"]] == [2, 3, 4]
    for r in doc["rounds"]:
        assert set(r) == {"round", "labeled", "synergypl", "manual"}
        for wf in ("synergypl", "manual"):
            assert set(r[wf]) == {"dice", "effort"} and 0.0 <= r[wf]["dice"] <= 1.0
    assert doc["rounds"][0]["synergypl"]["effort"] == doc["rounds"][0]["manual"]["effort"] == 0.0
    assert [r["manual"]["effort"] for r in doc["rounds"]] == [0.0, 1.0, 2.0]  # full review: 1 per case
    syn = [r["synergypl"]["effort"] for r in doc["rounds"]]
    assert syn == sorted(syn) and syn[-1] <= 2.0  # cumulative, at most a full review per case
    details = json.loads((out / "loop_details.json").read_text())
    chosen = [c["case"] for r in details["workflows"]["synergypl"]["rounds"][1:] for c in r["cases"]]
    assert len(set(chosen)) == 2 and not set(chosen) & set(details["start_labeled_ids"])
    assert not set(chosen) & set(details["test_cases"])
    assert details["iterations"] == {"round0": 3, "fine_tune": 2}
    labels = sorted(p.name for p in (out / "work" / "labels" / "synergypl").rglob("*.nii.gz"))
    assert labels == sorted(f"{c}.nii.gz" for c in chosen)  # the corrected labels it trained on
    assert (out / "loop.png").stat().st_size > 0
