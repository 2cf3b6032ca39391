"""Errors the service answers with, each carrying the HTTP status and a sentence for a person.

The API turns them into ``{"detail": "<message>"}`` JSON bodies (see :mod:`.app`); extra keyword
arguments are added to the body (e.g. ``latest_version`` on a label conflict).
"""

from __future__ import annotations


class ServiceError(Exception):
    status = 400

    def __init__(self, detail: str, **extra) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequest(ServiceError):
    status = 400


class Unauthorized(ServiceError):
    status = 401


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class TooLarge(ServiceError):
    status = 413


class Unprocessable(ServiceError):
    status = 422
