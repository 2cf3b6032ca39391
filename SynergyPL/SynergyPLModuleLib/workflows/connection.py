"""Which server: configure, check the connection, and run work that needs the server's info.

A piece of :class:`~SynergyPLModuleLib.logic.LabelingLogic`: its state (client, scene nodes,
current case) and signals are the facade's, shared by every piece; results go out through signals only.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..background import CallContext
from ..messages import ServerInfo, _client_module
from ..scene import terminology
from .base import LogicBase


class ConnectionWorkflow(LogicBase):
    """The server: configure it, check the connection, run work that needs its info.

    Mixed into the facade (:class:`~SynergyPLModuleLib.logic.LabelingLogic`), whose state and signals it uses.
    """

    def configure(self, url: str, token: str | None = None, project: str | os.PathLike | None = None) -> None:
        """Use this server from now on (forgets the previous server's info if the URL changed).

        ``project``: the folder of a server this panel started on this machine; without a typed
        ``token``, the token is read from the project's token file at each request (the server writes
        it when it starts)."""
        url = (url or "").strip().rstrip("/") or _client_module().DEFAULT_URL
        if "://" not in url:
            url = "http://" + url
        token = (token or "").strip() or None
        self.project = str(project) if project else None
        if url != self.url or token != self.token:
            self.url, self.token = url, token
            self.server = None
            self.server_changed.emit(None)

    def check_connection(self) -> None:
        """Ask the server for its project, classes, device and active model (``server_changed``)."""
        self._connect()

    def _connect(self, after: Callable[[ServerInfo], None] | None = None) -> None:
        url = self.url

        def work(ctx: CallContext):
            return self._client(timeout=min(self.timeout, 15.0)).info()

        def done(info: dict) -> None:
            self._apply_info(url, info)
            self.status.emit(f"Connected: {self.server.summary()}.")
            if after is not None:
                after(self.server)

        self._start("connect", work, done)

    def _apply_info(self, url: str, info: dict) -> None:
        classes = terminology.classes_from_dicts(info.get("classes") or [])
        self.server = ServerInfo(url=url, project=str(info.get("name", "")), device=str(info.get("device", "?")),
                                 server_version=str(info.get("server_version", "?")),
                                 active_model=info.get("active_model"), classes=classes,
                                 cases=dict(info.get("cases") or {}),
                                 training_job=(info.get("jobs") or {}).get("training"))
        if self.model_version is None or self.model_version not in {m.get("version") for m in info.get("models", [])}:
            self.model_version = self.server.active_model
            self.model_version_changed.emit(self.model_version)
        self.server_changed.emit(self.server)

    def _with_server(self, action: str, then: Callable[[ServerInfo], None]) -> None:
        """Run ``then(server)`` now if connected, else after a connection check."""
        if self.server is not None and self.server.url == self.url:
            then(self.server)
        else:
            self._connect(then)
