"""``synergypl serve``: run the API on uvicorn for one project.

One server per project: a lock file (``<project>/.serve.lock``, flock) refuses a second one with a clear
message. Settings are validated first; the server's token (given, or kept in the project's
``.synergypl-token``, generated on the first start) is written to that file for local clients.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from .settings import ServiceSettings, SettingsError


class ProjectLock:
    """Exclusive, process-lifetime lock on a project folder."""

    def __init__(self, project: Path) -> None:
        self.path = Path(project) / ".serve.lock"
        self.fh = None

    def acquire(self) -> None:
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            raise SettingsError(f"project {self.path.parent} is already being served (pid {holder}); "
                                "stop that server first") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()

    def release(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def with_project_token(settings: ServiceSettings) -> tuple[ServiceSettings, Path]:
    """``settings`` with its token: the one given, else the project's stored token, else a new one;
    validated, then stored in the project's token file (0600) so local clients find it. Returns the
    settings and the token file's path."""
    from ..client.tokens import ensure_project_token, new_token, token_for_project

    token = settings.token or token_for_project(settings.project) or new_token()
    settings = replace(settings, token=token).validate()
    try:
        _, path = ensure_project_token(settings.project, token)
    except OSError as exc:
        raise SettingsError(f"cannot write the project's token file in {settings.project}: {exc}") from None
    return settings, path


def serve(settings: ServiceSettings) -> int:
    """Validate, lock the project, run uvicorn until stopped. Returns the exit code."""
    import uvicorn

    from .api.http_protocol import JsonErrorH11Protocol
    from .app import create_app

    settings.check_project()
    lock = ProjectLock(settings.project)
    lock.acquire()
    try:
        settings, token_path = with_project_token(settings)
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
        app = create_app(settings)
        url = f"http://{'[' + settings.host + ']' if ':' in settings.host else settings.host}:{settings.port}"
        who = ("clients on this machine need no token, others send it" if settings.loopback_without_token
               and not settings.token_everywhere else "every client sends the token")
        print(f"SynergyPL serving {settings.project} at {url}/api (docs: {url}/docs); {who}: it is kept in "
              f"{token_path} (`synergypl token --project {settings.project}` prints it)", file=sys.stderr, flush=True)
        # proxy_headers=False: the client address stays the TCP peer's; forwarded requests are judged by
        # their headers in access.py, never trusted as local.
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                    http=JsonErrorH11Protocol, timeout_graceful_shutdown=5,
                    access_log=settings.log_level == "debug", proxy_headers=False)
    finally:
        lock.release()
    return 0
