"""``synergypl serve``: run the API on uvicorn for one project.

One server per project: a lock file (``<project>/.serve.lock``, flock) refuses a second one with a clear
message. Settings are validated first (a non-loopback address without a token is refused).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
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


def serve(settings: ServiceSettings) -> int:
    """Validate, lock the project, run uvicorn until stopped. Returns the exit code."""
    import uvicorn

    from .app import create_app
    from .http_protocol import JsonErrorH11Protocol

    settings.validate()
    lock = ProjectLock(settings.project)
    lock.acquire()
    try:
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
        app = create_app(settings)
        url = f"http://{'[' + settings.host + ']' if ':' in settings.host else settings.host}:{settings.port}"
        print(f"SynergyPL serving {settings.project} at {url}/api (docs: {url}/docs)"
              + ("; token required off loopback" if settings.token else ""), file=sys.stderr, flush=True)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, http=JsonErrorH11Protocol,
                    timeout_graceful_shutdown=5, access_log=settings.log_level == "debug")
    finally:
        lock.release()
    return 0
