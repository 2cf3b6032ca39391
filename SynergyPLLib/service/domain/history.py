"""Training history: every training round, oldest first, with its parameters, metrics and result."""

from __future__ import annotations

from sqlalchemy import select

from ..store.db import Job
from ..store.workspace import Workspace


def training_rounds(ws: Workspace) -> list[dict]:
    """What GET /api/train/history returns: one entry per training job (``data`` left out of params)."""
    with ws.db.Session() as s:
        rows = list(s.scalars(select(Job).where(Job.kind == "train").order_by(Job.id)))
    out = []
    for j in rows:
        res = j.result or {}
        out.append({"job_id": j.id, "status": j.status, "model_version": j.model_version,
                    "created_at": j.created_at.isoformat(),
                    "finished_at": j.finished_at.isoformat() if j.finished_at else None,
                    "params": {k: v for k, v in (j.params or {}).items() if k != "data"},
                    "metrics": res.get("metrics", {}), "history": res.get("history", []), "error": j.error})
    return out
