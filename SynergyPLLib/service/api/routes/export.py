"""GET /api/cases/{id}/export?format=seg.nrrd|nifti|dicom-seg&version=N."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Response

from ...domain.export import FORMATS, export_label
from ..deps import AppState, get_state
from ..schemas import MAX_ID, common_errors, errors

router = APIRouter(tags=["export"], responses=common_errors())


@router.get("/cases/{case_id}/export", responses={200: {"content": {"application/octet-stream": {}}},
                                                  **errors(400, 404, 409)},
            summary="A label version (default: latest) as Slicer .seg.nrrd, NIfTI or DICOM SEG")
def export(case_id: str,
           format: str = Query("seg.nrrd", json_schema_extra={"enum": list(FORMATS)}),  # noqa: A002 - checked below
           version: int | None = Query(None, ge=1, le=MAX_ID, description="default: the latest"),
           st: AppState = Depends(get_state)) -> Response:
    data, lv_version, ext, media = export_label(st.ws, case_id, format, version)
    return Response(data, media_type=media, headers={
        "Content-Disposition": f'attachment; filename="{case_id}-v{lv_version}{ext}"',
        "X-SynergyPL-Label-Version": str(lv_version)})
