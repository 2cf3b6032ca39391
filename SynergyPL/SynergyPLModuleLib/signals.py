"""A plain-Python signal: how the logic reports to the widget without importing Qt.

The logic emits; the widget connects slots. Emission is synchronous, on the thread that emits, and the
logic only emits from the GUI thread (results of background work arrive through
:class:`~SynergyPLModuleLib.background.BackgroundRunner.poll`, which runs on the GUI thread), so slots may touch
Qt widgets and MRML nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

_log = logging.getLogger(__name__)


class Signal:
    """A list of callables called in order with the emitted arguments.

    A slot that raises does not stop the others: the exception is logged, because one broken display
    must not hide an error message or leave buttons disabled.
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._slots: list[Callable[..., Any]] = []

    def connect(self, slot: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``slot`` on every emission (once, even if connected twice); returns ``slot``."""
        if slot not in self._slots:
            self._slots.append(slot)
        return slot

    def disconnect(self, slot: Callable[..., Any] | None = None) -> None:
        """Forget ``slot``, or every slot when none is given."""
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            try:
                slot(*args)
            except Exception:  # a broken slot must not stop the others
                _log.exception("slot %r of signal %s failed", slot, self.name or "?")

    def __len__(self) -> int:
        return len(self._slots)

    def __repr__(self) -> str:
        return f"Signal({self.name!r}, {len(self._slots)} slots)"
