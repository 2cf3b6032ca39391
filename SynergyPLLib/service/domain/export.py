"""Exports of a label version: Slicer ``.seg.nrrd`` (segment names, colours, terminology), NIfTI, and
DICOM SEG (highdicom; only for cases whose image came from DICOM).

In: the workspace, a case and a label file.  Out: bytes of the export file, or 409 with the reason.
"""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path

import numpy as np
from pydicom.sr.coding import Code

from SynergyPLLib.engine.io import Volume, read_volume

from .. import SERVICE_VERSION
from ..store.project import ClassInfo
from ..store.workspace import Workspace
from .cases import get_case_row
from .errors import BadRequest, Conflict
from .labels import version_row
from .terminology import to_slicer

FORMATS = {"seg.nrrd": ("application/octet-stream", ".seg.nrrd"),
           "nifti": ("application/gzip", ".nii.gz"),
           "dicom-seg": ("application/dicom", ".dcm")}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise BadRequest(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def export_label(ws: Workspace, case_id: str, fmt: str, version: int | None) -> tuple[bytes, int, str, str]:
    """A label version (None: the latest) in format ``fmt`` -> (bytes, version, file extension, media type)."""
    fmt = check_format(fmt)
    if fmt == "dicom-seg":
        from .pacs import ensure_local  # fetched on first use; a lazy import: pacs imports this module

        ensure_local(ws, case_id)
    with ws.db.Session() as s:
        dicom_dir = get_case_row(s, case_id).dicom_dir
    lv = version_row(ws, case_id, version)
    path = ws.abs(lv.path)
    classes = ws.config.classes
    if fmt == "seg.nrrd":
        data = seg_nrrd_bytes(path, classes)
    elif fmt == "nifti":
        data = nifti_bytes(path)
    else:
        data = dicom_seg_bytes(ws, case_id, dicom_dir, path, classes, lv.author)
    media, ext = FORMATS[fmt]
    return data, lv.version, ext, media


def seg_nrrd_bytes(label_path: Path, classes: list[ClassInfo]) -> bytes:
    """A Slicer segmentation file: one layer, label value = class value, all classes as segments."""
    import slicerio

    vol = read_volume(label_path, allow_constant=True)
    arr = np.ascontiguousarray(vol.array.astype(np.uint8))
    segments = []
    for c in classes:
        idx = np.nonzero(arr == c.value)
        extent = ([int(v) for axis in idx for v in (axis.min(), axis.max())] if idx[0].size
                  else [0, -1, 0, -1, 0, -1])
        segments.append({"id": f"Segment_{c.value}", "name": c.name, "labelValue": c.value, "layer": 0,
                         "color": [round(x / 255.0, 6) for x in c.color], "extent": extent,
                         "terminology": to_slicer(c.terminology.model_dump(exclude_none=True)),
                         "status": "completed"})
    seg = {"voxels": arr, "ijkToLPS": vol.ijk_to_lps, "segments": segments, "encoding": "gzip",
           "containedRepresentationNames": ["Binary labelmap"], "masterRepresentation": "Binary labelmap"}
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "label.seg.nrrd"
        slicerio.write_segmentation(str(out), seg)
        return out.read_bytes()


def nifti_bytes(label_path: Path) -> bytes:
    from SynergyPLLib.engine.io import write_volume

    vol = read_volume(label_path, allow_constant=True)
    with tempfile.TemporaryDirectory() as d:
        out = write_volume(vol, Path(d) / "label.nii.gz")
        return out.read_bytes()


TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
         "AccessionNumber", "ReferringPhysicianName")


def _with_type2(ds):
    """Type 2 attributes (required, may be empty) that anonymised series often drop; highdicom copies
    them into the SEG. Only the in-memory copy is changed."""
    for key in TYPE2:
        if key not in ds:
            setattr(ds, key, "")
    return ds


def person_name(author: str) -> str:
    """An author as a DICOM PN value: 'Rita Reader' -> 'Reader^Rita', 'Reader^Rita' stays; characters
    PN forbids (backslash, '=' group separators, control characters) are dropped; at most 64 per group."""
    clean = re.sub(r"[\\=\x00-\x1f]", "", author or "").strip()
    if "^" in clean:
        parts = [p.strip() for p in clean.split("^")][:5]
    else:
        words = clean.split()
        parts = [words[-1], " ".join(words[:-1])] if len(words) > 1 else words
    value = "^".join(parts).rstrip("^")[:64]
    return value or "SynergyPL"


def _code(c) -> Code:
    return Code(c.code, c.scheme, c.meaning)


def segment_description(number: int, c: ClassInfo, algorithm):
    """highdicom segment item for class ``c``: label = the class name, description = structure and
    modifier ('Hippocampus, Anterior'), and the terminology's modifier code nested in the property type,
    as DICOM's Segment Description macro and Slicer's .seg.nrrd both keep it."""
    import highdicom as hd

    t = c.terminology
    desc = hd.seg.SegmentDescription(
        segment_number=number, segment_label=c.name[:64], segmented_property_category=_code(t.category),
        segmented_property_type=_code(t.type), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(*c.color))
    words = [t.type.meaning]
    if t.typeModifier is not None:
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(t.typeModifier.code, t.typeModifier.scheme, t.typeModifier.meaning)]
        words.append(t.typeModifier.meaning)
    desc.SegmentDescription = ", ".join(words)[:64]
    return desc


def dicom_seg_from_series(files: list[Path], label: Volume, classes: list[ClassInfo], author: str = "",
                          name: str = "case") -> bytes:
    """DICOM SEG of ``label`` (on the series' grid, slices in ``files``' order) referencing the series.

    ``author`` becomes the Content Creator's Name (a PN); the SeriesDescription names SynergyPL and
    the source series. Raises Conflict when the label does not fit the series or is empty.
    """
    import highdicom as hd
    import pydicom

    sources = [_with_type2(pydicom.dcmread(f)) for f in files]  # stored in ITK's slice order (k = 0..K-1)
    arr = label.array.astype(np.uint8)
    if arr.shape[2] != len(sources):
        raise Conflict(f"case {name!r}: label has {arr.shape[2]} slices but the DICOM series {len(sources)}")
    # [i, j, k] (column, row, slice) -> frames (k, row, column) in the source images' order
    mask = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))
    present = [c for c in classes if np.any(mask == c.value)]
    if not present:
        raise Conflict(f"case {name!r}: this label version is empty; there is nothing to export as DICOM SEG")
    remap = np.zeros(256, dtype=np.uint8)
    for n, c in enumerate(present, start=1):
        remap[c.value] = n
    mask = remap[mask]
    algo = hd.AlgorithmIdentificationSequence(name="SynergyPL", version=SERVICE_VERSION,
                                              family=Code("123109", "DCM", "Manual Processing"))
    descs = [segment_description(n, c, algo) for n, c in enumerate(present, start=1)]
    source_series = str(getattr(sources[0], "SeriesDescription", "") or "").strip()
    series_description = (f"SynergyPL segmentation of {source_series}" if source_series
                          else "SynergyPL segmentation")[:64]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs, series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="SynergyPL", manufacturer_model_name="SynergyPL",
        software_versions=SERVICE_VERSION, device_serial_number="0", content_label="SYNERGYPL",
        content_description=series_description, series_description=series_description,
        content_creator_name=person_name(author), omit_empty_frames=False)
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()


def dicom_seg_bytes(ws: Workspace, case_id: str, dicom_dir: str | None, label_path: Path,
                    classes: list[ClassInfo], author: str = "") -> bytes:
    """DICOM SEG referencing the case's original DICOM series (409 when the image was not DICOM)."""
    if not dicom_dir:
        raise Conflict(f"case {case_id!r} was not uploaded as DICOM, so there is no series for a DICOM SEG "
                       "to reference; export as seg.nrrd or nifti, or upload the image as a ZIP of its DICOM series")
    files = sorted(ws.abs(dicom_dir).glob("*.dcm"))
    return dicom_seg_from_series(files, read_volume(label_path, allow_constant=True), classes, author, case_id)
