"""Run-time settings of one service process (address, token, limits); the project's own options live
in ``project.yaml`` (see :mod:`.project`).

In: command-line options / environment.  Out: a frozen :class:`ServiceSettings`.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8765
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class SettingsError(ValueError):
    """Settings that must not be used to start a server; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServiceSettings:
    """How the API process runs.

    - ``token``: shared secret; requests from other machines must send it (``Authorization: Bearer``
      or ``X-SynergyPL-Token``). Required whenever ``host`` is not a loopback address.
    - ``token_everywhere``: also require the token from loopback clients (e.g. behind a local proxy).
    - ``max_upload_mb``: None takes the project's ``service.max_upload_mb``.
    - ``predict_idle_seconds``: how long the prediction worker keeps its model loaded while idle.
    """

    project: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    token_everywhere: bool = False
    max_upload_mb: float | None = None
    predict_idle_seconds: float = 600.0
    train_idle_seconds: float = 60.0
    cancel_grace_seconds: float = 30.0
    log_level: str = "info"

    def validate(self) -> ServiceSettings:
        """Raise :class:`SettingsError` for a configuration that must not start."""
        if not (self.project / "project.yaml").exists() and not (self.project / "project.json").exists():
            raise SettingsError(f"{self.project} is not a SynergyPL project (no project.yaml); "
                                "create one with `synergypl init`")
        if not is_loopback(self.host) and not self.token:
            raise SettingsError(
                f"refusing to listen on {self.host} without a token: anyone on the network could read and "
                "change the project. Pass --token (or set SYNERGYPL_TOKEN), or bind to 127.0.0.1.")
        if self.token_everywhere and not self.token:
            raise SettingsError("--token-everywhere needs a token (--token or SYNERGYPL_TOKEN)")
        if self.token is not None and len(self.token) < 8:
            raise SettingsError("the token is too short: use at least 8 characters")
        return self

    @staticmethod
    def token_from_env() -> str | None:
        return os.environ.get("SYNERGYPL_TOKEN") or None
