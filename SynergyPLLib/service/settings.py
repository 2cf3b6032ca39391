"""Run-time settings of one service process (address, token, allowed Host names, limits); the
project's own options live in ``project.yaml`` (see :mod:`.store.project`).

In: command-line options / environment.  Out: a frozen :class:`ServiceSettings`.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..client.api import DEFAULT_URL
from ..client.tokens import MIN_TOKEN_LENGTH
from ..common.project_folder import NotAProjectError, check_project_folder

DEFAULT_HOST = urllib.parse.urlsplit(DEFAULT_URL).hostname  # the client's default address, served
DEFAULT_PORT = urllib.parse.urlsplit(DEFAULT_URL).port
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
ALLOWED_HOSTS_ENV = "SYNERGYPL_ALLOWED_HOSTS"


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

    - ``token``: shared secret every client sends (``Authorization: Bearer`` or ``X-SynergyPL-Token``);
      ``serve`` fills it from ``--token-file`` / ``SYNERGYPL_TOKEN`` or the project's token file
      (generated on the first start, see :mod:`SynergyPLLib.client.tokens`).
    - ``loopback_without_token``: let clients on this machine in without the token (weaker: any local
      user or process can then use the project). Requests that carry proxy headers (``Forwarded``,
      ``X-Forwarded-For``, ``X-Real-IP``) never count as local.
    - ``token_everywhere``: the token from every client; the default now, kept for old command lines
      (it overrides ``loopback_without_token``).
    - ``allowed_hosts``: Host names accepted besides localhost, IP addresses and the bound address (a
      team server's DNS name); ``"*"`` accepts any (e.g. behind a proxy that checks Host itself).
    - ``max_upload_mb``: None takes the project's ``service.max_upload_mb``.
    - ``predict_idle_seconds``: how long the prediction worker keeps its model loaded while idle.
    """

    project: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    token_everywhere: bool = False
    loopback_without_token: bool = False
    allowed_hosts: tuple[str, ...] = ()
    max_upload_mb: float | None = None
    predict_idle_seconds: float = 600.0
    train_idle_seconds: float = 60.0
    cancel_grace_seconds: float = 30.0
    log_level: str = "info"

    def validate(self) -> ServiceSettings:
        """Raise :class:`SettingsError` for a configuration that must not start."""
        self.check_project()
        if not self.token:
            raise SettingsError("the server has no token: `synergypl serve` reads one from --token-file or "
                                "SYNERGYPL_TOKEN, or keeps one in the project's .synergypl-token file")
        if len(self.token) < MIN_TOKEN_LENGTH:
            raise SettingsError(f"the token is too short: use at least {MIN_TOKEN_LENGTH} characters")
        if not (self.token.isascii() and self.token.isprintable()) or any(ch.isspace() for ch in self.token):
            raise SettingsError("the token must be printable ASCII without spaces (it travels in an HTTP header)")
        if self.loopback_without_token and not is_loopback(self.host):
            raise SettingsError(f"--loopback-without-token is only allowed when listening on 127.0.0.1 or ::1, "
                                f"not {self.host}")
        return self

    def check_project(self) -> None:
        """Raise :class:`SettingsError` unless ``project`` is a SynergyPL project folder."""
        try:
            check_project_folder(self.project)
        except NotAProjectError as exc:
            raise SettingsError(str(exc)) from None

    @property
    def token_required_on_loopback(self) -> bool:
        return self.token_everywhere or not self.loopback_without_token

    def host_names(self) -> frozenset[str]:
        """Host names (lower case, no port) a request may name besides IP addresses: localhost, the
        bound address and ``allowed_hosts``."""
        names = {"localhost", self.host.lower().strip("[]")}
        names.update(h.lower().strip().strip("[]") for h in self.allowed_hosts if h.strip())
        return frozenset(names)

    @staticmethod
    def token_from_env() -> str | None:
        return os.environ.get("SYNERGYPL_TOKEN") or None

    @staticmethod
    def allowed_hosts_from_env() -> tuple[str, ...]:
        """``SYNERGYPL_ALLOWED_HOSTS``: comma-separated Host names."""
        return tuple(h.strip() for h in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip())
