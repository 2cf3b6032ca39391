"""Who may use the API: Host allow-list, refusal of cross-site browser requests, and the token.

In: a :class:`~.settings.ServiceSettings`.  Out: :class:`AccessMiddleware` (pure ASGI, so SSE streams
pass), which answers a refused request with a JSON error before any route runs. In order:

1. **Host** (every request): the ``Host`` header must name localhost, an IP address, the bound address
   or one of ``allowed_hosts``, else 403 -- a page on ``evil.example`` that rebinds its DNS name to
   127.0.0.1 sends ``Host: evil.example`` (DNS rebinding).
2. **Browser pages of other sites**: a state-changing request (POST, PUT, PATCH, DELETE) whose
   ``Origin`` is not this server's own, or whose ``Sec-Fetch-Site`` is ``cross-site`` (or
   ``same-site``: a page on another port of localhost is another origin), gets 403; so
   does any ``/api`` request with a foreign ``Origin`` or from a cross-site page. Browsers send these
   headers on "simple" requests (``text/plain``, multipart forms) that need no CORS preflight; curl,
   the Python client and Slicer send no ``Origin`` and pass.
3. **Token** (every route but ``/api/health`` and the API documents): ``Authorization: Bearer <token>``
   or ``X-SynergyPL-Token``. A wrong token is 401 from anywhere; a missing one is 401 unless the server
   runs with ``loopback_without_token`` and the request comes from loopback *without* proxy headers.
"""

from __future__ import annotations

import hmac
import ipaddress
import urllib.parse

from fastapi.responses import JSONResponse

from ...client.tokens import token_file
from ..settings import ServiceSettings, is_loopback

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")
OPEN_PATHS = frozenset({"/api/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def split_host(value: str) -> str:
    """The host name of a ``Host`` header value (``name:port``, ``[v6]:port``), lower case, no port."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") > 1:  # a bare IPv6 address
        return value
    return value.rsplit(":", 1)[0] if ":" in value else value


def host_allowed(host_header: str | None, names: frozenset[str]) -> bool:
    """True when a request naming ``host_header`` may be served: no header (not a browser), an IP
    address (a page loaded from an IP address is this server's own), or a name in ``names``."""
    if host_header is None or "*" in names:
        return True
    host = split_host(host_header)
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host in names


def _netloc(value: str, default_port: int) -> str:
    """``host:port`` of a URL or Host value, with the default port filled in, for comparing."""
    parts = urllib.parse.urlsplit(value if "//" in value else "//" + value)
    try:
        port = parts.port
    except ValueError:
        return value.lower()
    host = (parts.hostname or "").lower()
    return f"{host}:{port or default_port}"


def cross_site_reason(method: str, path: str, headers: dict[str, str]) -> str | None:
    """Why a browser request from another site is refused, or None when it may pass."""
    origin = headers.get("origin")
    fetch_site = headers.get("sec-fetch-site", "").lower()
    if method not in STATE_CHANGING and not path.startswith("/api/"):
        return None
    if origin is not None:
        host = headers.get("host", "")
        scheme = "https" if origin.lower().startswith("https:") else "http"
        default = 443 if scheme == "https" else 80
        if origin.lower() == "null" or _netloc(origin, default) != _netloc(host, default):
            return (f"cross-site request refused: a web page from {origin} may not use this SynergyPL server "
                    f"(its Origin is not this server's own, {host or 'unknown host'}). Scripts, the SynergyPL "
                    "client and Slicer send no Origin header and are not affected.")
    if fetch_site in ("cross-site", "same-site"):  # same-site: another port of localhost is another origin
        return (f"cross-site request refused: a web page of another site may not use this SynergyPL server "
                f"(Sec-Fetch-Site: {fetch_site}). Scripts, the SynergyPL client and Slicer are not affected.")
    return None


def presented_token(headers: dict[str, str]) -> str | None:
    """The token a request carries (``X-SynergyPL-Token`` or ``Authorization: Bearer``), or None."""
    token = headers.get("x-synergypl-token")
    auth = headers.get("authorization", "")
    if token is None and auth.lower().startswith("bearer "):
        token = auth[7:].strip()
    return token


def is_local(client_host: str, headers: dict[str, str]) -> bool:
    """A loopback peer that is not a proxy relaying someone else (no forwarding headers)."""
    return is_loopback(client_host) and not any(h in headers for h in PROXY_HEADERS)


def _json(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class AccessMiddleware:
    """Host, cross-site and token checks in front of every route (see the module docstring)."""

    def __init__(self, app, settings: ServiceSettings) -> None:
        self.app = app
        self.settings = settings
        self.token = (settings.token or "").encode()
        self.names = settings.host_names()
        self.loopback_free = not settings.token_required_on_loopback
        self.token_file = token_file(settings.project)

    def refusal(self, scope) -> JSONResponse | None:
        """The error answer for a refused request, or None when it may pass."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method, path = scope.get("method", "GET").upper(), scope.get("path", "")
        if not host_allowed(headers.get("host"), self.names):
            shown = ", ".join(sorted(self.names | {"127.0.0.1", "::1", "IP addresses"}))
            return _json(403, f"Host {headers.get('host')!r} is not a name of this server ({shown}); a request "
                              "naming another host is refused to stop DNS rebinding. A team server's DNS name is "
                              "allowed with `synergypl serve --allowed-host NAME` or SYNERGYPL_ALLOWED_HOSTS.")
        reason = cross_site_reason(method, path, headers)
        if reason:
            return _json(403, reason)
        if path in OPEN_PATHS and method in ("GET", "HEAD"):
            return None
        token = presented_token(headers)
        client = (scope.get("client") or ("", 0))[0]
        if token is not None:
            if not self.token or not hmac.compare_digest(token.encode(), self.token):
                return _json(401, "wrong token: the token sent does not match this server's token",
                             {"WWW-Authenticate": "Bearer"})
            return None
        if self.loopback_free and is_local(client, headers):
            return None
        hint = ""
        if is_local(client, headers):
            hint = (f" A server on this machine keeps its token in {self.token_file} (readable by the user who "
                    "runs it): SynergyPLClient(url, project=FOLDER) and the Slicer panel's Start local server "
                    "read it, `synergypl token --project FOLDER` prints it.")
        return _json(401, "this server needs a token: send 'Authorization: Bearer <token>' or "
                          "'X-SynergyPL-Token: <token>'." + hint, {"WWW-Authenticate": "Bearer"})

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refused = self.refusal(scope)
            if refused is not None:
                return await refused(scope, receive, send)
        return await self.app(scope, receive, send)
