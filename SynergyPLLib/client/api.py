"""``SynergyPLClient``: one method per route of the SynergyPL service (see docs/api.md).

Standard library only (runs in Slicer's Python: 3.9 in Slicer 5.8, 3.12 in 5.10+). Volumes travel as NRRD bytes: the
download methods return the bytes, or write them to ``path`` and return the path, so Slicer can load
them with its own readers. Errors are raised as the types in :mod:`.errors`.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from ..common.job_status import FINAL_STATES, JobStatus
from .errors import JobFailedError, TimeoutError
from .helper import HelperTransport, Launcher
from .tokens import token_for_project
from .transport import FilePart, Transport

FINAL = FINAL_STATES  # the final job states (kept for existing callers)
DEFAULT_URL = "http://127.0.0.1:8765"


def _q(case_id: str) -> str:
    return urllib.parse.quote(str(case_id), safe="")


def _file_part(name: str, file: str | os.PathLike | bytes, filename: str | None) -> FilePart:
    if isinstance(file, (bytes, bytearray)):
        if not filename:
            raise ValueError("give filename= (with its extension, e.g. 'label.nrrd') when uploading bytes")
        return FilePart(name, filename, data=bytes(file))
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return FilePart(name, filename or path.name, path=path)


class SynergyPLClient:
    """Client of one SynergyPL server.

    ``url``: e.g. ``http://127.0.0.1:8765``; ``token``: the server's token (every request needs it,
    except ``/api/health``); ``project``: the project folder of a server on this machine, whose token
    is then read from ``<project>/.synergypl-token`` when ``token`` is not given (see
    :func:`~.tokens.token_for_project`); ``timeout``: seconds for one request (uploads/downloads of big
    volumes may need more); ``launcher``: run file uploads and downloads to a path in a helper process
    started through it (see :mod:`.helper`; the Slicer panel passes one driven by its GUI thread), else
    in this thread.
    """

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 60.0,
                 project: str | os.PathLike | None = None, launcher: Launcher | None = None) -> None:
        if token is None and project is not None:
            token = token_for_project(project)
        self.http = Transport(url, token, timeout) if launcher is None else HelperTransport(url, token, timeout, launcher)

    @property
    def url(self) -> str:
        return self.http.base_url

    def _json(self, method: str, path: str, **kw):
        return self.http.request(method, "/api" + path, **kw).json()

    def _bytes(self, path: str, params: dict | None = None, timeout: float | None = None) -> bytes:
        return self.http.request("GET", "/api" + path, params=params, timeout=timeout).body

    def _fetch(self, path: str, target: str | os.PathLike | None, params: dict | None = None) -> bytes | Path:
        """The body of GET ``path``: bytes, or streamed into ``target`` (returns its Path)."""
        if target is None:
            return self._bytes(path, params)
        return self.http.download("/api" + path, target, params=params)

    # ---- project ---------------------------------------------------------------------------------
    def health(self) -> dict:
        return self._json("GET", "/health")

    def info(self) -> dict:
        """Project name, classes (value, name, color, terminology), models, active model, jobs, device."""
        return self._json("GET", "/info")

    def models(self) -> list[dict]:
        return self._json("GET", "/models")

    def activate_model(self, version: int) -> dict:
        """Use model ``version`` for predictions (rollback to an older round)."""
        return self._json("POST", f"/models/{int(version)}/activate")

    # ---- cases -----------------------------------------------------------------------------------
    def list_cases(self, status: str | None = None) -> list[dict]:
        return self._json("GET", "/cases", params={"status": status})

    def get_case(self, case_id: str) -> dict:
        return self._json("GET", f"/cases/{_q(case_id)}")

    def upload_case(self, file: str | os.PathLike | bytes, case_id: str | None = None,
                    filename: str | None = None, timeout: float | None = None) -> dict:
        """Upload an image (.nrrd, .nii, .nii.gz, .mha, or .zip of one DICOM series) as a new case."""
        return self._json("POST", "/cases", fields={"case_id": case_id}, files=[_file_part("file", file, filename)],
                          timeout=timeout)

    def delete_case(self, case_id: str) -> None:
        self.http.request("DELETE", f"/api/cases/{_q(case_id)}")

    def download_image(self, case_id: str, path: str | os.PathLike | None = None) -> bytes | Path:
        """The case image as NRRD bytes (or saved to ``path``)."""
        return self._fetch(f"/cases/{_q(case_id)}/image", path)

    def next_case(self, predict: bool = True) -> dict:
        """``{"case", "reason", "score", ...}``: the waiting case with the most disagreement."""
        return self._json("GET", "/next-case", params={"predict": predict})

    # ---- labels ----------------------------------------------------------------------------------
    def list_labels(self, case_id: str) -> list[dict]:
        return self._json("GET", f"/cases/{_q(case_id)}/labels")

    def submit_label(self, case_id: str, file: str | os.PathLike | bytes, *, author: str, parent_version: int | None,
                     source: str = "human", status: str | None = None, model_version: int | None = None,
                     filename: str | None = None) -> dict:
        """Store a new label version; ``parent_version`` is the version the edit started from (0/None for
        none). Raises :class:`~.errors.ConflictError` (``latest_version``, ``latest_author``) if stale."""
        fields = {"author": author, "source": source, "parent_version": int(parent_version or 0),
                  "status": status, "model_version": model_version}
        return self._json("POST", f"/cases/{_q(case_id)}/labels", fields=fields,
                          files=[_file_part("file", file, filename)])

    def download_label(self, case_id: str, version: int | str = "latest",
                       path: str | os.PathLike | None = None) -> bytes | Path:
        return self._fetch(f"/cases/{_q(case_id)}/labels/{version}", path)

    # ---- predictions -----------------------------------------------------------------------------
    def predict(self, case_id: str, model_version: int | None = None) -> dict:
        """Queue a prediction; returns the job (see :meth:`wait_job`)."""
        body = {"model_version": model_version} if model_version is not None else None
        return self._json("POST", f"/cases/{_q(case_id)}/predict", json_body=body)

    def prediction(self, case_id: str) -> dict:
        """Latest prediction: model_version, disagreement, flagged regions (ranked)."""
        return self._json("GET", f"/cases/{_q(case_id)}/prediction")

    def download_prediction(self, case_id: str, kind: str = "label",
                            path: str | os.PathLike | None = None) -> bytes | Path:
        """``kind``: label | heatmap | regions; NRRD in the case's geometry."""
        return self._fetch(f"/cases/{_q(case_id)}/prediction/{kind}", path)

    # ---- training and jobs -----------------------------------------------------------------------
    def train(self, iterations: int | None = None, labels: str = "confirmed", method: str | None = None) -> dict:
        """Start a training round; raises ConflictError while another round runs."""
        body = {"labels": labels}
        if iterations is not None:
            body["iterations"] = int(iterations)
        if method is not None:
            body["method"] = method
        return self._json("POST", "/train", json_body=body)

    def train_history(self) -> list[dict]:
        return self._json("GET", "/train/history")

    def jobs(self, kind: str | None = None, status: str | None = None, limit: int = 100) -> list[dict]:
        return self._json("GET", "/jobs", params={"kind": kind, "status": status, "limit": limit})

    def job(self, job_id: int, wait: float = 0.0, since: str | None = None) -> dict:
        params = {"wait": wait, "since": since} if wait else None
        return self._json("GET", f"/jobs/{int(job_id)}", params=params,
                          timeout=self.http.timeout + wait if wait else None)

    def cancel_job(self, job_id: int) -> dict:
        return self._json("POST", f"/jobs/{int(job_id)}/cancel")

    def resume_job(self, job_id: int) -> dict:
        """Continue an interrupted training round from its last checkpoint (a new job)."""
        return self._json("POST", f"/jobs/{int(job_id)}/resume")

    def wait_job(self, job_id: int, timeout: float | None = None, check: bool = True,
                 on_update=None) -> dict:
        """Wait (long-poll) until the job is final. ``check``: raise JobFailedError unless it is done.
        ``on_update(job)`` is called on every change; raises :class:`~.errors.TimeoutError` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.job(job_id)
        while job["status"] not in FINAL:
            if on_update is not None:
                on_update(job)
            left = 20.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
            job = self.job(job_id, wait=max(0.05, min(20.0, left)), since=job["updated_at"])
        if on_update is not None:
            on_update(job)
        if check and job["status"] != JobStatus.DONE:
            raise JobFailedError(job)
        return job

    def events(self, job_id: int, timeout: float = 60.0) -> Iterator[dict]:
        """Server-sent events of a job: ``{"event": "status"|"progress"|"end", "id", "data"}``; ends after
        ``end``. ``timeout``: longest silence tolerated (the server sends a keep-alive every 10 s)."""
        for ev in self.http.events(f"/api/jobs/{int(job_id)}/events", timeout=timeout):
            yield ev
            if ev["event"] == "end":
                return

    # ---- export ----------------------------------------------------------------------------------
    def export(self, case_id: str, format: str = "seg.nrrd", version: int | None = None,  # noqa: A002
               path: str | os.PathLike | None = None) -> bytes | Path:
        """A label version as ``seg.nrrd`` (Slicer), ``nifti`` or ``dicom-seg``."""
        return self._fetch(f"/cases/{_q(case_id)}/export", path, {"format": format, "version": version})
