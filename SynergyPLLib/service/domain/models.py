"""Model versions as the API shows them: the list, and activating one (rollback).

Older versions stay on disk and can be activated again; registration: :mod:`..store.registry`.
"""

from __future__ import annotations

from sqlalchemy import select

from ..store.db import MAX_ID, ModelVersion
from ..store.registry import ACTIVE_KEY, active_version
from ..store.workspace import Workspace
from .errors import NotFound


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
