"""Cases from a PACS (DICOMweb) and label versions published back to it as DICOM SEG.

Rules:

- **Import** (:func:`import_series`): a PACS series becomes a case that keeps its Study and Series
  Instance UIDs (``pacs.json`` in the project folder, owned by this module). Only the series' metadata
  is read (WADO-RS metadata, no pixels); it must describe one volume: one series, one image size, one
  orientation, one pixel spacing, at least 2 slices at distinct positions with even spacing, no
  localizer, no multi-frame object. The case's geometry (for label checks and the case list) is
  computed from that metadata; its image is not fetched yet.
- **Fetch on first use** (:func:`ensure_local`): the first time the case's image is read (the panel's
  "Next case"/image download, a prediction, a training round), the series is fetched (WADO-RS) into a
  temporary folder, checked as an uploaded DICOM series is, converted, and only then moved into the
  case folder (DICOM files first, ``image.nrrd`` last: its presence means "fetched"). A failure leaves
  the case as it was (not fetched) and the rest of the project working.
- **Publish** (:func:`publish`): a *confirmed* label version becomes a DICOM SEG that references the
  source series, stored with STOW-RS. The SEG carries the author (ContentCreatorName) and the label
  version: SeriesNumber = 1000 + version, ContentLabel ``SYNERGYPL_V<version>``, SeriesDescription
  ``SynergyPL label v<version> by <author>``, ContentDescription with the model version.
  **Publishing the same version twice is refused** (409 "already published as SeriesInstanceUID X ...;
  pass force=true to publish again"); with ``force`` a new SEG series is stored and both are recorded.

Errors: the PACS unreachable or refusing the credentials -> 502, no answer in time -> 504, series not on
the server -> 404, not a volume -> 422, no ``dicomweb:`` section -> 409; each names the problem.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..store.dicomweb import DicomwebError, DicomwebStore
from .errors import Conflict, NotFound, PacsTimeout, PacsUnavailable, ServiceError, Unprocessable

LINKS_FILE = "pacs.json"
SEG_SERIES_BASE = 1000  # SeriesNumber of a published SEG = 1000 + label version
SOURCE_FORMAT = "dicomweb"


def service_error(exc: DicomwebError) -> ServiceError:
    """The domain error for a failed DICOMweb request."""
    msg = str(exc)
    if exc.kind == "timeout":
        return PacsTimeout(f"the PACS did not answer in time: {msg}")
    if exc.kind == "not_found":
        return NotFound(f"not on the PACS: {msg}")
    if exc.kind == "config":
        return Conflict(f"the project's PACS configuration: {msg}")
    if exc.kind == "unreachable":
        return PacsUnavailable(f"the PACS is unreachable: {msg}")
    return PacsUnavailable(f"the PACS failed: {msg}")


def store_of(ws) -> DicomwebStore:
    try:
        return DicomwebStore.from_project(ws.config.dicomweb)
    except DicomwebError as exc:
        raise service_error(exc) from None


# ---- the links file (pacs.json) ----------------------------------------------------------------------
@contextlib.contextmanager
def _locked_links(ws) -> Iterator[dict]:
    """Read-modify-write of pacs.json under an exclusive file lock (server and worker processes)."""
    path = ws.root / LINKS_FILE
    with open(ws.root / f".{LINKS_FILE}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        data.setdefault("cases", {})
        data.setdefault("published", {})
        before = json.dumps(data, sort_keys=True)
        yield data
        if json.dumps(data, sort_keys=True) != before:
            tmp = path.with_name(f".{LINKS_FILE}.{uuid.uuid4().hex[:8]}.partial")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)


def links(ws) -> dict:
    path = ws.root / LINKS_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    return {"cases": data.get("cases", {}), "published": data.get("published", {})}


def link_of(ws, case_id: str) -> dict | None:
    return links(ws)["cases"].get(case_id)


# ---- checking a series' metadata --------------------------------------------------------------------
def _floats(ds, keyword: str, n: int) -> tuple | None:
    v = ds.get(keyword)
    if v is None or len(v) != n:
        return None
    return tuple(float(x) for x in v)


def volume_geometry(datasets: list, name: str) -> dict:
    """The geometry (shape, spacing, origin, direction in LPS, as ITK reads the series) of a series
    given as metadata Datasets; Unprocessable (422) saying why it is not one 3D volume."""
    if not datasets:
        raise NotFound(f"{name}: the series has no instances")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise Unprocessable(f"{name}: the instances belong to {len(series)} series; a case is one series")
    modality = str(datasets[0].get("Modality", ""))
    if modality in ("SEG", "SR", "PR", "RTSTRUCT", "KO", "DOC", "REG"):
        raise Unprocessable(f"{name}: a {modality} series is not an image volume")
    localizers = [ds for ds in datasets if "LOCALIZER" in [str(t).upper() for t in (ds.get("ImageType") or [])]]
    if localizers:
        raise Unprocessable(f"{name}: holds {len(localizers)} localizer (scout) image(s) (ImageType LOCALIZER); "
                            "a case must be one volume: import the volume series, not the localizer")
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise Unprocessable(f"{name}: multi-frame (enhanced) objects are not supported; export the series as "
                            "single-frame images")
    sizes = {(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) for ds in datasets}
    if (0, 0) in sizes or any(0 in s for s in sizes):
        raise Unprocessable(f"{name}: instances without Rows/Columns are not images")
    if len(sizes) > 1:
        raise Unprocessable(f"{name}: mixed image sizes {sorted(sizes)} (rows x columns); a volume has one size")
    orients = {tuple(round(x, 4) for x in (_floats(ds, "ImageOrientationPatient", 6) or ())) for ds in datasets}
    if () in orients:
        raise Unprocessable(f"{name}: instances without ImageOrientationPatient cannot be placed in 3D")
    if len(orients) > 1:
        raise Unprocessable(f"{name}: {len(orients)} different orientations; a volume has one (several "
                            "stacks, e.g. a localizer or a multi-planar series)")
    spacings = {tuple(round(x, 4) for x in (_floats(ds, "PixelSpacing", 2) or ())) for ds in datasets}
    if () in spacings or len(spacings) > 1:
        raise Unprocessable(f"{name}: pixel spacing missing or mixed {sorted(spacings)}")
    if len(datasets) < 2:
        raise Unprocessable(f"{name}: a single image, not a 3D volume")
    iop = np.array(_floats(datasets[0], "ImageOrientationPatient", 6))
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    positions = []
    for ds in datasets:
        ipp = _floats(ds, "ImagePositionPatient", 3)
        if ipp is None:
            raise Unprocessable(f"{name}: instance {ds.get('SOPInstanceUID', '?')} has no ImagePositionPatient")
        positions.append(np.array(ipp))
    order = np.argsort([float(p @ normal) for p in positions])
    dist = np.array([float(positions[i] @ normal) for i in order])
    gaps = np.diff(dist)
    if np.any(gaps < 1e-3):
        raise Unprocessable(f"{name}: {int(np.sum(gaps < 1e-3)) + 1} images share a position (several "
                            "acquisitions, echoes or time points in one series); a volume has one image per slice")
    step = float(np.median(gaps))
    if np.max(np.abs(gaps - step)) > 0.05 * step + 1e-3:
        raise Unprocessable(f"{name}: uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm): slices "
                            "missing or several stacks in one series")
    rows, cols = sizes.pop()
    ps = spacings.pop()
    direction = np.stack([row, col, normal], axis=1)
    return {"shape": [cols, rows, len(datasets)], "spacing": [ps[1], ps[0], step],
            "origin": positions[order[0]].tolist(), "direction": direction.reshape(-1).tolist()}


def _case_id_for(ds, taken) -> str:
    from ..store.files import case_id_from_filename

    parts = [str(ds.get("PatientID", "") or ""), str(ds.get("SeriesNumber", "") or ""),
             str(ds.get("SeriesDescription", "") or "")]
    base = case_id_from_filename("_".join(p for p in parts if p) or "pacs")[:90]
    cid, n = base, 2
    while taken(cid):
        cid, n = f"{base}_{n}", n + 1
    return cid


# ---- import -----------------------------------------------------------------------------------------
def import_series(ws, study_uid: str, series_uid: str, case_id: str | None = None,
                  store: DicomwebStore | None = None) -> dict:
    """Register a PACS series as a case (metadata only; the pixels come on first use)."""
    from ..store.db import Case
    from .cases import case_summary, valid_id

    store = store or store_of(ws)
    for cid, link in links(ws)["cases"].items():
        if link["series"] == series_uid:
            with ws.db.Session() as s:
                exists = s.get(Case, cid) is not None
            if exists:
                raise Conflict(f"series {series_uid} is already case {cid!r}", case_id=cid)
            forget_case(ws, cid)  # the case was deleted: its link goes too
    try:
        meta = store.series_metadata(study_uid, series_uid)
    except DicomwebError as exc:
        raise service_error(exc) from None
    desc = str(meta[0].get("SeriesDescription", "") or "") if meta else ""
    name = f"series {series_uid}" + (f" ({desc!r})" if desc else "")
    geometry = volume_geometry(meta, name)
    if {str(ds.get("StudyInstanceUID", study_uid)) for ds in meta} != {study_uid}:
        raise Unprocessable(f"{name}: is not in study {study_uid}")
    with ws.db.write_session() as s:
        cid = valid_id(case_id) if case_id else _case_id_for(meta[0], lambda c: s.get(Case, c) is not None)
        if s.get(Case, cid) is not None:
            raise Conflict(f"case {cid!r} already exists; choose another id or delete it first")
        with _locked_links(ws) as data:
            data["cases"][cid] = {"study": study_uid, "series": series_uid, "url": store.config.url,
                                  "description": desc, "instances": len(meta)}
        s.add(Case(id=cid, source_format=SOURCE_FORMAT, original_name=(desc or series_uid)[:255],
                   image_path=ws.rel(ws.case_dir(cid) / "image.nrrd"), dicom_dir=None, geometry=geometry,
                   image_sha256=""))
    return case_summary(ws, cid)


def is_fetched(ws, case_id: str) -> bool:
    return (ws.case_dir(case_id) / "image.nrrd").exists()


@contextlib.contextmanager
def _case_lock(ws, case_id: str):
    ws.tmp.mkdir(parents=True, exist_ok=True)
    with open(ws.root / f".pacs-fetch-{case_id}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def ensure_local(ws, case_id: str, store: DicomwebStore | None = None) -> bool:
    """Fetch a PACS case's series into the project on first use; False when nothing had to be done
    (not a PACS case, or already fetched). Raises a ServiceError and stores nothing on failure."""
    from ..store.db import Case

    link = link_of(ws, case_id)
    if link is None or is_fetched(ws, case_id):
        return False
    with ws.db.Session() as s:
        if s.get(Case, case_id) is None:  # deleted (its link is stale): the caller answers 404
            return False
    with _case_lock(ws, case_id):
        if is_fetched(ws, case_id):  # another request fetched it meanwhile
            return False
        _fetch(ws, case_id, link, store or store_of(ws))
    return True


def _fetch(ws, case_id: str, link: dict, store: DicomwebStore) -> None:
    from SynergyPLLib.engine.io import Volume

    from ..store.db import Case
    from ..store.files import atomic_write_volume, sha256_file
    from .upload_checks import UploadLimits
    from .uploads import dicom_series_files
    from .volumes import geometry_of, read_image

    name = f"case {case_id!r} (series {link['series']})"
    staging = ws.tmp / f"pacs-{case_id}-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    try:
        try:
            store.fetch_series(link["study"], link["series"], staging / "dicom")
        except DicomwebError as exc:
            raise service_error(exc) from None
        files = dicom_series_files(staging / "dicom", name, UploadLimits.of(ws.config.service))
        vol: Volume = read_image(staging / "dicom", name, None, UploadLimits.of(ws.config.service))
        with ws.db.Session() as s:
            expected = s.get(Case, case_id).geometry
        if list(vol.shape) != list(expected["shape"]):
            raise Unprocessable(f"{name}: the server's series is {list(vol.shape)} voxels but was "
                                f"{expected['shape']} when imported; delete the case and import it again")
        # the DICOM files in ITK's slice order, named so that sorting by name keeps it (the SEG relies on it)
        ordered = staging / "ordered"
        ordered.mkdir()
        for i, f in enumerate(files):
            os.rename(f, ordered / f"IM{i:05d}.dcm")
        atomic_write_volume(vol, staging / "image.nrrd")
        final = ws.case_dir(case_id)
        final.mkdir(parents=True, exist_ok=True)
        if (final / "dicom").exists():  # left by an interrupted fetch: its image.nrrd was never moved
            shutil.rmtree(final / "dicom")
        os.rename(ordered, final / "dicom")
        with ws.db.write_session() as s:
            case = s.get(Case, case_id)
            case.dicom_dir = ws.rel(final / "dicom")
            case.geometry = geometry_of(vol)
            case.image_sha256 = sha256_file(staging / "image.nrrd")
        os.rename(staging / "image.nrrd", final / "image.nrrd")  # last: now the case counts as fetched
        with _locked_links(ws) as data:
            if case_id in data["cases"]:
                data["cases"][case_id]["fetched_at"] = datetime.now(UTC).isoformat()
                data["cases"][case_id]["fetch_seconds"] = round(time.monotonic() - t0, 3)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_images(ws, case_ids) -> None:
    """:func:`ensure_local` for several cases (a training round's labeled cases)."""
    for cid in case_ids:
        ensure_local(ws, cid)


# ---- publish ----------------------------------------------------------------------------------------
def seg_for_version(ws, case_id: str, lv) -> bytes:
    """The DICOM SEG of label version ``lv`` with the author and the version in it."""
    import io

    import pydicom

    from SynergyPLLib.engine.io import read_volume

    from ..store.db import Case
    from .export import dicom_seg_from_series

    with ws.db.Session() as s:
        dicom_dir = s.get(Case, case_id).dicom_dir
    files = sorted(ws.abs(dicom_dir).glob("*.dcm"))
    label = read_volume(ws.abs(lv.path), allow_constant=True)
    data = dicom_seg_from_series(files, label, ws.config.classes, lv.author, case_id)
    seg = pydicom.dcmread(io.BytesIO(data))
    seg.SeriesNumber = SEG_SERIES_BASE + lv.version
    seg.ContentLabel = f"SYNERGYPL_V{lv.version}"[:16]
    seg.SeriesDescription = f"SynergyPL label v{lv.version} by {lv.author}"[:64]
    model = f", model v{lv.model_version}" if lv.model_version else ""
    seg.ContentDescription = f"SynergyPL case {case_id} label v{lv.version} ({lv.source}{model})"[:64]
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def publications(ws, case_id: str) -> list[dict]:
    return [p for p in links(ws)["published"].get(case_id, [])]


def publish(ws, case_id: str, version: int | None = None, *, force: bool = False,
            store: DicomwebStore | None = None) -> dict:
    """Store a confirmed label version on the PACS as DICOM SEG; refuses a second publish of the same
    version unless ``force`` (see the module docstring)."""
    import io

    import pydicom
    from sqlalchemy import select

    from ..store.db import LabelVersion, latest_label
    from .labels import version_row

    link = link_of(ws, case_id)
    if link is None:
        version_row(ws, case_id, version)  # 404 for an unknown case
        raise Conflict(f"case {case_id!r} did not come from the PACS, so there is no series to publish to; "
                       "export it as DICOM SEG instead (GET /api/cases/{id}/export?format=dicom-seg)")
    if version is None:
        with ws.db.Session() as s:
            latest = latest_label(s, case_id)
            lv = s.scalars(select(LabelVersion).where(LabelVersion.case_id == case_id,
                                                      LabelVersion.status == "confirmed")
                           .order_by(LabelVersion.version.desc())).first()
        if lv is None:
            have = f"its latest version {latest.version} is {latest.status}" if latest else "it has no label"
            raise Conflict(f"case {case_id!r} has no confirmed label version to publish ({have}); confirm one first")
    else:
        lv = version_row(ws, case_id, version)
        if lv.status != "confirmed":
            raise Conflict(f"case {case_id!r} label version {lv.version} is {lv.status}; only a confirmed "
                           "version is published")
    done = [p for p in publications(ws, case_id) if p["version"] == lv.version]
    if done and not force:
        last = done[-1]
        raise Conflict(f"case {case_id!r} label version {lv.version} is already published as SeriesInstanceUID "
                       f"{last['series_uid']} ({last['published_at']}); pass force=true to publish it again",
                       published=last)
    store = store or store_of(ws)
    ensure_local(ws, case_id, store)
    t0 = time.monotonic()
    data = seg_for_version(ws, case_id, lv)
    seg = pydicom.dcmread(io.BytesIO(data))
    try:
        store.store([seg], study_uid=link["study"])
    except DicomwebError as exc:
        raise service_error(exc) from None
    record = {"version": lv.version, "author": lv.author, "series_uid": str(seg.SeriesInstanceUID),
              "sop_uid": str(seg.SOPInstanceUID), "study_uid": link["study"], "source_series_uid": link["series"],
              "series_number": int(seg.SeriesNumber), "published_at": datetime.now(UTC).isoformat(),
              "seconds": round(time.monotonic() - t0, 3), "forced": bool(done)}
    with _locked_links(ws) as d:
        d["published"].setdefault(case_id, []).append(record)
    return record


def remote_series(ws, study_uid: str | None = None) -> list[dict]:
    """The PACS' series (of one study, or all), each with the case it was imported as (or None)."""
    try:
        found = store_of(ws).series(study_uid)
    except DicomwebError as exc:
        raise service_error(exc) from None
    by_series = {v["series"]: k for k, v in links(ws)["cases"].items()}
    return [{**s, "case_id": by_series.get(s["SeriesInstanceUID"])} for s in found]


def remote_studies(ws) -> list[dict]:
    try:
        return store_of(ws).studies()
    except DicomwebError as exc:
        raise service_error(exc) from None


def pacs_info(ws, case_id: str) -> dict:
    from .cases import get_case_row

    with ws.db.Session() as s:
        get_case_row(s, case_id)  # 404 for a case that does not exist (or was deleted)
    link = link_of(ws, case_id)
    if link is None:
        raise NotFound(f"case {case_id!r} did not come from the PACS")
    return {"case_id": case_id, **link, "fetched": is_fetched(ws, case_id),
            "published": publications(ws, case_id)}


def forget_case(ws, case_id: str) -> None:
    """Drop a deleted case's link (its publications stay recorded)."""
    with _locked_links(ws) as data:
        data["cases"].pop(case_id, None)


# ---- synergypl init --from-dicomweb -------------------------------------------------------------------
def init_from_dicomweb(dest: Path, section: dict, *, classes: list[str] | None, study_uids: list[str] | None = None,
                       series_uids: list[str] | None = None, name: str | None = None, profile: str = "cpu",
                       max_upload_mb: float = 512.0, database_url: str | None = None,
                       quiet: bool = False) -> tuple:
    """Create a project whose cases are PACS series (metadata only; pixels on first use).

    ``series_uids``: exactly these series (each must be a volume, else the init fails naming it);
    otherwise every series of ``study_uids`` (default: every study on the server) that is a volume;
    the others (SEG, localizers, mixed series) are skipped and listed. Returns (Workspace, skipped);
    ValueError with nothing left behind on failure (an unreachable server is found before anything is
    written)."""
    import sys

    from ..store.dicomweb import DicomwebConfig
    from ..store.project import ProjectConfig
    from .project_init import _remove_partial_project, init_project

    dest = Path(dest)
    try:
        cfg = DicomwebConfig.from_dict(section)
        store = DicomwebStore(cfg)
        if series_uids:
            wanted = []
            for uid in series_uids:
                found = store.series(None, SeriesInstanceUID=uid)
                if not found:
                    raise ValueError(f"series {uid} is not on the PACS at {cfg.url}")
                wanted.append(found[0])
        else:
            wanted = [s for st in (study_uids or [None]) for s in store.series(st)]
    except DicomwebError as exc:
        raise ValueError(f"{exc}; nothing was created at {dest}") from None
    if not wanted:
        raise ValueError(f"no series found on the PACS at {cfg.url}"
                         + (f" in study {', '.join(study_uids)}" if study_uids else ""))
    created = not dest.exists()
    ws = init_project(dest, None, classes=classes, name=name, profile=profile, max_upload_mb=max_upload_mb,
                      database_url=database_url, quiet=quiet)
    skipped: list[str] = []
    try:
        ws.config.dicomweb = cfg.to_dict()
        ws.config.save(dest)
        ws.config = ProjectConfig.load(dest)  # what the saved file now says
        for n, s in enumerate(wanted, start=1):
            label = f"series {s['SeriesInstanceUID']} ({s.get('SeriesDescription') or 'no description'})"
            if s.get("Modality") in ("SEG", "SR", "PR", "KO", "RTSTRUCT") and not series_uids:
                skipped.append(f"{label}: a {s['Modality']} series, not an image")
                continue
            try:
                import_series(ws, s["StudyInstanceUID"], s["SeriesInstanceUID"], store=store)
            except (Unprocessable, NotFound) as exc:
                if series_uids:
                    raise ValueError(exc.detail) from None
                skipped.append(exc.detail)
            except ServiceError as exc:
                raise ValueError(exc.detail) from None
            if not quiet and (n % 20 == 0 or n == len(wanted)):
                print(f"registered {n}/{len(wanted)} PACS series", file=sys.stderr, flush=True)
        if not links(ws)["cases"]:
            raise ValueError("none of the PACS series is a volume: " + "; ".join(skipped))
    except BaseException as exc:
        ws.close()
        _remove_partial_project(dest, created)
        if isinstance(exc, ValueError | OSError):
            raise ValueError(f"{exc}; nothing was kept at {dest}") from None
        raise
    return ws, skipped


def cmd_init_dicomweb(args) -> int:
    """``synergypl init --from-dicomweb URL``: secrets only from the environment variable named by
    ``--dicomweb-secret-env`` (default SYNERGYPL_PACS_PASSWORD / SYNERGYPL_PACS_TOKEN)."""
    section = {"url": args.from_dicomweb, "auth": args.dicomweb_auth}
    if args.dicomweb_username:
        section["username"] = args.dicomweb_username
    if args.dicomweb_secret_env:
        section["token_env" if args.dicomweb_auth == "bearer" else "password_env"] = args.dicomweb_secret_env
    if args.dicomweb_ca_bundle:
        section["ca_bundle"] = args.dicomweb_ca_bundle
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    ws, skipped = init_from_dicomweb(Path(args.project), section, classes=classes, study_uids=args.study,
                                     series_uids=args.series, name=args.name, profile=args.profile,
                                     max_upload_mb=args.max_upload_mb, database_url=args.database_url)
    n = len(links(ws)["cases"])
    print(f"created project {ws.config.name!r} at {ws.root}: {n} cases from the PACS at {section['url']} "
          f"(fetched on first use); classes {[c.name for c in ws.config.classes]}")
    for s in skipped:
        print(f"skipped {s}")
    ws.close()
    return 0
