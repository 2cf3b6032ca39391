"""Which case a person should look at next (GET /api/next-case).

Candidates are cases nobody has labeled yet (status ``unlabeled`` or ``predicted``). Predicted cases
come first, ranked by disagreement -- the sum over the flagged regions of (1 - confidence) per voxel,
i.e. how many voxels the model expects to have wrong where it is unsure. Cases without a prediction
follow (by id); with ``predict=True`` the caller's ``submit_predict`` also queues predictions for them
(at most ``max_queue``) when a model exists, so the ranking fills in as the prediction worker gets
through them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..store.registry import active_version
from ..store.workspace import Workspace
from .cases import list_cases
from .errors import NotFound

WAITING = ("unlabeled", "predicted")


def disagreement(regions: Iterable) -> float:
    """A prediction's disagreement: the sum of its flagged regions' scores (``Region`` or their dicts)."""
    return float(sum(r["score"] if isinstance(r, dict) else r.score for r in regions))


def rank_by_disagreement(cases: Iterable[dict]) -> list[dict]:
    """The predicted ones of ``cases`` (documents with ``id`` and ``prediction``: ``{"disagreement"}`` or
    None), most disagreement first, ties by id: the order in which :func:`next_case` offers them."""
    return sorted((c for c in cases if c["prediction"]), key=lambda c: (-c["prediction"]["disagreement"], c["id"]))


def next_case(ws: Workspace, submit_predict: Callable[[str], tuple[dict, bool]], *, predict: bool = True,
              max_queue: int = 20) -> dict:
    """The case with the most disagreement, why, and the prediction jobs queued on the way."""
    cands = [c for c in list_cases(ws) if c["status"] in WAITING]
    if not cands:
        raise NotFound("no case is waiting: every case has a label version (upload more images to continue)")
    predicted = rank_by_disagreement(cands)
    pending = [c for c in cands if not c["prediction"]]
    queued = []
    if predict and pending and active_version(ws) is not None:
        for c in pending[:max_queue]:
            job, _ = submit_predict(c["id"])
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
