"""The HTTP routes, thin: parse the request, call the domain, shape the answer."""

from __future__ import annotations

from . import cases, export, info, jobs, labels, next, pacs, predict  # noqa: A004 - ``next`` is the next-case route

#: in the order the app includes them
ROUTERS = [info.router, cases.router, labels.router, predict.router, jobs.router, next.router, export.router, pacs.router]
