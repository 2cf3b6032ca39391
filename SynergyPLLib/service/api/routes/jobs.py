"""Training rounds and jobs: start a round, history, job state (polling, long-poll, server-sent
events), cancel, resume an interrupted round."""

from __future__ import annotations

import json
from typing import Literal

import anyio
from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse

from ....common.job_status import FINAL_STATES, JobStatus
from ...domain.history import training_rounds
from ..deps import AppState, get_state
from ..schemas import MAX_ID, JobOut, RoundOut, TrainIn, common_errors, errors

router = APIRouter(tags=["training and jobs"], responses=common_errors())
JOB_ID = Path(ge=1, le=MAX_ID, description="a job id (GET /api/jobs)")
HEARTBEAT_SECONDS = 10.0


@router.post("/train", status_code=202, response_model=JobOut, responses=errors(400, 409, 422),
             summary="Start a training round (409 while one is queued or running)")
def start_training(body: TrainIn | None = Body(None), st: AppState = Depends(get_state)) -> dict:
    body = body or TrainIn()
    return st.jobs.submit_train(body.iterations, body.labels, body.method)


@router.get("/train/history", response_model=list[RoundOut], summary="Training rounds, oldest first, with metrics")
def history(st: AppState = Depends(get_state)) -> list[dict]:
    return training_rounds(st.ws)


@router.get("/jobs", response_model=list[JobOut], summary="Recent jobs, newest first")
def jobs(kind: Literal["train", "predict"] | None = None, status: JobStatus | None = None,
         limit: int = Query(100, ge=1, le=1000), st: AppState = Depends(get_state)) -> list[dict]:
    return st.jobs.list(kind, status, limit)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=errors(404),
            summary="Job state; with wait=S, waits up to S seconds for a change (long-poll)")
async def job(job_id: int = JOB_ID, wait: float = Query(0.0, ge=0.0, le=60.0, description="seconds to wait for a change"),
              since: str | None = Query(None, max_length=64, description="the updated_at last seen"),
              st: AppState = Depends(get_state)) -> dict:
    if wait > 0:  # async: a waiting client holds no thread of the server's pool
        return await st.jobs.wait(job_id, since, min(wait, 60.0))
    return await anyio.to_thread.run_sync(st.jobs.get, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=errors(404, 409),
             summary="Cancel a queued job, or ask a running one to stop")
def cancel(job_id: int = JOB_ID, st: AppState = Depends(get_state)) -> dict:
    return st.jobs.cancel(job_id)


@router.post("/jobs/{job_id}/resume", status_code=202, response_model=JobOut, responses=errors(404, 409),
             summary="Continue an interrupted training round from its last checkpoint")
def resume(job_id: int = JOB_ID, st: AppState = Depends(get_state)) -> dict:
    return st.jobs.resume(job_id)


def _sse(event: str, data: dict, eid: int) -> str:
    return f"id: {eid}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


@router.get("/jobs/{job_id}/events", responses={200: {"content": {"text/event-stream": {}}}, **errors(404)},
            summary="Server-sent events: 'progress' (iteration, losses, val_dice, eta_seconds), 'status', 'end'")
async def events(request: Request, job_id: int = JOB_ID, st: AppState = Depends(get_state)):
    first = await anyio.to_thread.run_sync(st.jobs.get, job_id)  # 404 before the stream starts

    async def stream():
        info, eid, last_status, last_progress = first, 0, None, None
        while True:
            if info["status"] != last_status:
                eid += 1
                last_status = info["status"]
                yield _sse("status", {"id": job_id, "status": info["status"], "error": info["error"],
                                      "model_version": info["model_version"]}, eid)
            if info["progress"] != last_progress:
                eid += 1
                last_progress = info["progress"]
                yield _sse("progress", {"id": job_id, **info["progress"]}, eid)
            if info["status"] in FINAL_STATES:
                eid += 1
                yield _sse("end", {"id": job_id, "status": info["status"], "result": info["result"],
                                   "error": info["error"]}, eid)
                return
            if await request.is_disconnected():
                return
            before = info["updated_at"]
            info = await st.jobs.wait(job_id, before, HEARTBEAT_SECONDS)
            if info["updated_at"] == before and info["status"] not in FINAL_STATES:
                yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
