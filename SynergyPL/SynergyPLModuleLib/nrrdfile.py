"""Writing a voxel array as a gzip NRRD file on a worker thread (numpy and zlib only, no MRML).

The panel uploads volumes and submits labels as NRRD files. Slicer's own writer needs the scene, so it
runs on the GUI thread, where gzip-compressing a large CT freezes the panel. Here the GUI thread only
copies the voxels (:func:`SynergyPLModuleLib.scene.volumes.array_ijk`) and the IJK-to-RAS matrix; the file is
written by the background task. zlib releases the GIL while it compresses, so the GUI stays responsive.
(pynrrd would do the same but is not part of Slicer's Python; the header is the few lines NRRD needs.)

The file is what Slicer writes: ``space: left-posterior-superior``, the voxel order of the array
``[i, j, k]`` (i fastest), exact float64 geometry, little endian.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
CHUNK_BYTES = 8 << 20

_NRRD_TYPES = {
    np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.int16): "int16",
    np.dtype(np.uint16): "uint16", np.dtype(np.int32): "int32", np.dtype(np.uint32): "uint32",
    np.dtype(np.int64): "int64", np.dtype(np.uint64): "uint64", np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}


class NrrdWriteError(ValueError):
    """The array cannot be written as a 3D NRRD; the message says why."""


def _vector(values) -> str:
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def nrrd_header(shape, dtype, ijk_to_ras: np.ndarray, compress: bool = True) -> bytes:
    """The NRRD header (ending with the blank line) for a 3D array of ``dtype`` on ``ijk_to_ras``."""
    dtype = np.dtype(dtype)
    type_name = _NRRD_TYPES.get(dtype.newbyteorder("<"))  # the data is written little endian
    if type_name is None:
        raise NrrdWriteError(f"cannot write voxels of type {dtype} as NRRD")
    if len(shape) != 3:
        raise NrrdWriteError(f"expected a 3D array, got shape {tuple(shape)}")
    lps = RAS_TO_LPS @ np.asarray(ijk_to_ras, dtype=float)
    lines = [
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        f"type: {type_name}",
        "dimension: 3",
        "space: left-posterior-superior",
        "sizes: " + " ".join(str(int(s)) for s in shape),
        "space directions: " + " ".join(_vector(lps[:3, axis]) for axis in range(3)),
        "kinds: domain domain domain",
        "endian: little",
        f"encoding: {'gzip' if compress else 'raw'}",
        "space origin: " + _vector(lps[:3, 3]),
    ]
    return ("\n".join(lines) + "\n\n").encode("ascii")


def write_nrrd(path: str | os.PathLike, array: np.ndarray, ijk_to_ras: np.ndarray, compress: bool = True,
               level: int = 1) -> Path:
    """Write ``array`` (``[i, j, k]``) with geometry ``ijk_to_ras`` (4x4, RAS) to ``path``; returns it.

    ``level``: zlib level (1 = fast; medical images gain little from higher levels). The file appears
    complete or not at all (written beside it, then renamed).
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    header = nrrd_header(array.shape, array.dtype, ijk_to_ras, compress)
    # NRRD stores the first axis fastest: that is the C order of the [k, j, i] transpose (a view when the
    # array came from volumes.array_ijk).
    data = np.ascontiguousarray(array.T, dtype=array.dtype.newbyteorder("<"))
    raw = memoryview(data.reshape(-1).view(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as out:
            out.write(header)
            if compress:
                encoder = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
                for start in range(0, len(raw), CHUNK_BYTES):
                    out.write(encoder.compress(raw[start:start + CHUNK_BYTES]))
                out.write(encoder.flush())
            else:
                out.write(raw)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path
