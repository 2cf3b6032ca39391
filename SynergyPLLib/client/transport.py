"""HTTP for the client with the standard library only: JSON requests, multipart uploads streamed from
disk, downloads, and server-sent events.

In: method, path, query, body.  Out: :class:`Reply` (status, headers, body bytes) or a raised error from
:mod:`.errors`.
"""

from __future__ import annotations

import builtins
import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ConnectionError, TimeoutError, error_for

CHUNK = 1 << 16
DOWNLOAD_CHUNK = 1 << 20


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body.decode("utf-8")) if self.body else None


@dataclass
class FilePart:
    """A file field of a multipart upload: a path on disk or bytes in memory."""

    name: str
    filename: str
    path: Path | None = None
    data: bytes | None = None
    content_type: str = "application/octet-stream"

    def size(self) -> int:
        return len(self.data) if self.data is not None else os.path.getsize(self.path)

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        with open(self.path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk


def multipart(fields: dict[str, object], files: list[FilePart]) -> tuple[str, int, Iterable[bytes]]:
    """(content type, length, body chunks) of a multipart/form-data body; files are streamed."""
    boundary = f"synergypl-{uuid.uuid4().hex}"
    pieces: list[bytes | FilePart] = []
    for key, value in fields.items():
        if value is None:
            continue
        pieces.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for f in files:
        safe = f.filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        pieces.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{f.name}"; filename="{safe}"\r\n'
                      f"Content-Type: {f.content_type}\r\n\r\n".encode())
        pieces.append(f)
        pieces.append(b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    length = sum(p.size() if isinstance(p, FilePart) else len(p) for p in pieces)

    def body() -> Iterator[bytes]:
        for p in pieces:
            if isinstance(p, FilePart):
                yield from p.chunks()
            else:
                yield p

    return f"multipart/form-data; boundary={boundary}", length, body()


class Transport:
    """Requests against ``base_url`` (e.g. ``http://127.0.0.1:8765``), adding the token header."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
        self._opener = urllib.request.build_opener(*handlers)

    def url(self, path: str, params: dict | None = None) -> str:
        q = {k: v for k, v in (params or {}).items() if v is not None}
        for k, v in q.items():
            if isinstance(v, bool):
                q[k] = "true" if v else "false"
        return self.base_url + path + ("?" + urllib.parse.urlencode(q) if q else "")

    def _open(self, method: str, url: str, *, body=None, headers: dict | None = None, timeout: float | None = None):
        hdrs = {"Accept": "application/json", **(headers or {})}
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=body, method=method, headers=hdrs)
        try:
            return self._opener.open(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            raw = exc.read() if exc.fp is not None else b""
            try:
                data = json.loads(raw.decode("utf-8")) if raw else {}
            except (ValueError, UnicodeDecodeError):
                data = {}
            msg = data.get("detail") if isinstance(data, dict) else None
            msg = msg if isinstance(msg, str) else (raw.decode("utf-8", "replace")[:500] or exc.reason)
            raise error_for(exc.code, str(msg), data if isinstance(data, dict) else {}, method, url) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, builtins.TimeoutError):
                raise TimeoutError(f"{method} {url}: no answer within {timeout or self.timeout:.0f} s") from None
            raise ConnectionError(f"cannot reach the SynergyPL server at {self.base_url} ({reason}); "
                                  "is `synergypl serve` running and the address right?") from None
        except builtins.TimeoutError:
            raise TimeoutError(f"{method} {url}: no answer within {timeout or self.timeout:.0f} s") from None
        except (http.client.HTTPException, builtins.ConnectionError) as exc:
            raise ConnectionError(f"the connection to {self.base_url} failed ({type(exc).__name__}: {exc}); "
                                  "the server may have stopped") from None

    def request(self, method: str, path: str, *, params: dict | None = None, json_body=None,
                fields: dict | None = None, files: list[FilePart] | None = None,
                timeout: float | None = None) -> Reply:
        url = self.url(path, params)
        headers: dict[str, str] = {}
        body = None
        if files is not None or fields is not None:
            ctype, length, body = multipart(fields or {}, files or [])
            headers.update({"Content-Type": ctype, "Content-Length": str(length)})
        elif json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif method in ("POST", "PUT"):
            body = b""
        resp = self._open(method, url, body=body, headers=headers, timeout=timeout)
        try:
            with resp:
                data = resp.read()
        except builtins.TimeoutError:
            raise TimeoutError(f"{method} {url}: the answer did not arrive within {timeout or self.timeout:.0f} s") from None
        except (http.client.HTTPException, builtins.ConnectionError) as exc:
            raise ConnectionError(f"the connection to {self.base_url} broke while reading ({exc})") from None
        return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data)

    def download(self, path: str, target: str | os.PathLike, *, params: dict | None = None,
                 timeout: float | None = None) -> Path:
        """GET ``path`` and stream the body into ``target`` (written as ``target.part``, then renamed, so
        a broken transfer never leaves a half file under the real name). Returns the path."""
        url = self.url(path, params)
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        resp = self._open("GET", url, timeout=timeout)
        try:
            with resp, open(part, "wb") as out:
                while True:
                    chunk = resp.read(DOWNLOAD_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
        except builtins.TimeoutError:
            part.unlink(missing_ok=True)
            raise TimeoutError(f"GET {url}: the answer did not arrive within {timeout or self.timeout:.0f} s") from None
        except (http.client.HTTPException, builtins.ConnectionError) as exc:
            part.unlink(missing_ok=True)
            raise ConnectionError(f"the connection to {self.base_url} broke while reading ({exc})") from None
        os.replace(part, target)
        return target

    def events(self, path: str, timeout: float | None = None) -> Iterator[dict]:
        """Server-sent events as ``{"event", "id", "data"}`` dicts (data parsed as JSON when possible)."""
        resp = self._open("GET", self.url(path), headers={"Accept": "text/event-stream"}, timeout=timeout)
        event, data, eid = "message", [], None
        try:
            with resp:
                for raw in resp:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if not line:
                        if data:
                            text = "\n".join(data)
                            try:
                                payload = json.loads(text)
                            except ValueError:
                                payload = text
                            yield {"event": event, "id": eid, "data": payload}
                        event, data, eid = "message", [], None
                    elif line.startswith(":"):
                        continue
                    else:
                        key, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if key == "event":
                            event = value
                        elif key == "data":
                            data.append(value)
                        elif key == "id":
                            eid = value
        except builtins.TimeoutError:
            raise TimeoutError(f"no event from {self.base_url}{path} within {timeout or self.timeout:.0f} s") from None
        except (http.client.HTTPException, builtins.ConnectionError) as exc:
            raise ConnectionError(f"the event stream from {self.base_url} broke ({exc})") from None

