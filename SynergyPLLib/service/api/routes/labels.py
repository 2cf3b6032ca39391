"""Label versions of a case: submit (write-once, optimistic concurrency via parent_version), list,
download."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, File, Form, Path, UploadFile
from fastapi.responses import FileResponse

from ...domain.errors import BadRequest
from ...domain.labels import add_label_version, list_versions, version_row
from ...domain.uploads import kind_of, saved_upload
from ..deps import AppState, get_state
from ..schemas import MAX_ID, LabelVersionOut, common_errors, errors

router = APIRouter(tags=["labels"], responses=common_errors())
VERSION_RE = re.compile(r"latest|[0-9]{1,10}")  # ASCII digits only ("²".isdigit() is True)


@router.post("/cases/{case_id}/labels", status_code=201, response_model=LabelVersionOut,
             responses=errors(400, 404, 409, 413, 422),
             summary="Submit a new label version (409 if parent_version is not the latest)")
def submit_label(case_id: str,
                 file: UploadFile = File(..., description="label map (.nrrd, .nii(.gz), .mha) on the image's grid"),
                 author: str = Form(..., description="who made it"),
                 source: str = Form("human", description="human | model"),
                 parent_version: int = Form(..., ge=0, le=MAX_ID,
                                             description="the version this edit started from; 0 for none"),
                 status: str | None = Form(None, description="confirmed | in_review (default: confirmed for "
                                                             "human, in_review for model)"),
                 model_version: int | None = Form(None, ge=1, le=MAX_ID,
                                                  description="for source=model: the model version (must exist)"),
                 st: AppState = Depends(get_state)) -> dict:
    if kind_of(file.filename or "") == "dicom-zip":  # 400/422 for other types and detached headers
        raise BadRequest("labels are uploaded as a label map file (.nrrd, .nii, .nii.gz, .mha), not a ZIP")
    with saved_upload(file, st.ws.tmp, st.max_upload_bytes) as path:
        return add_label_version(st.ws, case_id, path, filename=file.filename or "label", author=author,
                                 source=source, parent_version=parent_version, status=status,
                                 model_version=model_version)


@router.get("/cases/{case_id}/labels", response_model=list[LabelVersionOut], responses=errors(400, 404),
            summary="Label versions of a case, oldest first")
def versions(case_id: str, st: AppState = Depends(get_state)) -> list[dict]:
    return list_versions(st.ws, case_id)


@router.get("/cases/{case_id}/labels/{version}", response_class=FileResponse, responses=errors(400, 404),
            summary="A label version as NRRD ('latest' for the newest)")
def label_file(case_id: str,
               version: str = Path(description="a version number or 'latest'",
                                   json_schema_extra={"pattern": f"^({VERSION_RE.pattern})$"}),
               st: AppState = Depends(get_state)):
    # checked here rather than by the schema so that the message says what a version is
    if not VERSION_RE.fullmatch(version):
        raise BadRequest(f"label version must be a number or 'latest', not {version!r}")
    lv = version_row(st.ws, case_id, None if version == "latest" else int(version))
    return FileResponse(st.ws.abs(lv.path), media_type="application/octet-stream",
                        filename=f"{case_id}-label-v{lv.version}.nrrd",
                        headers={"X-SynergyPL-Label-Version": str(lv.version)})
