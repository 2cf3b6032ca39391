"""GET /api/cases/{id}/export?format=seg.nrrd|nifti|dicom-seg&version=N."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Response

from .app import AppState, state
from .cases import get_case_row
from .export import FORMATS, check_format, dicom_seg_bytes, nifti_bytes, seg_nrrd_bytes
from .labels import version_row
from .schemas import MAX_ID, common_errors, errors

router = APIRouter(tags=["export"], responses=common_errors())


@router.get("/cases/{case_id}/export", responses={200: {"content": {"application/octet-stream": {}}},
                                                  **errors(400, 404, 409)},
            summary="A label version (default: latest) as Slicer .seg.nrrd, NIfTI or DICOM SEG")
def export(case_id: str,
           format: str = Query("seg.nrrd", json_schema_extra={"enum": list(FORMATS)}),  # noqa: A002 - checked below
           version: int | None = Query(None, ge=1, le=MAX_ID, description="default: the latest"),
           st: AppState = Depends(state)) -> Response:
    fmt = check_format(format)
    if fmt == "dicom-seg":
        from .domain.pacs import ensure_local  # a PACS case's series is fetched on first use

        ensure_local(st.ws, case_id)
    with st.ws.db.Session() as s:
        case = get_case_row(s, case_id)
        dicom_dir = case.dicom_dir
    lv = version_row(st.ws, case_id, version)
    path = st.ws.abs(lv.path)
    classes = st.ws.config.classes
    if fmt == "seg.nrrd":
        data = seg_nrrd_bytes(path, classes)
    elif fmt == "nifti":
        data = nifti_bytes(path)
    else:
        data = dicom_seg_bytes(st.ws, case_id, dicom_dir, path, classes, lv.author)
    media, ext = FORMATS[fmt]
    return Response(data, media_type=media, headers={
        "Content-Disposition": f'attachment; filename="{case_id}-v{lv.version}{ext}"',
        "X-SynergyPL-Label-Version": str(lv.version)})
