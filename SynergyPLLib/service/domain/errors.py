"""Errors of the service's rules, each with a sentence for a person; no HTTP here.

:mod:`..api.errors` gives each its HTTP status and turns it into a ``{"detail": "<message>"}`` body;
extra keyword arguments are added to the body (e.g. ``latest_version`` on a label conflict).
"""

from __future__ import annotations


class ServiceError(Exception):
    def __init__(self, detail: str, **extra) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequest(ServiceError):
    """The request is malformed or names something invalid."""


class NotFound(ServiceError):
    """What the request names does not exist."""


class Conflict(ServiceError):
    """The request conflicts with the current state (a newer version, a running job, ...)."""


class TooLarge(ServiceError):
    """An upload is over a limit."""


class Unprocessable(ServiceError):
    """An upload is well-formed but cannot be used (wrong grid, unreadable volume, ...)."""


class PacsUnavailable(ServiceError):
    """The PACS cannot be reached, refused us, or answered something unusable."""


class PacsTimeout(ServiceError):
    """The PACS did not answer in time."""
