"""GET /api/info, GET /api/health, model versions (list, activate = rollback)."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Depends, Path

from ... import SERVICE_VERSION
from ...domain.cases import list_cases
from ...domain.models import activate, list_models
from ...store.registry import active_version
from ..deps import AppState, get_state
from ..schemas import MAX_ID, HealthOut, InfoOut, ModelOut, common_errors, errors

router = APIRouter(tags=["project"], responses=common_errors())


@router.get("/health", response_model=HealthOut, summary="Liveness check")
def health() -> dict:
    return {"status": "ok", "server_version": SERVICE_VERSION}


@router.get("/info", response_model=InfoOut, summary="Project, classes, models, jobs, device")
def info(st: AppState = Depends(get_state)) -> dict:
    cfg = st.ws.config
    counts = Counter(c["status"] for c in list_cases(st.ws))
    return {
        "name": cfg.name, "description": cfg.description, "server_version": SERVICE_VERSION,
        "background": {"value": 0, "name": cfg.background},
        "classes": [c.model_dump(exclude_none=True) for c in cfg.classes],
        "models": list_models(st.ws), "active_model": active_version(st.ws),
        "jobs": st.jobs.current(), "device": st.device(),
        "cases": {"total": sum(counts.values()), **{k: counts.get(k, 0) for k in
                                                    ("unlabeled", "predicted", "in_review", "confirmed")}},
        "max_upload_mb": st.max_upload_bytes / 2**20,
        "auth": {"token_required": st.settings.token_required_on_loopback,
                 "token_configured": bool(st.settings.token),
                 "allowed_hosts": sorted(st.settings.host_names())},
    }


@router.get("/models", response_model=list[ModelOut], summary="Model versions with validation metrics")
def models(st: AppState = Depends(get_state)) -> list[dict]:
    return list_models(st.ws)


@router.post("/models/{version}/activate", response_model=ModelOut, responses=errors(404),
             summary="Use this model version for predictions (rollback)")
def activate_model(version: int = Path(ge=1, le=MAX_ID), st: AppState = Depends(get_state)) -> dict:
    return activate(st.ws, version)
