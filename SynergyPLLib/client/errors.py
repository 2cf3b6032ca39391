"""Errors raised by the SynergyPL client; every message is meant for a person.

- :class:`ServerError` -- the server answered with an error status (``.status``, ``.message``, ``.body``);
  subclasses by status: :class:`BadRequestError` (400/422), :class:`AuthError` (401),
  :class:`NotFoundError` (404), :class:`ConflictError` (409, e.g. a stale label ``parent_version``;
  ``.body`` then has ``latest_version`` and ``latest_author``), :class:`TooLargeError` (413).
- :class:`ConnectionError` -- the server cannot be reached (also a builtin ``ConnectionError``).
- :class:`TimeoutError` -- no answer in time (also a builtin ``TimeoutError``).
- :class:`JobFailedError` -- a waited-for job ended failed, cancelled or interrupted (``.job``).
"""

from __future__ import annotations

import builtins


class SynergyPLError(Exception):
    """Base class of every client error."""


class ServerError(SynergyPLError):
    def __init__(self, status: int, message: str, body: dict | None = None, method: str = "", url: str = "") -> None:
        self.status, self.message, self.body = status, message, body or {}
        self.method, self.url = method, url
        super().__init__(f"{status}: {message}")


class BadRequestError(ServerError):
    pass


class AuthError(ServerError):
    pass


class NotFoundError(ServerError):
    pass


class ConflictError(ServerError):
    @property
    def latest_version(self) -> int | None:
        return self.body.get("latest_version")

    @property
    def latest_author(self) -> str | None:
        return self.body.get("latest_author")


class TooLargeError(ServerError):
    pass


class ConnectionError(SynergyPLError, builtins.ConnectionError):  # noqa: A001 - the name callers expect
    pass


class TimeoutError(SynergyPLError, builtins.TimeoutError):  # noqa: A001
    pass


class JobFailedError(SynergyPLError):
    def __init__(self, job: dict) -> None:
        self.job = job
        super().__init__(f"{job.get('kind')} job {job.get('id')} {job.get('status')}: {job.get('error') or 'no detail'}")


_BY_STATUS = {400: BadRequestError, 401: AuthError, 404: NotFoundError, 409: ConflictError, 413: TooLargeError,
              422: BadRequestError}


def error_for(status: int, message: str, body: dict | None, method: str = "", url: str = "") -> ServerError:
    return _BY_STATUS.get(status, ServerError)(status, message, body, method, url)
