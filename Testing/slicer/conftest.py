"""Fixtures for the Slicer module's tests: a real MRML scene from slicer-core, without the application.

slicer-core gives Slicer's MRML and module logic as a Python package, but nothing the application does
at start-up happens by itself: the tests create the scene, set ``slicer.mrmlScene``, register the
segmentation converter rules, give the Segmentations logic the scene, and create the three slice views
(slice node + slice composite node, via vtkMRMLSliceLogic) the way Slicer's layout manager does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODULE_DIR = REPO / "SynergyPL"


def _keep_slicer_namespace_clean() -> None:
    """Stop slicer-core from adopting this folder as part of the ``slicer`` package.

    slicer-core's ``slicer/__init__.py`` extends its ``__path__`` with every ``slicer`` folder found on
    ``sys.path`` and imports every module in them. pytest puts ``Testing/`` on ``sys.path`` (for
    ``Testing/conftest.py``), so ``Testing/slicer`` -- this folder -- would be imported as
    ``slicer.conftest``, ``slicer.test_mrml``... Drop such entries before ``slicer`` is imported.
    """
    def holds_this_folder(entry: str) -> bool:
        try:
            return (Path(entry or ".").resolve() / "slicer") == HERE
        except OSError:
            return False

    sys.path[:] = [entry for entry in sys.path if not holds_this_folder(entry)]
    loaded = sys.modules.get("slicer")
    if loaded is not None and hasattr(loaded, "__path__"):
        loaded.__path__[:] = [p for p in loaded.__path__ if Path(p).resolve() != HERE]


_keep_slicer_namespace_clean()
for path in (str(MODULE_DIR), str(REPO)):
    if path not in sys.path:
        sys.path.insert(0, path)
try:  # import now, while sys.path is clean (test modules import it at collection time)
    import slicer  # noqa: F401
except ImportError:
    pass

SLICE_VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))


@pytest.fixture(scope="session")
def slicer_core():
    """The ``slicer`` package from slicer-core, with the segmentation converter rules registered once."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package is not slicer-core")
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {factory.GetConverterRules().GetItemAsObject(i).GetName()
                  for i in range(factory.GetConverterRules().GetNumberOfItems())} \
        if hasattr(factory.GetConverterRules(), "GetNumberOfItems") else set()
    for rule_class in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                       slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
                       slicer.vtkClosedSurfaceToFractionalLabelmapConversionRule,
                       slicer.vtkFractionalLabelmapToClosedSurfaceConversionRule):
        rule = rule_class()
        if rule.GetName() not in registered:
            factory.RegisterConverterRule(rule)
    return slicer


@pytest.fixture
def mrml_env(slicer_core):
    """A fresh scene set as ``slicer.mrmlScene``, with Segmentations logic and Red/Yellow/Green views."""
    slicer = slicer_core
    scene = slicer.vtkMRMLScene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations_logic.SetMRMLScene(scene)
    # Node classes that Slicer's Colors module registers when it starts (the colour bar).
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    slice_logics = []
    for name, orientation in SLICE_VIEWS:
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        logic.AddSliceNode(name).SetOrientation(orientation)
        slice_logics.append(logic)
    yield SimpleNamespace(slicer=slicer, scene=scene, segmentations_logic=segmentations_logic,
                          slice_logics=slice_logics)
    for logic in slice_logics:
        logic.SetMRMLScene(None)
    segmentations_logic.SetMRMLScene(None)
    scene.Clear(True)
    slicer.mrmlScene = previous


def oblique_direction() -> np.ndarray:
    """A proper rotation (det +1) about a tilted axis: no axis of it is aligned with LPS."""
    axis = np.array([0.3, -0.5, 0.8])
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(27.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


@pytest.fixture
def oblique_geometry():
    """Anisotropic spacing, a non-trivial origin and an oblique direction, in LPS (ITK convention)."""
    return {"spacing": (0.7, 0.9, 1.6), "origin": (-12.5, 30.25, 7.75), "direction": oblique_direction()}
