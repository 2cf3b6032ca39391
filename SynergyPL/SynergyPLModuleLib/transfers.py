"""How the panel's client moves volumes: in a helper process started by the GUI thread.

:func:`panel_client_factory` gives :class:`~SynergyPLModuleLib.logic.LabelingLogic` clients whose file
uploads and downloads run in a helper process (:mod:`SynergyPLLib.client.helper`) that the
:class:`~SynergyPLModuleLib.background.BackgroundRunner`'s :class:`~SynergyPLModuleLib.background.ProcessLauncher`
starts and reaps on the GUI thread. So a 150 MB CT moves as fast as from a plain Python process even
though Slicer's GUI thread gives worker threads the GIL only at its timer ticks
(Testing/client/test_transfer_speed.py measures it).
"""

from __future__ import annotations

from collections.abc import Callable

from .background import BackgroundRunner


def panel_client_factory(runner: BackgroundRunner) -> Callable:
    """``client_factory(url, token, timeout)`` for LabelingLogic, transferring through ``runner``."""

    def make(url: str, token: str | None = None, timeout: float = 60.0):
        from SynergyPLLib.client import SynergyPLClient

        return SynergyPLClient(url, token=token, timeout=timeout, launcher=runner.processes)

    return make
