"""Checking uploaded images and labels with the engine's validators, and geometry kept in the DB.

In: a file path (already on disk in the project's tmp folder) with its format, or a checked DICOM
series folder.  Out: an engine ``Volume`` or an :class:`~.errors.Unprocessable` whose message comes
from :class:`~SynergyPLLib.engine.io.VolumeError`. A single-file upload passes
:func:`~.upload_checks.check_upload` (self-contained, within the limits, not truncated) before the
engine opens it, and is then read by the ITK reader of its format only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from SynergyPLLib.engine.io import Volume, VolumeError, check_label, read_volume

from .errors import Unprocessable
from .upload_checks import IMAGE_IO, UploadLimits, check_upload


def _clean(msg: str, path: Path, name: str) -> str:
    """Replace the temporary path in a VolumeError message by the name the user uploaded."""
    return msg.replace(str(path), name or path.name)


def _checked_read(path: Path, name: str, kind: str | None, limits: UploadLimits, allow_constant: bool) -> Volume:
    if kind not in IMAGE_IO:  # a DICOM folder (its files checked by uploads.dicom_series_files), or a
        return read_volume(path, allow_constant=allow_constant)  # detached header imported by `init`
    check_upload(path, kind, name, limits)
    return read_volume(path, allow_constant=allow_constant, image_io=IMAGE_IO[kind])


def read_image(path: Path, name: str, kind: str | None, limits: UploadLimits) -> Volume:
    """A 3D scalar image or 413/422 with the reason (detached, too large, truncated, 2D, NaN, constant...)."""
    try:
        vol = _checked_read(path, name, kind, limits, allow_constant=False)
    except VolumeError as exc:
        raise Unprocessable(_clean(str(exc), path, name)) from None
    vol.source = name
    return vol


def read_checked_label(path: Path, name: str, kind: str | None, limits: UploadLimits, image_geometry: Volume,
                       num_classes: int) -> Volume:
    """A label map that fits ``image_geometry`` with values in 0..num_classes-1, else 413/422."""
    try:
        lab = _checked_read(path, name, kind, limits, allow_constant=True)
        lab.source = name
        return check_label(lab, image_geometry, num_classes, name)
    except VolumeError as exc:
        raise Unprocessable(_clean(str(exc), path, name)) from None


def geometry_volume(shape, spacing, origin, direction, source: str = "") -> Volume:
    """A Volume carrying only geometry (a zero-size broadcast array), for label checks without
    reading the image from disk."""
    arr = np.broadcast_to(np.zeros(1, dtype=np.uint8), tuple(int(s) for s in shape))
    return Volume(arr, tuple(spacing), tuple(origin), np.asarray(direction, dtype=float).reshape(3, 3), source)


def geometry_of(vol: Volume) -> dict:
    return {"shape": list(vol.shape), "spacing": list(vol.spacing), "origin": list(vol.origin),
            "direction": np.asarray(vol.direction).reshape(-1).tolist()}
