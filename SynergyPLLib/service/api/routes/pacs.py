"""PACS (DICOMweb) routes: browse the server's studies and series, import a series as a case, fetch a
case's series now, publish a confirmed label version as DICOM SEG, and a case's PACS link.

Thin: parse, call :mod:`SynergyPLLib.service.domain.pacs`, return. The PACS unreachable -> 502, no
answer in time -> 504, not on the PACS -> 404, not a volume -> 422, a second publish of a version -> 409.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from ...domain import pacs
from ...domain.cases import case_summary, valid_id
from ...store.db import MAX_ID
from ..deps import AppState, get_state
from ..schemas import ErrorOut, common_errors, errors

PACS_ERRORS = {502: {"model": ErrorOut, "description": "the PACS is unreachable, refused us, or failed"},
               504: {"model": ErrorOut, "description": "the PACS did not answer in time (dicomweb.timeout)"}}
router = APIRouter(tags=["pacs"], responses={**common_errors(), **errors(400), **PACS_ERRORS})  # 400: a bad id or body


class ImportIn(BaseModel):
    study_uid: str = Field(min_length=1, max_length=64)
    series_uid: str = Field(min_length=1, max_length=64)
    case_id: str | None = Field(None, description="default: from PatientID, SeriesNumber and SeriesDescription")


@router.get("/pacs/studies", responses=errors(409), summary="Studies on the project's PACS (QIDO-RS)")
def studies(st: AppState = Depends(get_state)) -> list[dict]:
    return pacs.remote_studies(st.ws)


@router.get("/pacs/series", responses=errors(404, 409),
            summary="Series on the PACS (QIDO-RS), each with the case it was imported as")
def series(study: str | None = Query(None, max_length=64), st: AppState = Depends(get_state)) -> list[dict]:
    return pacs.remote_series(st.ws, study)


@router.post("/pacs/import", status_code=201, responses=errors(400, 404, 409, 422),
             summary="Import a PACS series as a case (its pixels are fetched on first use)")
def import_series(body: ImportIn, st: AppState = Depends(get_state)) -> dict:
    return pacs.import_series(st.ws, body.study_uid, body.series_uid, body.case_id)


@router.post("/cases/{case_id}/pacs/fetch", responses=errors(404, 409, 422),
             summary="Fetch a PACS case's series now (it is fetched on first use anyway)")
def fetch(case_id: str, st: AppState = Depends(get_state)) -> dict:
    pacs.ensure_local(st.ws, valid_id(case_id))
    return {**case_summary(st.ws, case_id), "pacs": pacs.pacs_info(st.ws, case_id)}


@router.post("/cases/{case_id}/pacs/publish", responses=errors(404, 409, 422),
             summary="Publish a confirmed label version to the PACS as DICOM SEG (STOW-RS); 409 if already "
                     "published unless force=true")
def publish(case_id: str, version: int | None = Query(None, ge=1, le=MAX_ID, description="default: latest confirmed"),
            force: bool = Query(False, description="publish again although this version is already on the PACS"),
            st: AppState = Depends(get_state)) -> dict:
    return pacs.publish(st.ws, valid_id(case_id), version, force=force)


@router.get("/cases/{case_id}/pacs", responses=errors(404), summary="A case's PACS link and publications")
def info(case_id: str, st: AppState = Depends(get_state)) -> dict:
    return pacs.pacs_info(st.ws, valid_id(case_id))
