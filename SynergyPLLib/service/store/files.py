"""Files on disk: safe identifiers, atomic write-once files, hashing.

Every file the service keeps is written as: temporary file in the same folder -> flush + fsync ->
``os.replace`` (atomic on POSIX) -> fsync of the folder. A reader therefore sees either no file or the
whole file, also after ``kill -9``. Stored label versions use a fresh unique name each time, so no
stored file is ever rewritten in place; the database row pointing at a file is written only after the
file is complete.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from SynergyPLLib.engine.decathlon import case_id_of

CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
TMP_SUFFIX = ".partial"


class IdError(ValueError):
    """An identifier that could escape the project folder or is otherwise unusable."""


def check_case_id(case_id: str) -> str:
    """Return ``case_id`` if it is a safe folder name, else raise :class:`IdError` saying why."""
    if not isinstance(case_id, str) or not case_id:
        raise IdError("a case id must not be empty")
    if "/" in case_id or "\\" in case_id:
        raise IdError(f"case id {case_id!r} contains a path separator; use letters, digits, '.', '_', '-'")
    if ".." in case_id:
        raise IdError(f"case id {case_id!r} contains '..'; use letters, digits, '.', '_', '-'")
    if not CASE_ID_RE.match(case_id):
        raise IdError(f"case id {case_id!r} is not valid: start with a letter or digit, then use up to 99 "
                      "letters, digits, '.', '_' or '-'")
    return case_id


def case_id_from_filename(name: str) -> str:
    """A safe case id from an uploaded file's name ('sub 01.nii.gz' -> 'sub_01'): the engine's case id
    (the name without its image extension, :func:`~SynergyPLLib.engine.decathlon.case_id_of`), or the
    name without ``.zip`` / ``.dcm``, made safe."""
    base = os.path.basename(name.replace("\\", "/"))
    stem = case_id_of(base)
    if stem == base:
        for ext in (".zip", ".dcm"):
            if base.lower().endswith(ext):
                stem = base[: -len(ext)]
                break
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")
    base = base.replace("..", "_")
    return (base or "case")[:100]


def fsync_dir(path: Path) -> None:
    """Make a rename/creation inside ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp + fsync + replace + dir fsync)."""
    return atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_with(path: Path, writer: Callable[[Path], object], tmp: Path | None = None) -> Path:
    """Let ``writer(tmp_path)`` create a temporary file, then publish it atomically at ``path``.

    The temporary name keeps the final extension's suffix chain out of the way of readers that look
    at extensions, so ``writer`` must not rely on the temporary file's extension; use
    :func:`atomic_write_volume` for image files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or _tmp_name(path)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def atomic_write_volume(vol, path: Path) -> Path:
    """Write an engine :class:`Volume` as NRRD/NIfTI atomically (the extension picks the format)."""
    from SynergyPLLib.engine.io import write_volume

    path = Path(path)
    ext = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    # the temporary name keeps the extension: the writer picks the format from it
    tmp = path.with_name(f".{uuid.uuid4().hex[:8]}{TMP_SUFFIX}{ext}")
    return atomic_write_with(path, lambda t: write_volume(vol, t, compress=True), tmp)


def publish_dir(tmp_dir: Path, final_dir: Path) -> Path:
    """Atomically rename a fully written folder into place (``final_dir`` must not exist)."""
    for f in tmp_dir.rglob("*"):
        if f.is_file():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)
    return final_dir


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unique_name(prefix: str, ext: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}{ext}"


def remove_partials(root: Path) -> int:
    """Delete temporary files left by a crash (never a published file). Returns how many."""
    n = 0
    for p in list(Path(root).rglob(f"*{TMP_SUFFIX}*")):
        if p.is_file() and TMP_SUFFIX in p.name and p.name.startswith("."):
            p.unlink(missing_ok=True)
            n += 1
    return n


def empty_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def move_to_trash(root: Path, path: Path, note: str = "") -> None:
    """Move a case folder to ``<root>/trash/<name><note>-<ms time>`` (kept, out of the store's way)."""
    trash = root / "trash"
    trash.mkdir(exist_ok=True)
    path.rename(trash / f"{path.name}{note}-{int(time.time() * 1000)}")
