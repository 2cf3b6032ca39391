"""Shared fixtures: where the real data lives, and skipping only where it truly is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
