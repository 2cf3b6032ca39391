"""The FastAPI application factory: state, access control, upload limit, JSON errors and the routes
of :mod:`.api.routes`.

In: a :class:`~.settings.ServiceSettings`.  Out: an ASGI app (``create_app``). Starting the app
recovers jobs left running by a previous process and starts the worker supervisor; stopping it ends
the workers. Only :mod:`.server` (and tests) import this module; routes get the state through
:func:`.api.deps.get_state`.

Access (Host allow-list, refusal of cross-site browser requests, the token every client sends) is
checked by :class:`~.api.access.AccessMiddleware` before anything else.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import SERVICE_VERSION
from .api.access import AccessMiddleware
from .api.body_limit import BodyLimitMiddleware
from .api.deps import AppState
from .api.errors import install_error_handlers
from .api.routes import ROUTERS
from .jobs.queue import JobManager
from .settings import ServiceSettings
from .store.workspace import Workspace


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
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router, prefix="/api")
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=max_bytes)
    app.add_middleware(AccessMiddleware, settings=settings)  # added last = runs first
    return app
