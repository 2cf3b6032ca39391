"""Uploaded files: saved to the project's ``tmp/`` with a size limit, recognised by name, and ZIPs of
one DICOM series unpacked safely (no paths outside the folder, bounded size and file count).

In: a Starlette ``UploadFile``.  Out: a path in ``tmp/`` (deleted by the caller) or a 4xx error.
"""

from __future__ import annotations

import shutil
import uuid
import zipfile
from contextlib import contextmanager
from pathlib import Path

from fastapi import UploadFile

from .errors import BadRequest, TooLarge, Unprocessable

IMAGE_EXTS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip")
MAX_ZIP_FILES = 5000


def kind_of(filename: str) -> str:
    """'nifti' | 'nrrd' | 'mha' | 'dicom-zip'; 415-like 400 for anything else."""
    low = (filename or "").lower()
    if low.endswith((".nii.gz", ".nii")):
        return "nifti"
    if low.endswith(".nrrd"):
        return "nrrd"
    if low.endswith(".mha"):
        return "mha"
    if low.endswith(".zip"):
        return "dicom-zip"
    raise BadRequest(f"file {filename!r}: unsupported type; upload NRRD (.nrrd), NIfTI (.nii, .nii.gz), "
                     "MetaImage (.mha) or a ZIP of one DICOM series (.zip)")


def suffix_of(filename: str) -> str:
    low = (filename or "").lower()
    for ext in IMAGE_EXTS:
        if low.endswith(ext):
            return ext
    return ""


@contextmanager
def saved_upload(upload: UploadFile, tmp_root: Path, max_bytes: int):
    """Copy the upload to ``tmp_root/<uuid>/<safe name>`` (kept extension) and yield the path."""
    folder = tmp_root / f"up-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    try:
        path = folder / f"upload{suffix_of(upload.filename or '')}"
        size = 0
        src = upload.file
        src.seek(0)
        with open(path, "wb") as out:
            while chunk := src.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(_too_large(max_bytes))
                out.write(chunk)
        if size == 0:
            raise Unprocessable(f"file {upload.filename!r} is empty")
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _too_large(max_bytes: int) -> str:
    return (f"upload is larger than the limit of {max_bytes / 2**20:.0f} MB; raise service.max_upload_mb in "
            "project.yaml (or --max-upload-mb) if this is intended")


def unzip_dicom(zip_path: Path, dest: Path, max_bytes: int, name: str) -> Path:
    """Extract the files of a ZIP into ``dest`` (flat, numbered names). 422 for a bad or unsafe ZIP."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise Unprocessable(f"file {name!r} is not a valid ZIP archive (corrupt or truncated)") from None
    dest.mkdir(parents=True, exist_ok=True)
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if not members:
            raise Unprocessable(f"ZIP {name!r} contains no files")
        if len(members) > MAX_ZIP_FILES:
            raise Unprocessable(f"ZIP {name!r} holds {len(members)} files; at most {MAX_ZIP_FILES} are accepted")
        total = sum(m.file_size for m in members)
        if total > 4 * max_bytes:
            raise TooLarge(f"ZIP {name!r} unpacks to {total / 2**20:.0f} MB, over 4x the upload limit")
        for i, m in enumerate(members):
            if m.filename.startswith(("/", "\\")) or ".." in Path(m.filename.replace("\\", "/")).parts:
                raise Unprocessable(f"ZIP {name!r} has an unsafe path {m.filename!r}")
            base = Path(m.filename.replace("\\", "/")).name
            if base.startswith(".") or base.upper() == "DICOMDIR":
                continue
            try:
                with zf.open(m) as src, open(dest / f"{i:05d}.dcm", "wb") as out:
                    shutil.copyfileobj(src, out)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise Unprocessable(f"ZIP {name!r}: cannot extract {m.filename!r} ({exc})") from None
    return dest


def dicom_series_files(folder: Path, name: str) -> list[Path]:
    """The files of the single DICOM series in ``folder``, in slice order (as ITK reads them)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise Unprocessable(f"ZIP {name!r} holds no DICOM image series")
    if len(series) > 1:
        raise Unprocessable(f"ZIP {name!r} holds {len(series)} DICOM series; upload one series per case")
    return [Path(f) for f in reader.GetGDCMSeriesFileNames(str(folder), series[0])]
