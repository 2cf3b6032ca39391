"""``synergypl init``: create a project folder from a Decathlon folder or a folder of images.

Decathlon (``dataset.json``, ``imagesTr/``, ``labelsTr/``): classes come from ``dataset.json``'s
``labels``; every training image becomes a case; labels are imported for the first ``labeled`` cases in
id order (all when ``labeled`` is None), as confirmed version 1 by author ``import``; the others are
unlabeled. A folder of images (NIfTI/NRRD/MHA files, or sub-folders holding one DICOM series each)
needs ``classes``.

Every image and label passes the same checks as an upload. ``limit`` imports only the first N cases.
A sub-folder must hold exactly one DICOM series (checked before anything is written). When init fails
it removes what it wrote, so the same command can run again; the error names the file and the problem.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from SynergyPLLib.engine.config import profile_config
from SynergyPLLib.engine.decathlon import read_decathlon

from ..store.files import case_id_from_filename
from ..store.project import ClassInfo, ProjectConfig, ServiceOptions, Terminology, engine_dict_without_classes
from ..store.workspace import Workspace
from .cases import add_case
from .errors import ServiceError
from .labels import add_label_version
from .terminology import default_color, guess_terminology

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def _classes(names: list[str], dataset_name: str) -> list[ClassInfo]:
    return [ClassInfo(value=i, name=n, color=default_color(i),
                      terminology=Terminology.model_validate(guess_terminology(n, dataset_name)))
            for i, n in enumerate(names, start=1)]


def _decathlon(src: Path) -> tuple[str, str, list[str], list[tuple[Path, Path | None]]]:
    """Name, description, class names (no background) and (image, label or None) of a Decathlon folder,
    by case id; read by the engine's reader (a listed label that is missing leaves its case unlabeled)."""
    ds = read_decathlon(src, missing_labels_ok=True, need_training=False)
    pairs = sorted(((c.image, c.label) for c in ds.training + ds.test), key=lambda p: case_id_from_filename(p[0].name))
    return ds.name, ds.description, ds.classes[1:], pairs


def _image_folder(src: Path) -> list[tuple[Path, Path | None]]:
    items = []
    for p in sorted(src.iterdir()):
        if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES):
            items.append((p, None))
        elif p.is_dir() and any(f.suffix.lower() == ".dcm" or f.suffix == "" for f in p.iterdir() if f.is_file()):
            _check_one_series(p)
            items.append((p, None))
    return items


def _check_one_series(folder: Path) -> None:
    """Raise ValueError naming ``folder`` and the series in it unless it holds exactly one DICOM series
    (one case is one series). Runs before anything is created."""
    import pydicom

    from SynergyPLLib.engine.io import dicom_series

    series = dicom_series(folder)
    if len(series) == 1:
        return
    if not series:
        raise ValueError(f"{folder}: sub-folder holds files but no DICOM image series; remove it from {folder.parent} "
                         "or put the images there as NIfTI/NRRD/MHA files")
    found = []
    for uid, files in series.items():
        ds = pydicom.dcmread(files[0], stop_before_pixels=True, force=True)
        desc = str(getattr(ds, "SeriesDescription", "") or "no description")
        number = getattr(ds, "SeriesNumber", None)
        found.append(f"'{desc}' ({'' if number in (None, '') else f'series number {number}, '}"
                     f"{len(files)} files, UID {uid})")
    raise ValueError(f"{folder}: sub-folder holds {len(series)} DICOM series: {'; '.join(found)}. Each case is one "
                     "series: move each series into its own sub-folder of the source and run init again")


def _remove_partial_project(dest: Path, created: bool) -> None:
    """Undo a failed init: remove what it wrote (the folder too when init created it)."""
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for p in dest.iterdir():
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def _import_cases(ws: Workspace, pairs: list[tuple[Path, Path | None]], labeled: int | None, quiet: bool) -> None:
    n_lab = 0
    for n, (img, lab) in enumerate(pairs, start=1):
        cid = case_id_from_filename(img.name)
        fmt = "dicom" if img.is_dir() else ("nifti" if ".nii" in img.name.lower() else img.suffix.lstrip(".").lower())
        dicom = None
        try:  # the upload checks' message, named by the source file
            if img.is_dir():
                from .uploads import dicom_series_files

                dicom = dicom_series_files(img, img.name)
            add_case(ws, img, case_id=cid, original_name=img.name, source_format=fmt, dicom_files=dicom)
        except ServiceError as exc:
            raise ValueError(f"{img}: {exc.detail}") from None
        if lab is not None and (labeled is None or n_lab < labeled):
            try:
                add_label_version(ws, cid, lab, filename=lab.name, author="import", source="human",
                                  parent_version=0, status="confirmed")
            except ServiceError as exc:
                raise ValueError(f"{lab}: {exc.detail}") from None
            n_lab += 1
        if not quiet and (n % 20 == 0 or n == len(pairs)):
            print(f"imported {n}/{len(pairs)} cases ({n_lab} with labels)", file=sys.stderr, flush=True)


def init_project(dest: Path, source: Path | None = None, *, labeled: int | None = None, limit: int | None = None,
                 name: str | None = None, classes: list[str] | None = None, profile: str = "cpu",
                 max_upload_mb: float = 512.0, database_url: str | None = None, quiet: bool = False) -> Workspace:
    """Create the project at ``dest`` (must be absent or empty) and import ``source``."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} exists and is not empty; choose a new folder for the project")
    pairs: list[tuple[Path, Path | None]] = []
    description = ""
    if source is not None:
        source = Path(source)
        if (source / "dataset.json").exists():
            ds_name, description, names, pairs = _decathlon(source)
            classes = classes or names
            name = name or ds_name
        elif source.is_dir():
            pairs = _image_folder(source)
            if not pairs:
                raise ValueError(f"{source}: no images found (NIfTI, NRRD, MHA files or DICOM series folders)")
        else:
            raise ValueError(f"{source}: not a folder")
    if not classes:
        raise ValueError("give the class names (--classes 'liver,tumor'); they cannot be read from this source")
    name = name or dest.name
    cfg = ProjectConfig(name=name, description=description, classes=_classes(classes, name),
                        service=ServiceOptions(max_upload_mb=max_upload_mb, database_url=database_url),
                        engine=engine_dict_without_classes(profile_config(profile, ["background", *classes])))
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    ws = None
    try:  # a failure leaves nothing behind, so the same command can be run again
        cfg.save(dest)
        ws = Workspace(dest)
        _import_cases(ws, pairs[:limit] if limit is not None else pairs, labeled, quiet)
    except BaseException as exc:
        if ws is not None:
            ws.close()
        _remove_partial_project(dest, created)
        if isinstance(exc, ValueError | OSError):
            raise ValueError(f"{exc}; nothing was kept at {dest}") from None
        raise
    return ws
