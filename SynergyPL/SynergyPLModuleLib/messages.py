"""What the panel shows in words: the server summary, training progress, error sentences, and what it
takes from the Slicer application by default: the author, a volume's DICOM files, the slice views'
logics (no Qt; each default gives an empty answer outside the application)."""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from pathlib import Path

from SynergyPLLib.common.job_status import JobStatus

from . import grids
from .background import CallCancelled
from .scene import nodes, terminology

DICOM_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"  # set by Slicer's DICOM module on volumes it loaded


def _client_module():
    """The service's client package (standard library only), imported when first needed."""
    from SynergyPLLib import client

    return client


def describe_error(exc: BaseException) -> str:
    """One sentence a radiologist can act on."""
    client = _client_module()
    if isinstance(exc, client.AuthError):
        if "needs a token" in exc.message:
            return ("The server needs a token: type it in the Server section (for a server on this computer, "
                    "'synergypl token --project FOLDER' prints it; Start local server finds it itself).")
        return "The server refused the token: check the token in the Server section."
    if isinstance(exc, client.ConnectionError):
        return f"The server cannot be reached: {exc}"
    if isinstance(exc, client.TimeoutError):
        return f"The server did not answer in time: {exc}"
    if isinstance(exc, client.TooLargeError):
        return f"The server refused the file as too large: {exc.message}"
    if isinstance(exc, client.JobFailedError):
        job = exc.job
        what = "Prediction" if job.get("kind") == "predict" else "Training"
        return f"{what} job {job.get('id')} {job.get('status')}: {job.get('error') or 'no detail from the server'}"
    if isinstance(exc, client.ServerError):
        if exc.status >= 500:
            return f"The server failed while handling the request (HTTP {exc.status}): {exc.message}"
        return f"The server refused the request: {exc.message}"
    if isinstance(exc, (grids.GridMismatch, nodes.SceneError)):
        return str(exc)
    if isinstance(exc, CallCancelled):
        return "Cancelled."
    return f"{type(exc).__name__}: {exc}"


@dataclass
class ServerInfo:
    """What the connection check shows."""

    url: str
    project: str
    device: str
    server_version: str
    active_model: int | None
    classes: list[terminology.SegmentClass]
    cases: dict = field(default_factory=dict)
    training_job: dict | None = None

    @property
    def key(self) -> str:
        """Identifies the server+project a case id belongs to (stored on volume nodes)."""
        return f"{self.url}|{self.project}"

    def summary(self) -> str:
        model = f"model v{self.active_model}" if self.active_model is not None else "no model yet"
        return f"{self.project} on {self.device} ({model}, server {self.server_version})"


@dataclass
class TrainingProgress:
    """A training round's progress as the panel shows it."""

    job_id: int
    status: str
    phase: str = ""
    iteration: int = 0
    total: int = 0
    loss: float | None = None
    val_dice: float | None = None
    best_val_dice: float | None = None
    eta_seconds: float | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.iteration / self.total) if self.total else 0.0

    @classmethod
    def from_job(cls, job: dict) -> TrainingProgress:
        progress = job.get("progress") or {}
        return cls(job_id=int(job.get("id", 0)), status=str(job.get("status", "")),
                   phase=str(progress.get("phase", "")), iteration=int(progress.get("iteration") or 0),
                   total=int(progress.get("total") or 0), loss=_loss_value(progress.get("losses")),
                   val_dice=_float(progress.get("val_dice")), best_val_dice=_float(progress.get("best_val_dice")),
                   eta_seconds=_float(progress.get("eta_seconds")))

    def text(self) -> str:
        parts = [f"{self.status}" + (f" ({self.phase})" if self.phase and self.phase != self.status else "")]
        if self.total:
            parts.append(f"iteration {self.iteration}/{self.total}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.val_dice is not None:
            parts.append(f"validation Dice {self.val_dice:.3f}")
        if self.eta_seconds is not None and self.status == JobStatus.RUNNING:
            parts.append(f"ETA {_duration(self.eta_seconds)}")
        return ", ".join(parts)


def training_summary(job: dict) -> str:
    """'model v3, validation Dice 0.842 (200 iterations)' for a finished training job."""
    metrics = (job.get("result") or {}).get("metrics") or {}
    dice = metrics.get("val_dice", (job.get("progress") or {}).get("best_val_dice"))
    text = f"model v{job.get('model_version')}"
    if dice is not None:
        text += f", validation Dice {float(dice):.3f}"
    if metrics.get("iterations"):
        text += f" ({metrics['iterations']} iterations)"
    return text


def _float(value) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _loss_value(losses) -> float | None:
    if isinstance(losses, dict):
        for key in ("total", "loss", "sup", "supervised"):
            if key in losses:
                return _float(losses[key])
        values = [_float(v) for v in losses.values()]
        values = [v for v in values if v is not None]
        return sum(values) if values else None
    if isinstance(losses, (list, tuple)):
        return _float(losses[-1]) if losses else None
    return _float(losses)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def default_author() -> str:
    """The user name from Slicer's settings (Edit > Application Settings > User), else the login."""
    try:
        import slicer

        name = slicer.app.applicationLogic().GetUserInformation().GetName()
        if name:
            return str(name)
    except Exception:  # outside the Slicer application
        pass
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def default_dicom_files(volume_node) -> list[Path]:
    """The DICOM files a volume was loaded from (Slicer's DICOM database), or [] if not from DICOM."""
    uids = (volume_node.GetAttribute(DICOM_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        return []
    try:
        import slicer

        database = slicer.dicomDatabase
    except Exception:
        return []
    files = [database.fileForInstance(uid) for uid in uids] if database is not None else []
    return [Path(f) for f in files if f and Path(f).exists()]


def default_slice_logics() -> list:
    """The ``vtkMRMLSliceLogic`` of each slice view of the Slicer application (as ``slicer.util`` uses to
    fit the views), or [] outside the application."""
    try:
        import slicer

        collection = slicer.app.applicationLogic().GetSliceLogics()
    except Exception:  # outside the Slicer application
        return []
    if collection is None:
        return []
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
