"""Label versions: write-once files with a version chain per case.

``add_label_version`` checks the upload against the case image and the classes, then -- inside one
serialised transaction -- checks that ``parent_version`` is the latest version (else 409 naming the
latest version and its author), publishes the file atomically under a fresh name and inserts the row.
A crash between file and row leaves an unreferenced file, never a half-written version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import select

from ..jobs import faults
from ..store.db import MAX_ID, Case, LabelVersion, ModelVersion, latest_label
from ..store.files import atomic_write_volume, sha256_file, unique_name
from ..store.workspace import Workspace
from .cases import get_case_row, image_geometry, label_info, valid_id
from .errors import BadRequest, Conflict, NotFound
from .upload_checks import UploadLimits
from .uploads import format_of
from .volumes import read_checked_label

SOURCES = ("human", "model")
LABEL_STATUSES = ("confirmed", "in_review")


def add_label_version(ws: Workspace, case_id: str, label_path: Path, *, filename: str, author: str,
                      source: str, parent_version: int | None, status: str | None = None,
                      model_version: int | None = None) -> dict:
    """Store a new label version; returns its description. Raises 400/404/409/422 (nothing stored)."""
    valid_id(case_id)
    author = (author or "").strip()
    if not author:
        raise BadRequest("author is required (who made this label)")
    if len(author) > 200:
        raise BadRequest("author is longer than 200 characters")
    if not author.isprintable():  # NUL, tabs, newlines: PostgreSQL refuses NUL, and logs and lists would break
        raise BadRequest(f"author must be printable text without control characters, not {author!r}")
    if source not in SOURCES:
        raise BadRequest(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    status = status or ("confirmed" if source == "human" else "in_review")
    if status not in LABEL_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(LABEL_STATUSES)}, not {status!r}")
    if parent_version is not None and not 0 <= parent_version <= MAX_ID:
        raise BadRequest(f"parent_version must be 0 (no earlier version) or a version number, not {parent_version}")
    if model_version is not None and not 1 <= model_version <= MAX_ID:
        raise BadRequest(f"model_version must be a model version number (1 or more), not {model_version}")
    parent = parent_version or None
    with ws.db.Session() as s:
        geom = image_geometry(get_case_row(s, case_id))
    label = read_checked_label(label_path, filename or "label", format_of(filename or label_path.name),
                               UploadLimits.of(ws.config.service), geom, ws.config.num_classes)
    counts = np.bincount(label.array.reshape(-1), minlength=ws.config.num_classes)
    voxels = {str(v): int(c) for v, c in enumerate(counts)}

    with ws.db.write_session() as s:
        case = s.scalars(select(Case).where(Case.id == case_id).with_for_update()).first()
        if case is None:
            raise NotFound(f"no case {case_id!r} in this project")
        latest = latest_label(s, case_id)
        latest_v = latest.version if latest else None
        if parent != latest_v:
            if latest is None:
                raise Conflict(f"case {case_id!r} has no label versions yet; submit with parent_version=0 "
                               f"(you gave {parent_version})", latest_version=0, latest_author=None)
            raise Conflict(
                f"label version {parent or 0} is not the latest for case {case_id!r}: version {latest.version} "
                f"by {latest.author} ({latest.created_at:%Y-%m-%d %H:%M:%S} UTC) is. Load version "
                f"{latest.version}, merge your changes and submit again with parent_version={latest.version}.",
                latest_version=latest.version, latest_author=latest.author)
        if model_version is not None and s.get(ModelVersion, model_version) is None:
            have = list(s.scalars(select(ModelVersion.version).order_by(ModelVersion.version)))
            raise NotFound(f"model_version {model_version} names no model of this project "
                           f"(versions: {have or 'none yet'}); leave it out for a label made by a person")
        version = (latest_v or 0) + 1
        path = ws.case_dir(case_id) / "labels" / unique_name(f"v{version:04d}", ".nrrd")
        # stored on the image's exact grid (the label agrees with it within tolerance)
        atomic_write_volume(geom.with_array(np.ascontiguousarray(label.array)), path)
        try:
            faults.hit("label-file-written")
            lv = LabelVersion(case_id=case_id, version=version, parent_version=parent, author=author,
                              source=source, status=status, model_version=model_version, path=ws.rel(path),
                              sha256=sha256_file(path), voxels=voxels)
            s.add(lv)
            s.flush()
            return label_info(lv)
        except BaseException:
            path.unlink(missing_ok=True)  # refused by the database: no file without its row
            raise


def list_versions(ws: Workspace, case_id: str) -> list[dict]:
    with ws.db.Session() as s:
        get_case_row(s, case_id)
        rows = s.scalars(select(LabelVersion).where(LabelVersion.case_id == case_id)
                         .order_by(LabelVersion.version)).all()
        return [label_info(r) for r in rows]


def version_row(ws: Workspace, case_id: str, version: int | None) -> LabelVersion:
    """A stored version (None: the latest); 404 naming what exists."""
    with ws.db.Session() as s:
        get_case_row(s, case_id)
        if version is None:
            lv = latest_label(s, case_id)
            if lv is None:
                raise NotFound(f"case {case_id!r} has no label versions")
            return lv
        lv = None if not 1 <= version <= MAX_ID else s.scalars(select(LabelVersion).where(
            LabelVersion.case_id == case_id, LabelVersion.version == version)).first()
        if lv is None:
            latest = latest_label(s, case_id)
            have = f"versions 1..{latest.version}" if latest else "no versions"
            raise NotFound(f"case {case_id!r} has no label version {version} (it has {have})")
        return lv

