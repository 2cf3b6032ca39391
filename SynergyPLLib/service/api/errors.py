"""Errors as HTTP answers: the status of each domain error, and the JSON error handlers of the app.

Every error body is ``{"detail": "<a sentence for a person>"}``; a domain error's extra keyword
arguments are added to it (e.g. ``latest_version`` on a label conflict).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..domain.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PacsTimeout,
    PacsUnavailable,
    ServiceError,
    TooLarge,
    Unprocessable,
)

log = logging.getLogger("synergypl.app")

#: the HTTP status of each domain error (a subclass gets its nearest listed base's)
STATUS: dict[type[ServiceError], int] = {
    BadRequest: 400, NotFound: 404, Conflict: 409, TooLarge: 413, Unprocessable: 422,
    PacsUnavailable: 502, PacsTimeout: 504, ServiceError: 400}


def status_of(exc: ServiceError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def json_error(status: int, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "form"))
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error, expected or not, with a JSON ``detail``."""

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError):
        return json_error(status_of(exc), exc.detail, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        return json_error(422, _validation_message(exc))

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
        return json_error(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("unexpected error")
        return json_error(500, f"internal error ({type(exc).__name__}: {exc}); see the service log")
