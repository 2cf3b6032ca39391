"""Predictions: queue one for a case; read the latest (flagged regions JSON naming the model version,
and the label / heatmap / region-map volumes as NRRD in the case's geometry)."""

from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter, Body, Depends, Response
from fastapi.responses import FileResponse

from ...domain.cases import prediction_dir
from ..deps import AppState, get_state
from ..schemas import JobOut, PredictIn, common_errors, errors

router = APIRouter(tags=["predictions"], responses=common_errors())
KINDS = {"label": "label.nrrd", "heatmap": "heatmap.nrrd", "regions": "regions.nrrd"}


@router.post("/cases/{case_id}/predict", status_code=202, response_model=JobOut, responses=errors(400, 404, 409),
             summary="Queue a prediction with heatmap (returns the job; an identical queued job is reused)")
def predict(case_id: str, response: Response, body: PredictIn | None = Body(None),
            st: AppState = Depends(get_state)) -> dict:
    job, created = st.jobs.submit_predict(case_id, body.model_version if body else None)
    if not created:
        response.status_code = 200
    return job


@router.get("/cases/{case_id}/prediction", responses=errors(400, 404),
            summary="Latest prediction: model version, disagreement and flagged regions (ranked)")
def prediction(case_id: str, st: AppState = Depends(get_state)) -> dict:
    return json.loads((prediction_dir(st.ws, case_id) / "regions.json").read_text())


@router.get("/cases/{case_id}/prediction/{kind}", response_class=FileResponse, responses=errors(400, 404),
            summary="Latest prediction volume as NRRD: label | heatmap (1 = certain) | regions (codes 0-3)")
def prediction_volume(case_id: str, kind: Literal[tuple(KINDS)], st: AppState = Depends(get_state)):
    return FileResponse(prediction_dir(st.ws, case_id) / KINDS[kind], media_type="application/octet-stream",
                        filename=f"{case_id}-{kind}.nrrd")
