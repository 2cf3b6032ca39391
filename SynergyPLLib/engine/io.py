"""Reading and writing 3D volumes with their geometry.

Everything that enters the engine passes through :func:`read_volume` / :func:`read_label`, which turn
files (NIfTI, NRRD, MHA, a DICOM series folder) into a :class:`Volume`: a numpy array indexed
``[i, j, k]`` plus the ITK geometry (spacing, origin, direction) in LPS patient coordinates, the
convention of DICOM, NRRD and ITK. ``ijk_to_ras`` gives Slicer's RAS view of the same geometry.

Bad input raises :class:`VolumeError` whose message names the file and the problem.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VolumeError(ValueError):
    """A file cannot be used as an image or label; the message says which file and why."""


@dataclass
class Volume:
    """A 3D array ``[i, j, k]`` with its voxel-to-patient geometry (LPS, millimetres)."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    source: str = ""

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[:3])

    @property
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping voxel indices (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix mapping voxel indices to RAS millimetres (Slicer's world frame)."""
        return LPS_TO_RAS @ self.ijk_to_lps

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry carrying another array (e.g. a label map or a heatmap)."""
        if tuple(array.shape[:3]) != self.shape:
            raise VolumeError(f"array shape {array.shape} does not match volume shape {self.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy(), self.source)

    def same_geometry(self, other: Volume, tol: float = 1e-3) -> str | None:
        """None when both volumes share a voxel grid, else a sentence saying how they differ."""
        if self.shape != other.shape:
            return f"shape {other.shape} differs from the image's {self.shape}"
        if not np.allclose(self.spacing, other.spacing, atol=tol, rtol=tol):
            return f"spacing {other.spacing} differs from the image's {self.spacing}"
        if not np.allclose(self.origin, other.origin, atol=max(tol, 1e-2 * min(self.spacing))):
            return f"origin {other.origin} differs from the image's {self.origin}"
        if not np.allclose(self.direction, other.direction, atol=tol):
            return "direction matrix differs from the image's"
        return None


def _to_sitk(vol: Volume) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(vol.array, (2, 1, 0))))
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(tuple(vol.direction.flatten()))
    return img


def _from_sitk(img: sitk.Image, source: str) -> Volume:
    arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    return Volume(arr, img.GetSpacing(), img.GetOrigin(), np.array(img.GetDirection()).reshape(3, 3), source)


def check_gzip_complete(path: Path, name: str | None = None) -> None:
    """ITK reads a truncated .gz quietly (zero-filling the rest); decompress once to catch it.
    VolumeError names ``name`` (default: the path)."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as exc:
        raise VolumeError(f"{name or path}: file is truncated or corrupt ({exc})") from None


class SeriesCountError(VolumeError):
    """A folder holds no DICOM series, or more than one (``count``)."""

    def __init__(self, folder: Path, count: int) -> None:
        self.count = count
        super().__init__(f"{folder}: folder holds no DICOM series" if count == 0 else
                         f"{folder}: folder holds {count} DICOM series; give one series folder")


def dicom_series(folder: str | os.PathLike) -> dict[str, list[str]]:
    """The DICOM series in ``folder``: series instance UID -> its files in slice order (as ITK reads them)."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    return {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in ids}


def dicom_series_files(folder: str | os.PathLike) -> list[str]:
    """The files of the one DICOM series in ``folder``, in slice order; SeriesCountError otherwise."""
    series = dicom_series(folder)
    if len(series) != 1:
        raise SeriesCountError(Path(folder), len(series))
    return next(iter(series.values()))


def _check_nifti(path: Path) -> None:
    """What ITK's NIfTI reader lets through quietly: a truncated uncompressed file (zero-filled) and
    NaN/inf voxels (read as 0). nibabel reads the stored header and values."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise VolumeError(f"{path}: cannot be read as NIfTI ({exc})") from None
    header = img.header
    if path.name.lower().endswith(".nii"):
        offset = int(header["vox_offset"]) or header.sizeof_hdr + 4  # single file: data after the header
        need = offset + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
        if path.stat().st_size < need:
            raise VolumeError(f"{path}: file is truncated ({path.stat().st_size} bytes, header needs {need})")
    if header.get_data_dtype().kind == "f" and not np.isfinite(np.asarray(img.dataobj)).all():
        raise VolumeError(f"{path}: image contains NaN or infinite values")


def _read_sitk(path: Path, image_io: str | None = None) -> sitk.Image:
    if path.name.lower().endswith(".gz"):
        check_gzip_complete(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(dicom_series_files(path))
        return reader.Execute()
    return sitk.ReadImage(str(path), imageIO=image_io or "")


def read_volume(path: str | os.PathLike, *, allow_constant: bool = False, image_io: str | None = None) -> Volume:
    """Read a 3D scalar image (NIfTI, NRRD, MHA, or a DICOM series folder) with its geometry.

    ``image_io`` names the ITK reader to use (e.g. ``"NrrdImageIO"``) instead of the one ITK picks from
    the file's content, so a checked upload is read by the reader its checks were made for.
    Raises VolumeError for a missing, unreadable, 2D, multi-component, empty, constant or non-finite image.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    try:
        img = _read_sitk(path, image_io)
    except VolumeError:
        raise
    except Exception as exc:  # SimpleITK raises RuntimeError with a long ITK trace
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if "No such file or directory" in first and path.is_file():
            # ITK reports a stale errno when a file (e.g. a MetaImage) ends before its voxel data does
            first = "the file ends before all the voxel data its header declares: truncated or corrupt"
        raise VolumeError(f"{path}: cannot be read as an image ({first})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{path}: has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                          "a single scalar channel is needed")
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() != 3:
        raise VolumeError(f"{path}: is {img.GetDimension()}D; SynergyPL needs 3D volumes")
    vol = _from_sitk(img, str(path))
    if min(vol.shape) < 2:
        raise VolumeError(f"{path}: shape {vol.shape} is a 2D slice, not a 3D volume")
    if vol.array.size == 0:
        raise VolumeError(f"{path}: image is empty")
    if vol.array.dtype.kind == "f" and not np.isfinite(vol.array).all():
        raise VolumeError(f"{path}: image contains NaN or infinite values")
    if not allow_constant and vol.array.min() == vol.array.max():
        raise VolumeError(f"{path}: image is constant (every voxel {vol.array.flat[0]}); nothing to segment")
    return vol


def check_label(label: Volume, image: Volume, num_classes: int, name: str = "") -> Volume:
    """Validate a label map against its image and the class count; returns it as uint8.

    Raises VolumeError if the grids differ, values are not whole numbers in [0, num_classes).
    """
    name = name or label.source or "label"
    diff = image.same_geometry(label)
    if diff:
        raise VolumeError(f"{name}: label does not fit image {image.source or ''}: {diff}")
    arr = label.array
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise VolumeError(f"{name}: label contains NaN or infinite values")
        if not np.all(arr == np.round(arr)):
            raise VolumeError(f"{name}: label has non-integer values")
    values = np.unique(arr)
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise VolumeError(f"{name}: label values {bad.tolist()[:10]} are outside the classes 0..{num_classes - 1}")
    return label.with_array(arr.astype(np.uint8))


def read_label(path: str | os.PathLike, image: Volume, num_classes: int) -> Volume:
    """Read a label map and check it against ``image`` and ``num_classes`` (see :func:`check_label`)."""
    return check_label(read_volume(path, allow_constant=True), image, num_classes, str(path))


def write_volume(vol: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write a volume with its geometry; the format follows the extension (.nii.gz, .nrrd, .mha)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_to_sitk(vol), str(path), compress)
    return path
