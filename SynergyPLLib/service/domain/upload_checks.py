"""What an uploaded image or label file declares, checked before any image library opens it.

An upload must be self-contained and honest about its size:

- **self-contained**: a NRRD with ``data file:`` (or ``datafile:``), a MetaImage whose
  ``ElementDataFile`` is not ``LOCAL``, or a NIfTI header/image pair would make the reader fetch
  voxels from another file on the server (``../../project.yaml``, ``/dev/zero``...). Refused (422).
- **bounded**: the voxel count and the bytes of voxel data the header declares are compared with the
  project's limits (``service.max_voxels``, ``service.max_image_mb``) before anything is decompressed
  or allocated (413).
- **complete**: the voxel data in the file (decompressed, with a cap just above what is declared)
  must be exactly what the header declares (NIfTI: at least), so a cut file is refused (422) instead
  of being zero-filled by the reader.

In: the saved upload's path, its format (:func:`.uploads.kind_of`), the name the user gave and the
:class:`UploadLimits`.  Out: the :class:`Declared` header facts, or a 413/422 naming the problem.
"""

from __future__ import annotations

import bz2
import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from SynergyPLLib.engine.io import VolumeError, check_gzip_complete

from .errors import TooLarge, Unprocessable

HEADER_MAX_BYTES = 1 << 20  # no legitimate NRRD/MetaImage text header is near this
CHUNK = 1 << 20
# ITK's reader for each format: the file is read with this one, never with one guessed from content
IMAGE_IO = {"nrrd": "NrrdImageIO", "mha": "MetaImageIO", "nifti": "NiftiImageIO"}
MET_TYPES = {"MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
             "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4", "MET_LONG_LONG": "i8",
             "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}


@dataclass(frozen=True)
class UploadLimits:
    """The most an upload may declare: voxels and bytes of (decompressed) voxel data."""

    max_voxels: int
    max_image_bytes: int

    @classmethod
    def of(cls, service_options) -> UploadLimits:
        """From a project's ``service:`` options (:class:`~.project.ServiceOptions`)."""
        return cls(int(service_options.max_voxels), int(service_options.max_image_mb * 2**20))


@dataclass(frozen=True)
class Declared:
    """What a header says: the format, the array shape (as stored) and the voxel type."""

    format: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def voxels(self) -> int:
        return int(np.prod([int(s) for s in self.shape], dtype=object))

    @property
    def data_bytes(self) -> int:
        return self.voxels * self.dtype.itemsize


def check_upload(path: Path, kind: str, name: str, limits: UploadLimits) -> Declared:
    """Refuse a detached, oversized or truncated upload; returns what its header declares."""
    checks = {"nrrd": _check_nrrd, "mha": _check_mha, "nifti": _check_nifti}
    if kind not in checks:
        raise Unprocessable(f"{name}: format {kind!r} cannot be checked")
    return checks[kind](Path(path), name, limits)


def check_limits(declared: Declared, name: str, limits: UploadLimits) -> None:
    """413 when the header declares more voxels or bytes than the project accepts."""
    shape = "x".join(str(s) for s in declared.shape)
    if declared.voxels > limits.max_voxels:
        raise TooLarge(f"{name}: declares {shape} = {declared.voxels:,} voxels, over the limit of "
                       f"{limits.max_voxels:,} (service.max_voxels in project.yaml)")
    if declared.data_bytes > limits.max_image_bytes:
        raise TooLarge(f"{name}: declares {declared.data_bytes / 2**20:,.0f} MB of voxel data ({shape} "
                       f"{declared.dtype.name}), over the limit of {limits.max_image_bytes / 2**20:,.0f} MB "
                       "(service.max_image_mb in project.yaml)")


def _compare(name: str, have: int, need: int, what: str = "bytes of voxel data") -> None:
    if have < need:
        raise Unprocessable(f"{name}: file is truncated: its header declares {need:,} {what}, the file holds "
                            f"{have:,}")
    if have > need:
        raise Unprocessable(f"{name}: file holds more voxel data than its header declares ({have:,} {what}, "
                            f"header says {need:,}); the header does not describe this data")


def _inflated_size(fh, cap: int, name: str, bzip2: bool = False) -> int:
    """Decompress the rest of ``fh`` (gzip/zlib, or bzip2) and count the bytes, stopping once more
    than ``cap`` came out (so a bomb costs at most ``cap``). 422 when the stream is corrupt or ends
    before its end marker. Multi-member streams (bgzip) are followed to the end."""
    def new():
        return bz2.BZ2Decompressor() if bzip2 else zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib

    d, total, pending = new(), 0, b""
    try:
        while True:
            if bzip2:
                data = (pending or fh.read(CHUNK)) if d.needs_input else b""
            else:
                data = d.unconsumed_tail or pending or fh.read(CHUNK)
            pending = b""
            if not data and (not bzip2 or d.needs_input):
                break  # the file ended before the stream's end marker
            total += len(d.decompress(data, max_length=CHUNK))
            if total > cap:
                return total
            if d.eof:
                rest = d.unused_data + fh.read(CHUNK)
                if not rest:
                    return total
                d, pending = new(), rest
    except (zlib.error, OSError, EOFError, ValueError) as exc:
        raise Unprocessable(f"{name}: compressed voxel data is corrupt ({exc})") from None
    raise Unprocessable(f"{name}: file is truncated: the compressed voxel data ends early "
                        f"({total:,} bytes decompressed before the end of the file)")


# ---- NRRD ---------------------------------------------------------------------------------------

def _text_header(path: Path, name: str) -> tuple[list[str], bytes]:
    """The first HEADER_MAX_BYTES of the file as text lines (for header parsing) plus the raw bytes."""
    with open(path, "rb") as fh:
        head = fh.read(HEADER_MAX_BYTES)
    if not head:
        raise Unprocessable(f"{name}: file is empty")
    return head.decode("latin-1").split("\n"), head


def _check_nrrd(path: Path, name: str, limits: UploadLimits) -> Declared:
    import nrrd

    lines, head = _text_header(path, name)
    if not head.startswith(b"NRRD000"):
        raise Unprocessable(f"{name}: cannot be read as NRRD (no 'NRRD000x' magic line)")
    header_lines, offset, ended = [], 0, False
    for line in lines:
        offset += len(line) + 1
        text = line.rstrip("\r")
        if not text.strip() and header_lines:
            ended = True
            break
        header_lines.append(text)
    if not ended:
        raise Unprocessable(f"{name}: NRRD header has no end (no blank line in the first "
                            f"{HEADER_MAX_BYTES // 1024} KB); the file holds no voxel data")
    for text in header_lines[1:]:
        if text.startswith("#") or ":" not in text:
            continue
        key = text.split(":", 1)[0].strip().lower()
        if key.replace(" ", "") == "datafile":
            raise Unprocessable(f"{name}: detached NRRD header ({text.strip()!r}): the voxel data is in another "
                                "file, which the server will not read; upload a self-contained .nrrd "
                                "(header and data in one file)")
        if key in ("line skip", "lineskip", "byte skip", "byteskip") and text.split(":", 1)[1].strip() != "0":
            raise Unprocessable(f"{name}: NRRD field {text.strip()!r} is not accepted in uploads; save the file "
                                "again without skipped bytes")
    try:
        header = nrrd.read_header(header_lines)
        dtype = nrrd.reader._determine_datatype(header)
    except Exception as exc:  # noqa: BLE001 - pynrrd raises NRRDError, KeyError, ValueError...
        raise Unprocessable(f"{name}: NRRD header is invalid ({type(exc).__name__}: {exc})") from None
    sizes = header.get("sizes")
    if sizes is None or len(np.atleast_1d(sizes)) != int(header.get("dimension", -1)):
        raise Unprocessable(f"{name}: NRRD header's 'sizes' does not match its 'dimension'")
    sizes = tuple(int(s) for s in np.atleast_1d(sizes))
    if min(sizes) < 1:
        raise Unprocessable(f"{name}: NRRD header declares an empty size {sizes}")
    declared = Declared("nrrd", sizes, dtype)
    check_limits(declared, name, limits)
    encoding = str(header.get("encoding", "")).lower()
    with open(path, "rb") as fh:
        fh.seek(offset)
        if encoding == "raw":
            have = path.stat().st_size - offset
        elif encoding in ("gzip", "gz", "bzip2", "bz2"):
            have = _inflated_size(fh, declared.data_bytes, name, bzip2=encoding.startswith("bz"))
        elif encoding in ("ascii", "text", "txt"):
            _compare(name, len(fh.read().split()), declared.voxels, "values")
            return declared
        else:
            raise Unprocessable(f"{name}: NRRD encoding {encoding!r} is not accepted; use raw or gzip")
    _compare(name, have, declared.data_bytes)
    return declared


# ---- MetaImage ----------------------------------------------------------------------------------

def _check_mha(path: Path, name: str, limits: UploadLimits) -> Declared:
    lines, _ = _text_header(path, name)
    fields, offset, data_file = {}, 0, None
    for line in lines:
        offset += len(line) + 1
        if "=" not in line:
            if line.strip():
                raise Unprocessable(f"{name}: cannot be read as MetaImage (line {line[:60]!r} is not 'Key = Value')")
            continue
        key, value = (x.strip() for x in line.split("=", 1))
        fields[key.lower()] = value
        if key.lower() == "elementdatafile":
            data_file = value
            break
    if data_file is None:
        raise Unprocessable(f"{name}: cannot be read as MetaImage: the header has no ElementDataFile line (not a "
                            "MetaImage, or the header is cut)")
    if data_file.upper() != "LOCAL":
        raise Unprocessable(f"{name}: detached MetaImage header (ElementDataFile = {data_file}): the voxel data "
                            "is in another file, which the server will not read; upload a self-contained .mha "
                            "(ElementDataFile = LOCAL)")
    for key in ("headersize", "elementnumberofchannels"):
        if fields.get(key, "0" if key == "headersize" else "1") not in (("0", "-0") if key == "headersize" else ("1",)):
            raise Unprocessable(f"{name}: MetaImage field {key} = {fields[key]} is not accepted in uploads")
    try:
        dims = tuple(int(x) for x in fields["dimsize"].split())
        ndims = int(fields.get("ndims", len(dims)))
        dtype = np.dtype(MET_TYPES[fields["elementtype"].upper()])
    except KeyError as exc:
        raise Unprocessable(f"{name}: MetaImage header lacks or misspells {exc.args[0]!r}") from None
    except ValueError as exc:
        raise Unprocessable(f"{name}: MetaImage header is invalid ({exc})") from None
    if len(dims) != ndims or not dims or min(dims) < 1:
        raise Unprocessable(f"{name}: MetaImage DimSize {dims} does not fit NDims = {ndims}")
    if fields.get("binarydata", "true").lower() != "true":
        raise Unprocessable(f"{name}: text (BinaryData = False) MetaImage is not accepted; save it as binary")
    if fields.get("elementbyteordermsb", fields.get("binarydatabyteordermsb", "false")).lower() == "true":
        dtype = dtype.newbyteorder(">")
    declared = Declared("mha", dims, dtype)
    check_limits(declared, name, limits)
    if fields.get("compresseddata", "false").lower() == "true":
        with open(path, "rb") as fh:
            fh.seek(offset)
            have = _inflated_size(fh, declared.data_bytes, name)
    else:
        have = path.stat().st_size - offset
    _compare(name, have, declared.data_bytes)
    return declared


# ---- NIfTI --------------------------------------------------------------------------------------

def _nifti_magic(path: Path) -> bytes:
    """The magic string as stored (nibabel may normalise it on load): b'n+1'/b'n+2' for a single file."""

    with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as fh:
        head = fh.read(352)
    nifti2 = int.from_bytes(head[:4], "little") == 540 or int.from_bytes(head[:4], "big") == 540
    return (head[4:8] if nifti2 else head[344:348]).rstrip(b"\0")


def _check_gzip_stream(path: Path, name: str) -> None:
    """Decompress the whole stream once (the engine's check); a cut or corrupt one is refused as truncated."""
    try:
        check_gzip_complete(path, name)
    except VolumeError as exc:
        raise Unprocessable(str(exc)) from None


def _check_nifti(path: Path, name: str, limits: UploadLimits) -> Declared:
    import nibabel as nib

    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                raise Unprocessable(f"{name}: file is truncated or corrupt (not gzip-compressed data)")
    try:
        img = nib.load(str(path))
        header = img.header
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = header.get_data_dtype()
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds for a bad header
        if path.name.lower().endswith(".gz"):
            _check_gzip_stream(path, name)  # a cut .gz is "truncated", not "cannot work out file type"
        raise Unprocessable(f"{name}: cannot be read as NIfTI ({str(exc).replace(str(path), name)})") from None
    magic = _nifti_magic(path)
    if magic not in (b"n+1", b"n+2"):
        raise Unprocessable(f"{name}: NIfTI header says its voxel data is in a separate file (magic "
                            f"{magic!r}, a .hdr/.img pair); upload a single-file .nii or .nii.gz")
    if not shape or min(shape) < 1:
        raise Unprocessable(f"{name}: NIfTI header declares an empty shape {shape}")
    declared = Declared("nifti", shape, dtype)
    check_limits(declared, name, limits)
    offset = int(header["vox_offset"]) or header.sizeof_hdr + 4
    need = offset + declared.data_bytes
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as fh:
            have = _inflated_size(fh, limits.max_image_bytes + offset, name)
        if have > limits.max_image_bytes + offset:
            raise TooLarge(f"{name}: decompresses to more than the limit of "
                           f"{limits.max_image_bytes / 2**20:,.0f} MB (service.max_image_mb in project.yaml)")
    else:
        have = path.stat().st_size
    if have < need:
        raise Unprocessable(f"{name}: file is truncated: its header declares {declared.data_bytes:,} bytes of "
                            f"voxel data after byte {offset}, the file holds {max(0, have - offset):,}")
    return declared
