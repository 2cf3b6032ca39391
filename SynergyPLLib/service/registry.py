"""Model versions: registration after a finished round, the active model, rollback.

A model version is a row pointing at ``models/job-<n>/model.pt``; the row is inserted (and the model
made active) in the same transaction that marks the training job done, so a crash leaves either the
previous active model or the new one -- never a half-registered one. Older versions stay on disk and
can be activated again (rollback).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from .db import MAX_ID, ModelVersion
from .errors import NotFound
from .workspace import Workspace

ACTIVE_KEY = "active_model"


def active_version(ws: Workspace) -> int | None:
    return ws.db.get_meta(ACTIVE_KEY)


def model_info(mv: ModelVersion, active: int | None) -> dict:
    return {"version": mv.version, "job_id": mv.job_id, "created_at": mv.created_at.isoformat(),
            "parent_version": mv.parent_version, "active": mv.version == active, "file": mv.path,
            "sha256": mv.sha256, "metrics": mv.metrics,
            "data": mv.data}


def list_models(ws: Workspace) -> list[dict]:
    active = active_version(ws)
    with ws.db.Session() as s:
        return [model_info(m, active) for m in s.scalars(select(ModelVersion).order_by(ModelVersion.version))]


def activate(ws: Workspace, version: int) -> dict:
    """Make ``version`` the model used by predictions (404 if it does not exist)."""
    with ws.db.write_session() as s:
        mv = s.get(ModelVersion, version) if 1 <= version <= MAX_ID else None
        if mv is None:
            have = [m.version for m in s.scalars(select(ModelVersion).order_by(ModelVersion.version))]
            raise NotFound(f"no model version {version} (versions: {have or 'none yet; train first'})")
        ws.db.set_meta(s, ACTIVE_KEY, version)
        return model_info(mv, version)


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


def model_file(ws: Workspace, version: int) -> Path:
    with ws.db.Session() as s:
        mv = s.get(ModelVersion, version) if 1 <= version <= MAX_ID else None
        if mv is None:
            raise NotFound(f"no model version {version}")
        return ws.abs(mv.path)
