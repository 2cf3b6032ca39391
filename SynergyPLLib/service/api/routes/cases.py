"""Cases: upload (NRRD, NIfTI, MHA, or a ZIP of one DICOM series), list, get, image, delete."""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from fastapi.responses import FileResponse

from ...domain.cases import STATUSES, add_case, case_summary, delete_case, image_file, list_cases, valid_id
from ...domain.upload_checks import UploadLimits
from ...domain.uploads import dicom_series_files, kind_of, saved_upload, unzip_dicom
from ...store.files import case_id_from_filename
from ..deps import AppState, get_state
from ..schemas import CaseOut, common_errors, errors

router = APIRouter(tags=["cases"], responses=common_errors())
NRRD = "application/octet-stream"


@router.post("/cases", status_code=201, response_model=CaseOut, responses=errors(400, 409, 413, 422),
             summary="Upload an image as a new case")
def upload_case(file: UploadFile = File(..., description=".nrrd, .nii(.gz), .mha or .zip of one DICOM series"),
                case_id: str | None = Form(None, description="default: from the file name"),
                st: AppState = Depends(get_state)) -> dict:
    kind = kind_of(file.filename or "")
    cid = valid_id(case_id) if case_id else valid_id(case_id_from_filename(file.filename or "case"))
    with saved_upload(file, st.ws.tmp, st.max_upload_bytes) as path:
        if kind == "dicom-zip":
            folder = unzip_dicom(path, path.parent / f"dicom-{uuid.uuid4().hex[:6]}", st.max_upload_bytes,
                                 file.filename)
            files = dicom_series_files(folder, file.filename, UploadLimits.of(st.ws.config.service))
            return add_case(st.ws, folder, case_id=cid, original_name=file.filename, source_format="dicom",
                            dicom_files=files)
        return add_case(st.ws, path, case_id=cid, original_name=file.filename, source_format=kind)


@router.get("/cases", response_model=list[CaseOut], responses=errors(400), summary="All cases with status")
def cases(status: Literal[STATUSES] | None = None, st: AppState = Depends(get_state)) -> list[dict]:
    return list_cases(st.ws, status)


@router.get("/cases/{case_id}", response_model=CaseOut, responses=errors(400, 404), summary="One case")
def case(case_id: str, st: AppState = Depends(get_state)) -> dict:
    return case_summary(st.ws, case_id)


@router.get("/cases/{case_id}/image", response_class=FileResponse, responses=errors(400, 404),
            summary="The case image as NRRD (LPS geometry)")
def image(case_id: str, st: AppState = Depends(get_state)):
    return FileResponse(image_file(st.ws, case_id), media_type=NRRD, filename=f"{case_id}.nrrd")


@router.delete("/cases/{case_id}", status_code=204, responses=errors(400, 404, 409),
               summary="Remove a case (moved to the project's trash folder)")
def remove(case_id: str, st: AppState = Depends(get_state)) -> Response:
    delete_case(st.ws, case_id)
    return Response(status_code=204)
