"""GET /api/next-case: which case a person should look at next (the policy: :mod:`...domain.next_case`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from ...domain.next_case import next_case as pick_next_case
from ..deps import AppState, get_state
from ..schemas import NextCaseOut, common_errors, errors

router = APIRouter(tags=["cases"], responses=common_errors())


@router.get("/next-case", response_model=NextCaseOut, responses=errors(404),
            summary="The unlabeled or predicted case with the most disagreement")
def next_case(predict: bool = True, max_queue: int = Query(20, ge=0, le=1000, description="most predictions to queue"),
              st: AppState = Depends(get_state)) -> dict:
    return pick_next_case(st.ws, st.jobs.submit_predict, predict=predict, max_queue=max_queue)
