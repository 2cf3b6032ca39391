"""Uploaded files: saved to the project's ``tmp/`` with a size limit, recognised by name, and ZIPs of
one DICOM series unpacked safely (no paths outside the folder, bounded size and file count).

In: a Starlette ``UploadFile``.  Out: a path in ``tmp/`` (deleted by the caller) or a 4xx error.
"""

from __future__ import annotations

import re
import shutil
import uuid
import zipfile
from contextlib import contextmanager
from pathlib import Path

from fastapi import UploadFile

from SynergyPLLib.engine.io import SeriesCountError
from SynergyPLLib.engine.io import dicom_series_files as series_files

from .errors import BadRequest, TooLarge, Unprocessable
from .upload_checks import UploadLimits

IMAGE_EXTS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip")
MAX_ZIP_FILES = 5000


def format_of(filename: str) -> str | None:
    """'nifti' | 'nrrd' | 'mha' | 'dicom-zip' | 'nhdr' | 'mhd' from a file name; None if none of them."""
    low = (filename or "").lower()
    for ends, fmt in (((".nii.gz", ".nii"), "nifti"), ((".nrrd",), "nrrd"), ((".mha",), "mha"),
                      ((".zip",), "dicom-zip"), ((".nhdr",), "nhdr"), ((".mhd",), "mhd")):
        if low.endswith(ends):
            return fmt
    return None


def kind_of(filename: str) -> str:
    """'nifti' | 'nrrd' | 'mha' | 'dicom-zip' for an upload; 422 for a detached header (.nhdr, .mhd),
    whose voxel data would be another file, and 400 for anything else."""
    fmt = format_of(filename)
    if fmt in ("nhdr", "mhd"):
        single = ".nrrd" if fmt == "nhdr" else ".mha"
        raise Unprocessable(f"file {filename!r} is a detached header (.{fmt}): its voxel data is in another file, "
                            f"which the server will not read; upload a self-contained {single} instead")
    if fmt is not None:
        return fmt
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
                safe = re.sub(r"[^A-Za-z0-9._-]+", "_", base)[:80]  # keeps the member's name for messages
                with zf.open(m) as src, open(dest / f"{i:05d}-{safe}", "wb") as out:
                    shutil.copyfileobj(src, out)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise Unprocessable(f"ZIP {name!r}: cannot extract {m.filename!r} ({exc})") from None
    return dest


def dicom_series_files(folder: Path, name: str, limits: UploadLimits | None = None) -> list[Path]:
    """The files of the single DICOM series in ``folder``, in slice order (as ITK reads them).
    With ``limits`` (an upload), each file's pixel data is checked first (:func:`check_dicom_files`)."""
    if limits is not None:  # GDCM silently leaves out a file it cannot read: check them all first
        check_dicom_files(sorted(p for p in folder.iterdir() if p.is_file()), name, limits)
    try:
        return [Path(f) for f in series_files(folder)]
    except SeriesCountError as exc:
        if exc.count == 0:
            raise Unprocessable(f"ZIP {name!r} holds no DICOM image series") from None
        raise Unprocessable(f"ZIP {name!r} holds {exc.count} DICOM series; upload one series per case") from None


def check_dicom_files(files: list[Path], name: str, limits: UploadLimits) -> None:
    """Every DICOM file's pixel data holds the frames its header declares (GDCM drops or zero-fills a
    cut file), and all of them together stay within ``limits``. Files that are not DICOM at all
    (a readme) are left to the series reader. 413/422 naming the file."""
    import pydicom
    from pydicom.encaps import generate_frames

    voxels = data_bytes = 0
    for f in files:
        label = f"ZIP {name!r}, file {f.name}"
        try:
            ds = pydicom.dcmread(f, defer_size="64 KB")
        except pydicom.errors.InvalidDicomError:
            continue
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for a broken file
            raise Unprocessable(f"{label}: cannot be read as DICOM ({type(exc).__name__}: {exc})") from None
        if "PixelData" not in ds:
            continue  # not an image (e.g. a structured report); the series reader decides
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            spp, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
            pixel = ds.get_item(0x7FE00010, keep_deferred=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for a broken file
            raise Unprocessable(f"{label}: cannot be read as DICOM ({type(exc).__name__}: {exc})") from None
        voxels += rows * cols * frames
        need = (rows * cols * frames * spp * bits + 7) // 8
        data_bytes += need
        if voxels > limits.max_voxels or data_bytes > limits.max_image_bytes:
            raise TooLarge(f"ZIP {name!r}: the series declares {voxels:,} voxels ({data_bytes / 2**20:,.0f} MB of "
                           f"pixel data) by file {f.name}, over the limit of {limits.max_voxels:,} voxels / "
                           f"{limits.max_image_bytes / 2**20:,.0f} MB (service.max_voxels, service.max_image_mb "
                           "in project.yaml)")
        if ds.file_meta.get("TransferSyntaxUID") is not None and ds.file_meta.TransferSyntaxUID.is_encapsulated:
            try:
                got = sum(1 for _ in generate_frames(ds.PixelData, number_of_frames=frames))
            except Exception as exc:  # noqa: BLE001
                raise Unprocessable(f"{label}: compressed pixel data is broken ({exc})") from None
            if got < frames:
                raise Unprocessable(f"{label}: is truncated: declares {frames} frames, holds {got}")
            continue
        length = getattr(pixel, "length", None)
        start = getattr(pixel, "value_tell", None)
        if length is None or start is None:  # already read: compare the value itself
            length, start = len(pixel.value or b""), 0
        elif start + length > f.stat().st_size:
            length = max(0, f.stat().st_size - start)
        if length < need:
            raise Unprocessable(f"{label}: is truncated: its header declares {frames} frame(s) of {rows}x{cols} "
                                f"({need:,} bytes of pixel data), the file holds {length:,}")
