"""Model versions as stored: registration after a finished round and the active model (listing and
rollback: :mod:`..domain.models`).

A model version is a row pointing at ``models/job-<n>/model.pt``; the row is inserted (and the model
made active) in the same transaction that marks the training job done, so a crash leaves either the
previous active model or the new one -- never a half-registered one. Older versions stay on disk and
can be activated again (rollback).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from .db import ModelVersion
from .workspace import Workspace

ACTIVE_KEY = "active_model"


def active_version(ws: Workspace) -> int | None:
    return ws.db.get_meta(ACTIVE_KEY)


def next_version(s) -> int:
    return int(s.scalar(select(func.max(ModelVersion.version))) or 0) + 1


def register(ws: Workspace, s, *, job_id: int, model_file: Path, sha256: str, metrics: dict, data: dict,
             parent_version: int | None, make_active: bool = True) -> int:
    """Insert the next model version inside the caller's write transaction ``s``; returns its number."""
    version = next_version(s)
    s.add(ModelVersion(version=version, job_id=job_id, path=ws.rel(model_file), sha256=sha256,
                       parent_version=parent_version, metrics=metrics, data=data))
    if make_active:
        ws.db.set_meta(s, ACTIVE_KEY, version)
    return version
