"""uvicorn's HTTP/1.1 protocol (h11) with JSON errors for requests it cannot parse.

uvicorn answers a malformed request (``Content-Length: -1``, a broken header line, bad chunked
framing) itself, before the app sees it, with a plain-text 400. This subclass sends the same 400 as
``{"detail": "..."}`` JSON, like every other error of the API. Used by :func:`.server.serve`.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MALFORMED = ("malformed HTTP request: the server could not parse it (for example a Content-Length that is not "
             "one non-negative whole number, a broken header line or bad chunked encoding)")


class JsonErrorH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"detail": MALFORMED}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # h11 refuses to send on a connection it has marked broken
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: "
                                 + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()
