"""Predictions: queue one for a case; read the latest (flagged regions JSON naming the model version,
and the label / heatmap / region-map volumes as NRRD in the case's geometry)."""

from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter, Body, Depends, Response
from fastapi.responses import FileResponse

from .app import AppState, state
from .cases import get_case_row
from .db import latest_prediction
from .errors import NotFound
from .schemas import JobOut, PredictIn, common_errors, errors

router = APIRouter(tags=["predictions"], responses=common_errors())
KINDS = {"label": "label.nrrd", "heatmap": "heatmap.nrrd", "regions": "regions.nrrd"}


@router.post("/cases/{case_id}/predict", status_code=202, response_model=JobOut, responses=errors(400, 404, 409),
             summary="Queue a prediction with heatmap (returns the job; an identical queued job is reused)")
def predict(case_id: str, response: Response, body: PredictIn | None = Body(None),
            st: AppState = Depends(state)) -> dict:
    job, created = st.jobs.submit_predict(case_id, body.model_version if body else None)
    if not created:
        response.status_code = 200
    return job


def _prediction_dir(st: AppState, case_id: str):
    with st.ws.db.Session() as s:
        case = get_case_row(s, case_id)
        pred = latest_prediction(s, case.id)
        if pred is None:
            raise NotFound(f"case {case_id!r} has no prediction yet; request one with POST /api/cases/{case_id}/predict")
        return st.ws.abs(pred.dir)


@router.get("/cases/{case_id}/prediction", responses=errors(400, 404),
            summary="Latest prediction: model version, disagreement and flagged regions (ranked)")
def prediction(case_id: str, st: AppState = Depends(state)) -> dict:
    return json.loads((_prediction_dir(st, case_id) / "regions.json").read_text())


@router.get("/cases/{case_id}/prediction/{kind}", response_class=FileResponse, responses=errors(400, 404),
            summary="Latest prediction volume as NRRD: label | heatmap (1 = certain) | regions (codes 0-3)")
def prediction_volume(case_id: str, kind: Literal[tuple(KINDS)], st: AppState = Depends(state)):
    return FileResponse(_prediction_dir(st, case_id) / KINDS[kind], media_type="application/octet-stream",
                        filename=f"{case_id}-{kind}.nrrd")
