"""Fault injection for the crash tests: ``SYNERGYPL_FAULTS=point[,point...]`` makes the process kill
itself (SIGKILL, like ``kill -9``) when it reaches a named point. Unset in normal use.

Points: ``label-file-written`` (label file published, DB row not yet written),
``prediction-files-written`` (prediction folder published, DB row not yet written),
``model-before-register`` (training finished, model version not yet registered).
"""

from __future__ import annotations

import os
import signal


def hit(point: str) -> None:
    """Die here with SIGKILL if ``point`` is listed in ``SYNERGYPL_FAULTS``."""
    faults = os.environ.get("SYNERGYPL_FAULTS", "")
    if faults and point in {p.strip() for p in faults.split(",")}:
        os.kill(os.getpid(), signal.SIGKILL)
