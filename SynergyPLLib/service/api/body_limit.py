"""The request-body limit, enforced while the body streams in (pure ASGI middleware).

- ``Content-Length`` over the limit: 413 before any byte of the body is read; a ``Content-Length``
  that is not one non-negative integer (``-1``, ``abc``, two different values): 400, as JSON.
- A body without ``Content-Length`` (``Transfer-Encoding: chunked``) is counted as it arrives; the
  message that crosses the limit raises a 413 ``HTTPException`` inside the app (FastAPI re-raises it
  from the form parser, whose spooled temporary files are closed), so at most the limit is ever
  buffered, never the whole upload.

In: the ASGI app and the limit in bytes (the upload limit plus room for the multipart envelope).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

ENVELOPE_BYTES = 1_000_000  # multipart boundaries and form fields around the file


def too_large_message(length: int | None, max_upload_bytes: int) -> str:
    size = f"upload of {length / 2**20:.1f} MB" if length is not None else "upload"
    return (f"{size} is larger than the limit of {max_upload_bytes / 2**20:.0f} MB "
            "(service.max_upload_mb / --max-upload-mb)")


class BodyLimitMiddleware:
    def __init__(self, app, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.limit = max_upload_bytes + ENVELOPE_BYTES

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        values = {v.decode("latin-1").strip() for k, v in scope.get("headers", []) if k.lower() == b"content-length"}
        if values:
            value = next(iter(values))
            if len(values) > 1 or not value.isdigit():
                shown = ", ".join(sorted(repr(v) for v in values))
                return await JSONResponse({"detail": f"invalid Content-Length header ({shown}): it must be one "
                                                     "non-negative whole number of bytes"},
                                          status_code=400)(scope, receive, send)
            if int(value) > self.limit:
                return await JSONResponse({"detail": too_large_message(int(value), self.max_upload_bytes)},
                                          status_code=413)(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, too_large_message(None, self.max_upload_bytes)
                                        + f"; refused after {received / 2**20:.1f} MB of a body sent without "
                                          "Content-Length")
            return message

        return await self.app(scope, counted_receive, send)
