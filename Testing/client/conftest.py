"""The client's tests (and the panel's transfer path): the module folder on sys.path, as in Slicer."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for path in (str(REPO / "SynergyPL"), str(REPO)):
    if path not in sys.path:
        sys.path.insert(0, path)
