"""Cases of a project: adding (image checked, stored as NRRD, DICOM files kept), listing with their
status, and deleting.

Status of a case (one word, for lists and for choosing the next case):
``confirmed`` / ``in_review`` -- the latest label version's status; else ``predicted`` -- a prediction
exists; else ``unlabeled``.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from sqlalchemy import delete, func, select

from ...common.job_status import ACTIVE_STATES
from ..jobs import faults
from ..store.db import Case, Job, LabelVersion, Prediction
from ..store.files import IdError, atomic_write_volume, check_case_id, move_to_trash, publish_dir, sha256_file
from ..store.workspace import Workspace
from .errors import BadRequest, Conflict, NotFound
from .upload_checks import UploadLimits
from .volumes import geometry_of, geometry_volume, read_image

STATUSES = ("unlabeled", "predicted", "in_review", "confirmed")


def valid_id(case_id: str) -> str:
    """The id, or 400 saying why it cannot be used (path separators, '..', odd characters)."""
    try:
        return check_case_id(case_id)
    except IdError as exc:
        raise BadRequest(str(exc)) from None


def status_of(label: LabelVersion | None, pred: Prediction | None) -> str:
    if label is not None:
        return label.status
    return "predicted" if pred is not None else "unlabeled"


def label_info(lv: LabelVersion) -> dict:
    return {"version": lv.version, "parent_version": lv.parent_version, "author": lv.author,
            "source": lv.source, "status": lv.status, "model_version": lv.model_version,
            "created_at": lv.created_at.isoformat(), "sha256": lv.sha256,
            "voxels": {str(k): v for k, v in (lv.voxels or {}).items()}}


def summary(case: Case, label: LabelVersion | None, pred: Prediction | None) -> dict:
    g = case.geometry
    return {
        "id": case.id, "status": status_of(label, pred), "source_format": case.source_format,
        "original_name": case.original_name, "created_at": case.created_at.isoformat(),
        "shape": g["shape"], "spacing": g["spacing"], "origin": g["origin"], "direction": g["direction"],
        "has_dicom": case.dicom_dir is not None or case.source_format == "dicomweb",  # PACS: files on first use
        "latest_label": label_info(label) if label else None,
        "prediction": None if pred is None else {
            "model_version": pred.model_version, "job_id": pred.job_id, "created_at": pred.created_at.isoformat(),
            "disagreement": pred.disagreement, "flagged_voxels": pred.flagged_voxels, "regions": pred.n_regions},
    }


def get_case_row(s, case_id: str) -> Case:
    case = s.get(Case, valid_id(case_id))
    if case is None:
        raise NotFound(f"no case {case_id!r} in this project")
    return case


def image_geometry(case: Case):
    g = case.geometry
    return geometry_volume(g["shape"], g["spacing"], g["origin"], g["direction"], case.id)


def _latest_maps(s) -> tuple[dict, dict]:
    lsub = select(LabelVersion.case_id, func.max(LabelVersion.version).label("v")).group_by(
        LabelVersion.case_id).subquery()
    labels = {lv.case_id: lv for lv in s.scalars(select(LabelVersion).join(
        lsub, (LabelVersion.case_id == lsub.c.case_id) & (LabelVersion.version == lsub.c.v)))}
    psub = select(func.max(Prediction.id).label("pid")).group_by(Prediction.case_id).subquery()
    preds = {p.case_id: p for p in s.scalars(select(Prediction).where(Prediction.id.in_(select(psub.c.pid))))}
    return labels, preds


def list_cases(ws: Workspace, status: str | None = None) -> list[dict]:
    """Every case with its status, sorted by id; ``status`` filters."""
    if status is not None and status not in STATUSES:
        raise BadRequest(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    with ws.db.Session() as s:
        labels, preds = _latest_maps(s)
        out = [summary(c, labels.get(c.id), preds.get(c.id)) for c in s.scalars(select(Case).order_by(Case.id))]
    return [c for c in out if status is None or c["status"] == status]


def case_summary(ws: Workspace, case_id: str) -> dict:
    from ..store.db import latest_label, latest_prediction

    with ws.db.Session() as s:
        case = get_case_row(s, case_id)
        return summary(case, latest_label(s, case.id), latest_prediction(s, case.id))


def add_case(ws: Workspace, image_path: Path, *, case_id: str, original_name: str, source_format: str,
             dicom_files: list[Path] | None = None) -> dict:
    """Check the image, store it (and its DICOM files) and register the case. 409 if the id exists.
    ``original_name`` is kept for display only: control characters dropped, cut to its column's 255."""
    valid_id(case_id)
    original_name = "".join(ch for ch in (original_name or "") if ch.isprintable())[:255]
    with ws.db.Session() as s:
        if s.get(Case, case_id) is not None:
            raise Conflict(f"case {case_id!r} already exists; choose another id or delete it first")
    vol = read_image(image_path, original_name, source_format, UploadLimits.of(ws.config.service))
    staging = ws.tmp / f"case-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        atomic_write_volume(vol, staging / "image.nrrd")
        if dicom_files:
            (staging / "dicom").mkdir()
            for i, f in enumerate(dicom_files):
                shutil.copyfile(f, staging / "dicom" / f"IM{i:05d}.dcm")
        with ws.db.write_session() as s:
            if s.get(Case, case_id) is not None:
                raise Conflict(f"case {case_id!r} already exists; choose another id or delete it first")
            final = ws.case_dir(case_id)
            if final.exists():  # left by a crash before its DB row was written: not a stored case
                move_to_trash(ws.root, final)
            publish_dir(staging, final)
            faults.hit("case-files-written")
            s.add(Case(id=case_id, source_format=source_format, original_name=original_name,
                       image_path=ws.rel(final / "image.nrrd"),
                       dicom_dir=ws.rel(final / "dicom") if dicom_files else None,
                       geometry=geometry_of(vol), image_sha256=sha256_file(final / "image.nrrd")))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return case_summary(ws, case_id)


def delete_case(ws: Workspace, case_id: str) -> None:
    """Remove a case from the project (its folder moves to ``trash/``). 409 while a job uses it."""
    with ws.db.write_session() as s:
        case = get_case_row(s, case_id)
        busy = s.scalars(select(Job).where(Job.case_id == case.id, Job.status.in_(ACTIVE_STATES))).first()
        if busy is not None:
            raise Conflict(f"case {case_id!r} is used by {busy.kind} job {busy.id} ({busy.status}); "
                           "cancel it or wait, then delete")
        s.execute(delete(LabelVersion).where(LabelVersion.case_id == case.id))
        s.execute(delete(Prediction).where(Prediction.case_id == case.id))
        s.delete(case)
        folder = ws.case_dir(case.id)
        if folder.exists():
            move_to_trash(ws.root, folder)


def image_file(ws: Workspace, case_id: str) -> Path:
    from .pacs import ensure_local  # a PACS case's series is fetched on first use

    ensure_local(ws, valid_id(case_id))
    with ws.db.Session() as s:
        return ws.abs(get_case_row(s, case_id).image_path)


__all__ = ["add_case", "case_summary", "delete_case", "image_file", "list_cases", "valid_id", "IdError"]


def prediction_dir(ws: Workspace, case_id: str) -> Path:
    """The folder of the case's latest prediction; 404 (saying how to ask for one) when there is none."""
    from ..store.db import latest_prediction

    with ws.db.Session() as s:
        case = get_case_row(s, case_id)
        pred = latest_prediction(s, case.id)
        if pred is None:
            raise NotFound(f"case {case_id!r} has no prediction yet; request one with POST /api/cases/{case_id}/predict")
        return ws.abs(pred.dir)
