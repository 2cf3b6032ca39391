"""The labeling loop as one checked scenario, shared by the module's in-Slicer self-test
(``SynergyPLTest``) and the end-to-end test on slicer-core (``Testing/slicer/test_e2e.py``).

Upload -> pseudo-label -> edit -> submit -> read back -> conflict -> retrain -> pseudo-label with the
new model -> export .seg.nrrd and reload it with Slicer's reader. Each step raises AssertionError with
a sentence saying what went wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import scene_checks
from SynergyPLModuleLib.scene import attributes, ownership, segmentations, terminology, volumes


class Recorder:
    """Collects what the logic's signals report, for checks."""

    def __init__(self, logic) -> None:
        self.errors: list[tuple[str, str]] = []
        self.submitted: list[dict] = []
        self.conflicts: list[dict] = []
        self.progress: list = []
        self.model_versions: list = []
        self.busy: list[tuple[str, bool]] = []
        self.statuses: list[str] = []
        logic.error.connect(lambda action, message: self.errors.append((action, message)))
        logic.submitted.connect(self.submitted.append)
        logic.conflict.connect(self.conflicts.append)
        logic.training_progress.connect(self.progress.append)
        logic.model_version_changed.connect(self.model_versions.append)
        logic.busy_changed.connect(lambda action, busy: self.busy.append((action, busy)))
        logic.status.connect(self.statuses.append)

    def check_no_errors(self, step: str) -> None:
        if self.errors:
            raise AssertionError(f"{step}: {self.errors[-1][0]} failed: {self.errors[-1][1]}")


def run_labeling_loop(logic, volume_node, export_folder: str | Path, wait: Callable[[float], bool],
                      retrain_iterations: int = 2, author: str = "SynergyPL self-test",
                      log: Callable[[str], None] = print) -> dict:
    """Run the loop against the server ``logic`` is configured for; returns what each step produced."""
    scene = logic.scene
    record = Recorder(logic)
    out: dict = {"recorder": record}

    def step(name: str, timeout: float) -> None:
        if not wait(timeout):
            logic.cancel()
            wait(30.0)
            raise AssertionError(f"{name}: no answer within {timeout:.0f} s")
        record.check_no_errors(name)
        if logic.is_busy():
            raise AssertionError(f"{name}: the logic is still busy after finishing")

    log("connect and upload")
    logic.upload(volume_node)
    step("upload", 120)
    case_id = ownership.case_id(volume_node, logic.server.key)
    if not case_id:
        raise AssertionError("upload: the volume has no case id attribute")
    out["case_id"] = case_id
    logic.upload(volume_node)  # remembered: no second upload
    step("upload again", 60)
    if ownership.case_id(volume_node, logic.server.key) != case_id:
        raise AssertionError("upload: a second upload changed the case id")

    log("pseudo-label")
    produced: dict = {}
    logic.prediction_ready.connect(lambda seg, heat: produced.update(segmentation=seg, heatmap=heat))
    logic.pseudo_label(volume_node)
    step("pseudo-label", 600)
    segmentation, heatmap = produced.get("segmentation"), produced.get("heatmap")
    if segmentation is None or heatmap is None:
        raise AssertionError("pseudo-label: no segmentation or heatmap arrived")
    names = [s["name"] for s in terminology.segment_summary(segmentation)]
    expected_names = [c.name for c in logic.server.classes]
    if names != expected_names:
        raise AssertionError(f"pseudo-label: segments {names}, project classes {expected_names}")
    heat = volumes.array_ijk(heatmap)
    if heat.shape != volumes.array_ijk(volume_node).shape or not (0 <= heat.min() and heat.max() <= 1):
        raise AssertionError("pseudo-label: the heatmap does not cover the volume with values in [0, 1]")
    out.update(segmentation=segmentation, heatmap=heatmap, model_before=logic.model_version,
               regions=list(logic.regions))
    if logic.regions:
        logic.go_to_region(0, volume_node)

    log("edit and submit")
    first = logic.server.classes[0]
    ids = terminology.segment_ids_by_value(segmentation, logic.server.classes)
    shape = heat.shape
    cube = np.zeros(shape, bool)
    centre = [s // 2 for s in shape]
    cube[tuple(slice(c - 2, c + 3) for c in centre)] = True
    current = segmentations.segment_mask(segmentation, ids[first.value], volume_node, scene)
    scene_checks.set_segment_mask(segmentation, ids[first.value], current | cube, volume_node, scene=scene)
    expected, _ = segmentations.segmentation_to_labelmap(segmentation, volume_node, logic.server.classes, scene)
    if not (expected[cube] == first.value).all():
        raise AssertionError("edit: the painted cube is not in the label map")
    logic.submit(volume_node, segmentation, author=author)
    step("submit", 120)
    if not record.submitted:
        raise AssertionError("submit: no label version was reported")
    version = record.submitted[-1]
    if version.get("author") != author:
        raise AssertionError(f"submit: the server recorded author {version.get('author')!r}")
    out["label_version"] = version

    log("read the submitted label back")
    loaded: dict = {}
    logic.label_loaded.connect(lambda seg: loaded.update(seg=seg))
    logic.load_label_version(volume_node, case_id, version["version"])
    step("load label", 60)
    back, _ = segmentations.segmentation_to_labelmap(loaded["seg"], volume_node, logic.server.classes, scene)
    if not np.array_equal(back, expected):
        raise AssertionError("submit: the server's label version differs from the submitted segmentation")
    scene.RemoveNode(loaded["seg"])

    log("conflict")
    before, _ = segmentations.segmentation_to_labelmap(segmentation, volume_node, logic.server.classes, scene)
    logic.submit(volume_node, segmentation, author="someone else", parent_version=max(0, version["version"] - 1))
    step("conflicting submit", 60)
    if not record.conflicts:
        raise AssertionError("conflict: a stale parent version was not reported as a conflict")
    after, _ = segmentations.segmentation_to_labelmap(segmentation, volume_node, logic.server.classes, scene)
    if not np.array_equal(before, after):
        raise AssertionError("conflict: the local segmentation changed")
    out["conflict"] = record.conflicts[-1]

    log(f"retrain ({retrain_iterations} iterations)")
    logic.retrain(retrain_iterations)
    step("retrain", 1800)
    if not record.progress:
        raise AssertionError("retrain: no progress was reported")
    if logic.model_version is None or logic.model_version == out["model_before"]:
        raise AssertionError(f"retrain: the model version did not change ({logic.model_version})")
    out["model_after"] = logic.model_version

    log("pseudo-label with the new model")
    fresh: dict = {}
    logic.prediction_ready.connect(lambda seg, heat: fresh.update(segmentation=seg))
    logic.pseudo_label(volume_node, heatmap_node=heatmap)
    step("pseudo-label after retraining", 600)
    if fresh["segmentation"].GetAttribute(attributes.MODEL_VERSION_ATTRIBUTE) != str(logic.model_version):
        raise AssertionError("pseudo-label after retraining did not use the new model")
    out["segmentation_after"] = fresh["segmentation"]

    log("export .seg.nrrd and reload it")
    # Export what was submitted (the earlier, edited labels) from a segmentation holding them.
    reference = segmentations.labelmap_to_segmentation(expected, volume_node, logic.server.classes,
                                              name="submitted", scene=scene)
    path = logic.export(volume_node, reference, "seg.nrrd", export_folder)
    record.check_no_errors("export")
    reloaded = scene_checks.load_segmentation_file(path, scene=scene)
    again, _ = segmentations.segmentation_to_labelmap(reloaded, volume_node, logic.server.classes, scene)
    if not np.array_equal(again, expected):
        raise AssertionError("export: the reloaded .seg.nrrd differs from the segmentation")
    if [s["name"] for s in terminology.segment_summary(reloaded)] != expected_names:
        raise AssertionError("export: segment names were not kept")
    out.update(export_path=Path(path), reloaded=reloaded, expected=expected)
    log("loop done")
    return out
