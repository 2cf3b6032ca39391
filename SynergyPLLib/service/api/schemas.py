"""Request and response bodies of the API (pydantic), so the OpenAPI document at ``/openapi.json``
(and ``/docs``) describes every route."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from SynergyPLLib.engine.config import METHODS

from ...common.job_status import JobStatus
from ..store.db import MAX_ID  # noqa: F401 - the bound of every id and version parameter


class ErrorOut(BaseModel):
    """Every error body; some carry more keys (a label conflict adds ``latest_version`` and
    ``latest_author``, a busy training lane ``job_id``)."""

    model_config = ConfigDict(extra="allow")
    detail: str = Field(description="what went wrong, in words a person understands")


ERROR_TEXT = {400: "bad input (the message names the problem)", 401: "token missing or wrong",
              403: "request refused (foreign origin or host)", 404: "not found (the message says what exists)",
              405: "method not allowed", 409: "conflicts with the stored state (the message says how to resolve it)",
              413: "upload larger than the limit", 422: "a parameter or file that cannot be used"}
ERRORS = {s: {"model": ErrorOut, "description": d} for s, d in ERROR_TEXT.items()}
# Statuses any route can answer before it runs: the access and upload-size guard, and request validation.
COMMON_ERRORS = (401, 403, 413, 422)


def errors(*codes: int) -> dict:
    return {c: ERRORS[c] for c in codes}


def common_errors() -> dict:
    """The ``responses`` of every router (see :data:`COMMON_ERRORS`)."""
    return errors(*COMMON_ERRORS)


class HealthOut(BaseModel):
    status: Literal["ok"]
    server_version: str


class CodeOut(BaseModel):
    scheme: str
    code: str
    meaning: str


class TerminologyOut(BaseModel):
    category: CodeOut
    type: CodeOut
    typeModifier: CodeOut | None = None  # noqa: N815


class ClassOut(BaseModel):
    value: int
    name: str
    color: list[int] = Field(description="[r, g, b], 0-255")
    terminology: TerminologyOut


class ModelOut(BaseModel):
    version: int
    job_id: int
    created_at: str
    parent_version: int | None
    active: bool
    file: str = Field(description="model.pt, relative to the project folder")
    sha256: str
    metrics: dict[str, Any]
    data: dict[str, Any] = Field(default_factory=dict)


class JobOut(BaseModel):
    id: int
    kind: Literal["train", "predict"]
    status: JobStatus
    case_id: str | None
    params: dict[str, Any]
    progress: dict[str, Any] = Field(description="train: iteration, total, losses, val_dice, best_val_dice, "
                                                 "eta_seconds, phase, val_curve")
    result: dict[str, Any]
    error: str | None
    model_version: int | None = Field(description="predict: the version used; train: the version made")
    resume_of: int | None
    cancel_requested: bool
    worker_pid: int | None = Field(None, description="the worker process that ran it")
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str | None


class CurrentJobsOut(BaseModel):
    training: JobOut | None
    predictions_queued: int
    predictions_running: int


class InfoOut(BaseModel):
    name: str
    description: str
    server_version: str
    api: str = "/api"
    background: dict[str, Any]
    classes: list[ClassOut] = Field(description="the segments; value 0 is background")
    models: list[ModelOut]
    active_model: int | None
    jobs: CurrentJobsOut
    device: str
    cases: dict[str, int]
    max_upload_mb: float
    auth: dict[str, Any]


class LabelVersionOut(BaseModel):
    version: int
    parent_version: int | None
    author: str
    source: Literal["human", "model"]
    status: Literal["confirmed", "in_review"]
    model_version: int | None
    created_at: str
    sha256: str
    voxels: dict[str, int] = Field(description="voxel count per class value")


class PredictionBrief(BaseModel):
    model_version: int
    job_id: int
    created_at: str
    disagreement: float
    flagged_voxels: int
    regions: int


class CaseOut(BaseModel):
    id: str
    status: Literal["unlabeled", "predicted", "in_review", "confirmed"]
    source_format: str
    original_name: str
    created_at: str
    shape: list[int]
    spacing: list[float]
    origin: list[float]
    direction: list[float]
    has_dicom: bool
    latest_label: LabelVersionOut | None
    prediction: PredictionBrief | None


class TrainIn(BaseModel):
    iterations: int | None = Field(None, ge=1, le=1_000_000, description="default: the project's engine config")
    labels: Literal["confirmed", "all"] = "confirmed"
    method: Literal[METHODS] | None = Field(None, description="engine method; default: the project's (synergypl)")


class PredictIn(BaseModel):
    model_version: int | None = Field(None, ge=1, le=MAX_ID, description="default: the active model")


class RoundOut(BaseModel):
    job_id: int
    status: str
    model_version: int | None
    created_at: str
    finished_at: str | None
    params: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    error: str | None


class NextCaseOut(BaseModel):
    case: CaseOut
    reason: str
    score: float | None
    candidates: int
    queued_predictions: list[int] = Field(default_factory=list)
