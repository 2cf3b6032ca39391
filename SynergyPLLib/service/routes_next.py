"""GET /api/next-case: which case a person should look at next.

Candidates are cases nobody has labeled yet (status ``unlabeled`` or ``predicted``). Predicted cases
come first, ranked by disagreement -- the sum over the flagged regions of (1 - confidence) per voxel,
i.e. how many voxels the model expects to have wrong where it is unsure. Cases without a prediction
follow (by id); with ``predict=true`` (the default) the service also queues predictions for them when a
model exists, so the ranking fills in as the prediction worker gets through them.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from .app import AppState, state
from .cases import list_cases
from .errors import NotFound
from .registry import active_version
from .schemas import NextCaseOut, common_errors, errors

router = APIRouter(tags=["cases"], responses=common_errors())


@router.get("/next-case", response_model=NextCaseOut, responses=errors(404),
            summary="The unlabeled or predicted case with the most disagreement")
def next_case(predict: bool = True, max_queue: int = Query(20, ge=0, le=1000, description="most predictions to queue"),
              st: AppState = Depends(state)) -> dict:
    cands = [c for c in list_cases(st.ws) if c["status"] in ("unlabeled", "predicted")]
    if not cands:
        raise NotFound("no case is waiting: every case has a label version (upload more images to continue)")
    predicted = sorted((c for c in cands if c["prediction"]), key=lambda c: (-c["prediction"]["disagreement"], c["id"]))
    pending = [c for c in cands if not c["prediction"]]
    queued = []
    if predict and pending and active_version(st.ws) is not None:
        for c in pending[:max_queue]:
            job, _ = st.jobs.submit_predict(c["id"])
            queued.append(job["id"])
    if predicted:
        best = predicted[0]
        p = best["prediction"]
        return {"case": best, "score": p["disagreement"], "candidates": len(cands), "queued_predictions": queued,
                "reason": f"most disagreement among {len(predicted)} predicted cases: about "
                          f"{p['disagreement']:.0f} voxels expected wrong in {p['regions']} flagged regions "
                          f"(model v{p['model_version']})"}
    return {"case": pending[0], "score": None, "candidates": len(cands), "queued_predictions": queued,
            "reason": "no case has a prediction yet" + ("; predictions were queued" if queued else
                                                        " (no model yet: label and train first)")}
