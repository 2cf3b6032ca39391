"""The FastAPI application: state, access control, upload limit and JSON errors; routes live in
``routes_*.py``.

In: a :class:`~.settings.ServiceSettings`.  Out: an ASGI app (``create_app``). Starting the app
recovers jobs left running by a previous process and starts the worker supervisor; stopping it ends
the workers.

Access (Host allow-list, refusal of cross-site browser requests, the token every client sends) is
checked by :class:`~.access.AccessMiddleware` before anything else.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import SERVICE_VERSION
from .access import AccessMiddleware
from .body_limit import BodyLimitMiddleware
from .errors import ServiceError
from .jobs import JobManager
from .settings import ServiceSettings
from .workspace import Workspace

log = logging.getLogger("synergypl.app")


PROBE = ("import os, torch\n"
         "n = int(os.environ.get('SYNERGYPL_THREADS', '0') or 0)\n"
         "n and torch.set_num_threads(n)\n"
         "from SynergyPLLib.engine.model import default_device, device_name\n"
         "print(device_name(os.environ.get('SYNERGYPL_DEVICE') or default_device()))")


@dataclass
class AppState:
    ws: Workspace
    settings: ServiceSettings
    jobs: JobManager
    max_upload_bytes: int
    _device: str | None = None
    _device_lock: threading.Lock = field(default_factory=threading.Lock)

    def device(self) -> str:
        """The workers' device (GPU name or CPU threads): reported by a worker when one has run, else
        found once by a short-lived process, so the API process never imports torch."""
        reported = self.ws.db.get_meta("device")
        if reported:
            return reported
        with self._device_lock:
            if not self._device:
                self._device = _probe_device()
        return self._device


def _probe_device() -> str:
    try:
        r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    if r.returncode == 0 and r.stdout.strip():
        return r.stdout.strip().splitlines()[-1]
    return f"unknown (device probe failed: {(r.stderr.strip().splitlines() or [str(r.returncode)])[-1]})"


def state(request: Request) -> AppState:
    return request.app.state.synergypl


def _json(status: int, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "form"))
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def create_app(settings: ServiceSettings) -> FastAPI:
    ws = Workspace(settings.project)
    max_mb = settings.max_upload_mb if settings.max_upload_mb is not None else ws.config.service.max_upload_mb
    max_bytes = int(max_mb * 2**20)
    jobs = JobManager(ws, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        jobs.recover()
        jobs.start()
        try:
            yield
        finally:
            jobs.stop()
            ws.close()

    app = FastAPI(title="SynergyPL", version=SERVICE_VERSION, lifespan=lifespan,
                  description="Interactive semi-supervised labeling of 3D medical images: projects, versioned "
                              "labels, training rounds and predictions with confidence heatmaps. "
                              "Errors are JSON: {\"detail\": \"...\"}.")
    app.state.synergypl = AppState(ws, settings, jobs, max_bytes)

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError):
        return _json(exc.status, exc.detail, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        return _json(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = (f"no such route: {request.method} {request.url.path} (see /docs; case ids cannot "
                      "contain '/')")
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        elif not isinstance(detail, str):
            detail = json.dumps(detail)
        return _json(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("unexpected error")
        return _json(500, f"internal error ({type(exc).__name__}: {exc}); see the service log")

    from . import (
        routes_cases,
        routes_export,
        routes_info,
        routes_jobs,
        routes_labels,
        routes_next,
        routes_predict,
    )

    for mod in (routes_info, routes_cases, routes_labels, routes_predict, routes_jobs, routes_next, routes_export):
        app.include_router(mod.router, prefix="/api")
    from .api.routes import pacs as routes_pacs  # PACS / DICOMweb (issue 12)

    app.include_router(routes_pacs.router, prefix="/api")
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=max_bytes)
    app.add_middleware(AccessMiddleware, settings=settings)  # added last = runs first
    return app
