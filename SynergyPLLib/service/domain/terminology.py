"""Default colours and coded terminology (SNOMED CT) for segment classes.

In: a class name (and optionally the data set's name).  Out: an RGB colour (0-255) and a terminology
``{"category": code, "type": code[, "typeModifier": code]}`` where each code is
``{"scheme": "SCT", "code": "...", "meaning": "..."}`` -- what Slicer's segment terminology and DICOM SEG
need. The codes come from pydicom's SNOMED CT dictionary; unknown names fall back to Tissue/Tissue,
which is Slicer's own default. Edit ``project.yaml`` to set exact codes.
"""

from __future__ import annotations

import re

# Slicer's GenericAnatomyColors (first entries), so colours look familiar in Slicer.
PALETTE = [
    (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
    (221, 130, 101), (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0),
    (255, 250, 220), (230, 220, 70), (200, 200, 235), (250, 250, 210), (244, 214, 49),
]

ANATOMICAL_STRUCTURE = {"scheme": "SCT", "code": "91723000", "meaning": "Anatomical Structure"}
TISSUE = {"scheme": "SCT", "code": "85756007", "meaning": "Tissue"}
MODIFIERS = {"anterior", "posterior", "left", "right", "superior", "inferior", "medial", "lateral"}


def default_color(value: int) -> list[int]:
    """Colour for class ``value`` (1-based) from the palette."""
    return list(PALETTE[(value - 1) % len(PALETTE)])


def _sct(name: str) -> dict | None:
    """The SNOMED CT code whose pydicom keyword matches ``name`` (e.g. 'left atrium' -> LeftAtrium)."""
    try:
        from pydicom.sr.codedict import codes
    except ImportError:  # pragma: no cover - pydicom is a service dependency
        return None
    keyword = "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+", name) if w)
    if not keyword:
        return None
    try:
        c = getattr(codes.SCT, keyword)
    except AttributeError:
        return None
    return {"scheme": c.scheme_designator, "code": str(c.value), "meaning": c.meaning}


def guess_terminology(class_name: str, dataset_name: str = "") -> dict:
    """Best-effort terminology: the class itself if SNOMED knows it; a known data-set structure with the
    class as modifier (e.g. Hippocampus + Anterior); else Tissue."""
    own = _sct(class_name)
    if own and class_name.lower() not in MODIFIERS:
        return {"category": dict(ANATOMICAL_STRUCTURE), "type": own}
    structure = _sct(dataset_name) if dataset_name else None
    if structure:
        term = {"category": dict(ANATOMICAL_STRUCTURE), "type": structure}
        if own:
            term["typeModifier"] = own
        return term
    return {"category": dict(TISSUE), "type": dict(TISSUE)}


def to_slicer(term: dict) -> dict:
    """Terminology in slicerio's form (lists ``[scheme, code, meaning]``) for .seg.nrrd files."""
    out = {"contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
           "category": _triple(term["category"]), "type": _triple(term["type"])}
    if term.get("typeModifier"):
        out["typeModifier"] = _triple(term["typeModifier"])
    return out


def _triple(code: dict) -> list[str]:
    return [code["scheme"], str(code["code"]), code["meaning"]]
