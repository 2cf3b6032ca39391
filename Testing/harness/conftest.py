"""The harness tests' fixtures: ``tiny``, one tiny real benchmark (16 real hippocampus cases, a few iterations)."""

from __future__ import annotations

import pytest
from bench_support import DATA, TINY_ITERATIONS, tiny_dataset

from SynergyPLLib.cli import main


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """16 real hippocampus cases (3 test / 2 validation / 11 pool); 2 methods x 2 subsets x seed 0."""
    if not (DATA / "dataset.json").exists():
        pytest.skip("../shared/data/hippocampus missing")
    root = tmp_path_factory.mktemp("bench_v2")
    ids = sorted(p.name[: -len(".nii.gz")] for p in (DATA / "labelsTr").glob("*.nii.gz"))
    data = tiny_dataset(root / "data", ids[:16])
    out = root / "out"
    rc = main(["bench", "--data", str(data), "--labeled", "2", "--methods", "supervised,mean_teacher",
               "--subsets", "2", "--seeds", "0", "--profile", "cpu", "--iterations", str(TINY_ITERATIONS),
               "--out", str(out)])
    assert rc == 0
    return data, out, ids


