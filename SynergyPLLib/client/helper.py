"""Volume transfers in a helper process, so they never wait for the GIL of the program that asked.

Why: inside Slicer the GUI thread holds Python's GIL except while it runs Python code, so a transfer
on a Python thread advances only a little at each of the panel's timer ticks (a 20 MB upload took
1.8 s instead of 0.02 s in an emulation). A helper process has its own interpreter: the transfer runs
at full speed and the asking thread only waits, without the GIL, for the process to end.

- :class:`HelperTransport` is a :class:`~.transport.Transport` whose file uploads (multipart parts
  read from disk) and downloads to a path run in ``python -S -c <BOOTSTRAP>`` (stdlib only); every
  other request (small JSON) stays in the calling thread.
- The helper imports what it needs first, then reads the transfer's spec (JSON, with the token: never
  on the command line) from stdin; so a launcher may start it ahead of time and only hand it the spec.
- A launcher runs the helper: ``launcher.run(argv, env, spec) -> (exit code, stdout bytes)``. The
  panel's launcher (:class:`SynergyPLModuleLib.background.ProcessLauncher`) starts, feeds and reaps it on the
  GUI thread and keeps one started ahead; :class:`SubprocessLauncher` runs it in the calling thread.
- The helper prints one JSON line: the reply (status, headers, body) or the error, which is raised
  again in the caller as the same :mod:`.errors` type.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from . import errors
from .transport import FilePart, Reply, Transport

ROOT = Path(__file__).resolve().parents[2]  # the folder holding SynergyPLLib
# os._exit: the answer is flushed; skip the interpreter's teardown (the caller waits for the exit).
BOOTSTRAP = ("import os, sys; sys.path.insert(0, sys.argv[1]); "
             "from SynergyPLLib.client.helper import main; code = main(sys.stdin.read()); "
             "sys.stdout.flush(); os._exit(code)")


class Launcher(Protocol):
    """Runs the helper's command line to its end with ``stdin`` as its input:
    ``run(argv, env, stdin) -> (exit code, stdout bytes)``."""

    def run(self, argv: list[str], env: dict[str, str], stdin: bytes) -> tuple[int, bytes]: ...


class SubprocessLauncher:
    """Runs the helper with :mod:`subprocess` in the calling thread."""

    def run(self, argv: list[str], env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
        done = subprocess.run(argv, env=env, input=stdin, stdout=subprocess.PIPE, check=False)
        return done.returncode, done.stdout


def helper_python() -> str:
    """The interpreter for the helper: this one (in Slicer ``sys.executable`` is PythonSlicer)."""
    if not sys.executable:
        raise errors.ConnectionError("no Python executable is known to run the transfer helper")
    return sys.executable


class HelperTransport(Transport):
    """A :class:`Transport` that moves files in a helper process started by ``launcher``."""

    def __init__(self, base_url: str, token: str | None, timeout: float, launcher: Launcher,
                 python: str | None = None) -> None:
        super().__init__(base_url, token, timeout)
        self.launcher = launcher
        self.python = python
        prepare = getattr(launcher, "prepare", None)
        if prepare is not None:  # a launcher that can start the helper ahead of the first transfer
            prepare(self._argv(), dict(os.environ))

    def _argv(self) -> list[str]:
        return [self.python or helper_python(), "-S", "-c", BOOTSTRAP, str(ROOT)]

    def request(self, method: str, path: str, *, params: dict | None = None, json_body=None,
                fields: dict | None = None, files: list[FilePart] | None = None,
                timeout: float | None = None) -> Reply:
        if not files or any(f.path is None for f in files):
            return super().request(method, path, params=params, json_body=json_body, fields=fields, files=files,
                                   timeout=timeout)
        spec = {"op": "request", "method": method, "path": path, "params": params, "fields": fields,
                "files": [{"name": f.name, "filename": f.filename, "path": str(f.path),
                           "content_type": f.content_type} for f in files],
                "timeout": timeout}
        answer = self._run(spec)
        return Reply(answer["status"], answer["headers"], base64.b64decode(answer["body"]))

    def download(self, path: str, target: str | os.PathLike, *, params: dict | None = None,
                 timeout: float | None = None) -> Path:
        target = Path(target).resolve()
        self._run({"op": "download", "path": path, "params": params, "target": str(target), "timeout": timeout})
        return target

    def _run(self, spec: dict) -> dict:
        spec = {**spec, "base_url": self.base_url, "default_timeout": self.timeout, "token": self.token}
        argv = self._argv()
        try:
            code, out = self.launcher.run(argv, dict(os.environ), json.dumps(spec).encode("utf-8"))
        except OSError as exc:
            raise errors.ConnectionError(f"the transfer helper ({argv[0]}) could not be started: {exc}") from None
        try:
            answer = json.loads(out.decode("utf-8").strip().splitlines()[-1])
        except (ValueError, IndexError, UnicodeDecodeError):
            raise errors.ConnectionError(f"the transfer helper ({argv[0]}) ended with code {code} without an "
                                         "answer; see Slicer's log for its error") from None
        if "error" in answer:
            raise _rebuild(answer["error"])
        return answer


def _rebuild(error: dict) -> BaseException:
    """The exception the helper reported, as the same type."""
    kind, message = error.get("type"), error.get("message", "")
    if error.get("status") is not None:
        return errors.error_for(int(error["status"]), message, error.get("body") or {}, error.get("method", ""),
                                error.get("url", ""))
    if kind == "TimeoutError":
        return errors.TimeoutError(message)
    if kind == "FileNotFoundError":
        return FileNotFoundError(message)
    if kind == "ConnectionError":
        return errors.ConnectionError(message)
    return errors.ConnectionError(f"the transfer failed ({kind}: {message})")


def _describe(exc: BaseException) -> dict:
    if isinstance(exc, errors.ServerError):
        return {"type": type(exc).__name__, "status": exc.status, "message": exc.message, "body": exc.body,
                "method": exc.method, "url": exc.url}
    kind = type(exc).__name__
    if isinstance(exc, errors.TimeoutError):
        kind = "TimeoutError"
    elif isinstance(exc, errors.ConnectionError):
        kind = "ConnectionError"
    return {"type": kind, "message": str(exc)[:2000]}


def main(spec_json: str) -> int:
    """The helper process: do the transfer in ``spec_json``, print one JSON line. Exit code 0 when an
    answer (reply or error) was printed."""
    if not spec_json.strip():
        return 0  # started ahead and never used (the panel closed)
    spec = json.loads(spec_json)
    http = Transport(spec["base_url"], spec.get("token") or None, spec["default_timeout"])
    try:
        if spec["op"] == "download":
            path = http.download(spec["path"], spec["target"], params=spec.get("params"), timeout=spec.get("timeout"))
            answer = {"path": str(path)}
        else:
            files = [FilePart(f["name"], f["filename"], path=Path(f["path"]), content_type=f["content_type"])
                     for f in spec["files"]]
            reply = http.request(spec["method"], spec["path"], params=spec.get("params"), fields=spec.get("fields"),
                                 files=files, timeout=spec.get("timeout"))
            answer = {"status": reply.status, "headers": reply.headers,
                      "body": base64.b64encode(reply.body).decode("ascii")}
    except Exception as exc:  # reported to the caller, which raises it again
        answer = {"error": _describe(exc)}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0
