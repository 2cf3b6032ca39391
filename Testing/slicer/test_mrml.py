"""The panel's MRML code on real MRML (slicer-core): geometry and values must round-trip exactly.

Every test uses an oblique, anisotropic geometry so that an LPS/RAS mix-up, a transposed direction
matrix or an [i, j, k] / [k, j, i] confusion cannot pass unnoticed.
"""

from __future__ import annotations

import numpy as np
import pytest
import scene_checks
import vtk
from SynergyPLModuleLib.scene import (
    attributes,
    files,
    heatmap_layer,
    navigation,
    nodes,
    ownership,
    segment_editor,
    segmentations,
    slice_views,
    terminology,
    transforms,
    volumes,
)

from SynergyPLLib.engine.io import Volume, read_volume, write_volume

CLASSES = terminology.classes_from_dicts([
    {"value": 0, "name": "background"},
    {"value": 1, "name": "Anterior", "color": [216, 101, 79],
     "terminology": {"category": {"scheme": "SCT", "code": "91723000", "meaning": "Anatomical Structure"},
                     "type": {"scheme": "SCT", "code": "5976003", "meaning": "Hippocampus"},
                     "typeModifier": {"scheme": "SCT", "code": "255549009", "meaning": "Anterior"}}},
    {"value": 2, "name": "Posterior", "color": [111, 184, 210],
     "terminology": {"category": ["SCT", "91723000", "Anatomical Structure"],
                     "type": ["SCT", "5976003", "Hippocampus"],
                     "typeModifier": ["SCT", "255551008", "Posterior"]}},
    {"value": 3, "name": "Never present", "color": [0.1, 0.9, 0.2]},
])
SHAPE = (17, 23, 11)


def _image(geometry, seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.normal(100, 30, SHAPE).astype(np.float32), **geometry)


def _label() -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[2:7, 3:12, 1:5] = 1          # asymmetric boxes: any axis swap or flip changes them
    label[9:15, 10:20, 4:10] = 2
    label[3, 15, 8] = 2                # a single voxel far from the rest
    return label


def _volume_node(geometry, scene, name="image"):
    image = _image(geometry)
    return image, volumes.add_volume_from_array(image.array, image.ijk_to_ras, name, scene=scene)


# ------------------------------------------------------------------------------------------------
def test_geometry_helpers_invert_each_other(oblique_geometry):
    image = _image(oblique_geometry)
    matrix = transforms.ijk_to_ras_from_lps(**oblique_geometry)
    assert np.allclose(matrix, image.ijk_to_ras, atol=1e-12)
    back = scene_checks.geometry_lps(matrix)
    assert np.allclose(back["spacing"], oblique_geometry["spacing"], atol=1e-12)
    assert np.allclose(back["origin"], oblique_geometry["origin"], atol=1e-12)
    assert np.allclose(back["direction"], oblique_geometry["direction"], atol=1e-12)


def test_volume_from_array_keeps_values_and_geometry_exactly(mrml_env, oblique_geometry):
    image, node = _volume_node(oblique_geometry, mrml_env.scene)
    assert np.array_equal(mrml_array(node), image.array)
    assert np.allclose(transforms.ijk_to_ras(node), image.ijk_to_ras, atol=1e-12)
    # Slicer's own view of the same node: origin in RAS, spacing, and the [k, j, i] voxel order.
    origin_ras = image.ijk_to_ras[:3, 3]
    assert np.allclose(node.GetOrigin(), origin_ras, atol=1e-12)
    assert np.allclose(node.GetSpacing(), oblique_geometry["spacing"], atol=1e-12)
    assert mrml_env.slicer.util.arrayFromVolume(node).shape == SHAPE[::-1]


def mrml_array(node):
    return volumes.array_ijk(node)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_file_round_trip_through_slicer_reader_and_writer(mrml_env, oblique_geometry, tmp_path, suffix):
    image = _image(oblique_geometry)
    source = write_volume(image, tmp_path / f"image{suffix}")
    node = files.read_volume_file(source, scene=mrml_env.scene)
    assert np.array_equal(volumes.array_ijk(node), image.array)
    # NIfTI stores its matrix in float32: agreement to float32 precision.
    assert np.allclose(transforms.ijk_to_ras(node), image.ijk_to_ras, atol=1e-5)

    written = files.write_volume_file(node, tmp_path / f"again{suffix}", scene=mrml_env.scene)
    again = read_volume(written)
    assert np.array_equal(again.array, image.array)
    assert again.same_geometry(image, tol=1e-5) is None


def test_labelmap_becomes_named_coloured_coded_segments(mrml_env, oblique_geometry):
    _image_volume, volume = _volume_node(oblique_geometry, mrml_env.scene)
    label = _label()
    segmentation = segmentations.labelmap_to_segmentation(label, volume, CLASSES, scene=mrml_env.scene)
    summary = terminology.segment_summary(segmentation)
    assert [s["name"] for s in summary] == ["Anterior", "Posterior", "Never present"]
    assert [s["value"] for s in summary] == [1, 2, 3]
    assert np.allclose(summary[0]["color"], np.array([216, 101, 79]) / 255)
    assert np.allclose(summary[2]["color"], (0.1, 0.9, 0.2))
    assert summary[0]["terminology"] == (
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^91723000^Anatomical Structure"
        "~SCT^5976003^Hippocampus~SCT^255549009^Anterior~Anatomic codes - DICOM master list~^^~^^")
    assert "SCT^255551008^Posterior" in summary[1]["terminology"]
    assert "SCT^85756007^Tissue~SCT^85756007^Tissue" in summary[2]["terminology"]
    segment = segmentation.GetSegmentation().GetSegment(summary[0]["id"])
    assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()
    assert ownership.nodes_made_for(volume, "vtkMRMLSegmentationNode", mrml_env.scene) == [segmentation]

    back, skipped = segmentations.segmentation_to_labelmap(segmentation, volume, CLASSES, scene=mrml_env.scene)
    assert skipped == []
    assert back.dtype == np.uint8
    assert np.array_equal(back, label)
    # The display shows outlines and a light fill in the slice views.
    display = segmentation.GetDisplayNode()
    assert display.GetAllSegmentsVisibility2DOutline() if hasattr(display, "GetAllSegmentsVisibility2DOutline") \
        else display.GetVisibility2DOutline()


def test_import_drops_unknown_values_and_replaces_previous_content(mrml_env, oblique_geometry):
    _image_volume, volume = _volume_node(oblique_geometry, mrml_env.scene)
    label = _label()
    segmentation = segmentations.labelmap_to_segmentation(label, volume, CLASSES, scene=mrml_env.scene)
    noisy = label.copy()
    noisy[0, 0, 0] = 7                       # not a class
    noisy[label == 2] = 0                    # posterior gone in the new prediction
    segmentations.labelmap_to_segmentation(noisy, volume, CLASSES, segmentation_node=segmentation, scene=mrml_env.scene)
    assert [s["name"] for s in terminology.segment_summary(segmentation)] == ["Anterior", "Posterior", "Never present"]
    back, _ = segmentations.segmentation_to_labelmap(segmentation, volume, CLASSES, scene=mrml_env.scene)
    expected = np.where(label == 1, 1, 0)
    assert np.array_equal(back, expected)


def test_edits_renames_and_foreign_segments_map_back_to_label_values(mrml_env, oblique_geometry):
    _image_volume, volume = _volume_node(oblique_geometry, mrml_env.scene)
    label = _label()
    segmentation = segmentations.labelmap_to_segmentation(label, volume, CLASSES, scene=mrml_env.scene)
    ids = terminology.segment_ids_by_value(segmentation, CLASSES)
    # The radiologist paints some anterior voxels over posterior ones, renames and reorders segments,
    # and adds a segment of their own.
    edit = np.zeros(SHAPE, bool)
    edit[9:12, 10:14, 4:7] = True
    scene_checks.set_segment_mask(segmentation, ids[1], (label == 1) | edit, volume, scene=mrml_env.scene)
    seg = segmentation.GetSegmentation()
    seg.GetSegment(ids[1]).SetName("anterior (checked)")
    seg.SetSegmentIndex(ids[2], 0)
    seg.AddEmptySegment("mine", "Note to self")

    back, skipped = segmentations.segmentation_to_labelmap(segmentation, volume, CLASSES, scene=mrml_env.scene)
    expected = label.copy()
    expected[edit] = 1
    assert np.array_equal(back, expected)
    assert skipped == ["Note to self"]
    assert np.array_equal(segmentations.segment_mask(segmentation, ids[2], volume, scene=mrml_env.scene), expected == 2)


def test_heatmap_volume_colour_table_and_slice_layers(mrml_env, oblique_geometry):
    image, volume = _volume_node(oblique_geometry, mrml_env.scene)
    heatmap = np.linspace(0, 1, int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE)
    node = heatmap_layer.show_heatmap(heatmap, volume, threshold=0.4, opacity=0.6, scene=mrml_env.scene)

    assert np.array_equal(volumes.array_ijk(node), heatmap)
    assert np.allclose(transforms.ijk_to_ras(node), image.ijk_to_ras, atol=1e-12)
    assert ownership.nodes_made_for(volume, "vtkMRMLScalarVolumeNode", mrml_env.scene) == [node]
    display = node.GetDisplayNode()
    table = mrml_env.scene.GetNodeByID(display.GetColorNodeID())
    assert table.GetName() == heatmap_layer.CONFIDENCE_COLORS_NAME and table.GetNumberOfColors() == 256
    rgba_uncertain, rgba_certain = [0.0] * 4, [0.0] * 4
    table.GetColor(0, rgba_uncertain)
    table.GetColor(255, rgba_certain)
    assert rgba_uncertain[0] > 0.8 and rgba_uncertain[2] < 0.1      # red where the model is unsure
    assert rgba_certain[2] > rgba_certain[0]                          # blue where it is sure
    assert not display.GetAutoWindowLevel()
    assert display.GetWindowLevelMin() == pytest.approx(0.0) and display.GetWindowLevelMax() == pytest.approx(1.0)
    assert display.GetApplyThreshold() and display.GetUpperThreshold() == pytest.approx(0.4)
    composites = slice_views.slice_composite_nodes(mrml_env.scene)
    assert len(composites) == 3
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundVolumeID() == node.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.6)
    legend = mrml_env.slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(node)
    assert legend is not None and legend.GetTitleText() == "Confidence"

    heatmap_layer.set_heatmap_threshold(node, 0.75)
    scene_checks.set_heatmap_opacity(0.2, scene=mrml_env.scene)
    assert display.GetUpperThreshold() == pytest.approx(0.75)
    assert all(c.GetForegroundOpacity() == pytest.approx(0.2) for c in composites)
    heatmap_layer.set_heatmap_visible(node, False, 0.2, scene=mrml_env.scene)
    assert all(not c.GetForegroundVolumeID() for c in composites)
    # Showing a new prediction reuses the node and the colour table.
    again = heatmap_layer.show_heatmap(1 - heatmap, volume, heatmap_node=node, scene=mrml_env.scene)
    assert again is node and np.array_equal(volumes.array_ijk(node), 1 - heatmap)
    assert mrml_env.scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == 1


def test_centring_on_a_region_in_patient_coordinates(mrml_env, oblique_geometry):
    image, volume = _volume_node(oblique_geometry, mrml_env.scene)
    centroid_ijk = np.array([4.5, 7.25, 3.0])
    centroid_lps = (image.ijk_to_lps @ np.append(centroid_ijk, 1))[:3]
    centroid_ras = (image.ijk_to_ras @ np.append(centroid_ijk, 1))[:3]
    assert np.allclose(centroid_ras, [-centroid_lps[0], -centroid_lps[1], centroid_lps[2]])
    region = {"centroid_ijk": centroid_ijk.tolist(), "centroid_lps": centroid_lps.tolist(),
              "centroid_ras": centroid_ras.tolist()}
    for given in (region, {"centroid_ras": region["centroid_ras"]}, {"centroid_lps": region["centroid_lps"]}):
        assert np.allclose(navigation.region_center_ras(given, volume), centroid_ras, atol=1e-9)

    navigation.center_slice_views_on(navigation.region_center_ras(region, volume), scene=mrml_env.scene)
    for slice_node in scene_checks.slice_nodes(mrml_env.scene):
        assert np.allclose(navigation.slice_view_center_ras(slice_node), centroid_ras, atol=1e-6), slice_node.GetName()

    # A volume moved by a transform in Slicer: the region moves with it.
    transform = mrml_env.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = [5.0, -3.0, 2.0]
    transform.SetMatrixTransformToParent(transforms.array_to_matrix(shift))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    assert np.allclose(navigation.region_center_ras(region, volume), centroid_ras + [5.0, -3.0, 2.0], atol=1e-9)


def test_export_seg_nrrd_then_reload_with_slicer_reader(mrml_env, oblique_geometry, tmp_path):
    nrrd = pytest.importorskip("nrrd")
    image, volume = _volume_node(oblique_geometry, mrml_env.scene)
    label = _label()
    segmentation = segmentations.labelmap_to_segmentation(label, volume, CLASSES, scene=mrml_env.scene)
    path = files.export_segmentation(segmentation, tmp_path / "case.seg.nrrd", volume, scene=mrml_env.scene)

    # The file itself: LPS geometry of the image, full extent, our names and terminology.
    data, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    assert data.shape == SHAPE
    assert np.allclose(header["space origin"], oblique_geometry["origin"], atol=1e-9)
    assert np.allclose(np.asarray(header["space directions"]).T, image.ijk_to_lps[:3, :3], atol=1e-9)
    names = {header[f"Segment{i}_Name"] for i in range(3)}
    assert names == {"Anterior", "Posterior", "Never present"}
    values = {header[f"Segment{i}_Name"]: int(header[f"Segment{i}_LabelValue"]) for i in range(3)}
    assert np.array_equal(data == values["Anterior"], label == 1)
    assert np.array_equal(data == values["Posterior"], label == 2)
    assert "SynergyPL.LabelValue:1" in "".join(header[f"Segment{i}_Tags"] for i in range(3))

    # Slicer's reader gives back the same segments and voxels.
    reloaded = scene_checks.load_segmentation_file(path, scene=mrml_env.scene)
    before, after = terminology.segment_summary(segmentation), terminology.segment_summary(reloaded)
    for a, b in zip(before, after, strict=True):
        assert (a["name"], a["value"], a["terminology"]) == (b["name"], b["value"], b["terminology"])
        assert np.allclose(a["color"], b["color"], atol=1e-6)
    back, _ = segmentations.segmentation_to_labelmap(reloaded, volume, CLASSES, scene=mrml_env.scene)
    assert np.array_equal(back, label)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_export_label_map_file(mrml_env, oblique_geometry, tmp_path, suffix):
    image, volume = _volume_node(oblique_geometry, mrml_env.scene)
    label = _label()
    segmentation = segmentations.labelmap_to_segmentation(label, volume, CLASSES, scene=mrml_env.scene)
    path = files.export_segmentation(segmentation, tmp_path / f"label{suffix}", volume, CLASSES, scene=mrml_env.scene)
    written = read_volume(path, allow_constant=True)
    assert np.array_equal(written.array, label)
    assert written.same_geometry(image, tol=1e-5) is None
    with pytest.raises(nodes.SceneError):
        files.export_segmentation(segmentation, tmp_path / "x.nii.gz", scene=mrml_env.scene)


def test_case_id_attribute_is_remembered_in_the_saved_scene(mrml_env, oblique_geometry, tmp_path):
    _image_volume, volume = _volume_node(oblique_geometry, mrml_env.scene)
    assert ownership.case_id(volume) is None
    ownership.set_case_id(volume, "case-0007", "http://127.0.0.1:8765|demo")
    assert ownership.case_id(volume, "http://127.0.0.1:8765|demo") == "case-0007"
    assert ownership.case_id(volume, "http://elsewhere:8765|demo") is None
    assert ownership.find_volume_for_case("case-0007", "http://127.0.0.1:8765|demo", mrml_env.scene) is volume

    scene_file = tmp_path / "scene.mrml"
    mrml_env.scene.SetURL(str(scene_file))
    assert mrml_env.scene.Commit()
    restored = mrml_env.slicer.vtkMRMLScene()
    restored.SetURL(str(scene_file))
    restored.Import()
    node = restored.GetFirstNodeByName("image")
    assert ownership.case_id(node, "http://127.0.0.1:8765|demo") == "case-0007"


def test_segment_editor_is_pointed_at_segmentation_and_source_volume(mrml_env, oblique_geometry):
    _image_volume, volume = _volume_node(oblique_geometry, mrml_env.scene)
    segmentation = segmentations.labelmap_to_segmentation(_label(), volume, CLASSES, scene=mrml_env.scene)
    editor = segment_editor.configure_segment_editor(segmentation, volume, scene=mrml_env.scene)
    assert editor.GetSingletonTag() == "SegmentEditor"
    assert editor.GetSegmentationNode() is segmentation
    assert editor.GetSourceVolumeNode() is volume
    assert editor.GetSelectedSegmentID() == segmentation.GetSegmentation().GetNthSegmentID(0)
    assert segment_editor.configure_segment_editor(segmentation, volume, scene=mrml_env.scene) is editor


def test_classes_from_service_mapping():
    classes = terminology.classes_from_dicts({"0": "background", "1": "Anterior", "2": {"name": "Posterior"}})
    assert [(c.value, c.name) for c in classes] == [(1, "Anterior"), (2, "Posterior")]
    assert classes[0].category == terminology.TISSUE_CODE


# ------------------------------------------------------------------------------------------------
# Slicer 5.8: segment terminology is the TerminologyEntry tag
# ------------------------------------------------------------------------------------------------
def test_segment_terminology_is_the_tag_that_slicer_5_8_and_5_10_read(mrml_env, oblique_geometry):
    """vtkSegment.Set/GetTerminology exist only from Slicer 5.10; both read and write the tag named by
    vtkSegment.GetTerminologyEntryTagName(), which 5.8 has too. The panel writes and reads the tag."""
    slicer = mrml_env.slicer
    _image_volume, volume = _volume_node(oblique_geometry, mrml_env.scene)
    segmentation = segmentations.labelmap_to_segmentation(_label(), volume, CLASSES, scene=mrml_env.scene)
    tag = slicer.vtkSegment.GetTerminologyEntryTagName()
    assert tag == "TerminologyEntry"
    for cls, entry in zip(CLASSES, terminology.segment_summary(segmentation), strict=True):
        segment = segmentation.GetSegmentation().GetSegment(entry["id"])
        stored = vtk.reference("")
        assert segment.GetTag(tag, stored)
        assert str(stored) == cls.terminology_string() == entry["terminology"]
        if hasattr(segment, "GetTerminology"):  # Slicer 5.10+: the convenience API reads the same tag
            assert segment.GetTerminology() == cls.terminology_string()
    # A segment without the tag reads as "" (no exception), e.g. one the radiologist added by hand.
    bare = slicer.vtkSegment()
    bare.RemoveTag(tag)
    assert terminology.segment_terminology(bare) == ""


def test_class_colour_table_without_terminology_api(mrml_env):
    """Colour-table terminology is 5.10+ only: the table is made either way, with names and colours."""
    table = scene_checks.class_color_table(CLASSES, scene=mrml_env.scene)
    assert table.GetNumberOfColors() == 4
    assert [table.GetColorName(i) for i in range(1, 4)] == ["Anterior", "Posterior", "Never present"]
    if hasattr(table, "GetTerminologyAsString"):
        assert "SCT^5976003^Hippocampus" in table.GetTerminologyAsString(1)


# ------------------------------------------------------------------------------------------------
# Volumes under a parent transform (after registration)
# ------------------------------------------------------------------------------------------------
def _translated_volume(scene, shift=(5.0, 0.0, 0.0)):
    """A 12^3 volume, 1 mm voxels at the origin, under a linear transform moving it by ``shift`` mm."""
    volume = volumes.add_volume_from_array(np.zeros((12, 12, 12), np.int16), np.eye(4), "moved", scene=scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    matrix = np.eye(4)
    matrix[:3, 3] = shift
    transform.SetMatrixTransformToParent(transforms.array_to_matrix(matrix))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    return volume, transform


def _world_bounds(node) -> np.ndarray:
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    return np.array(bounds)


def test_segmentation_of_a_transformed_volume_lies_on_it_in_world_space(mrml_env):
    scene = mrml_env.scene
    volume, transform = _translated_volume(scene)
    label = np.zeros((12, 12, 12), np.uint8)
    label[2:6, 2:6, 2:6] = 1                      # voxels 2..5: edges 1.5..5.5 mm, +5 mm in R
    classes = CLASSES[:1]
    segmentation = segmentations.labelmap_to_segmentation(label, volume, classes, scene=scene)

    assert segmentation.GetParentTransformNode() is transform
    assert np.allclose(_world_bounds(segmentation), [6.5, 10.5, 1.5, 5.5, 1.5, 5.5])  # not 1.5..5.5
    # The heatmap is on the same voxels in world space: segment and heatmap coincide.
    heatmap = heatmap_layer.show_heatmap(np.ones((12, 12, 12), np.float32), volume, scene=scene)
    assert heatmap.GetParentTransformNode() is transform
    assert np.allclose(transforms.ijk_to_world_ras(heatmap), transforms.ijk_to_world_ras(volume), atol=1e-12)
    corners = transforms.ijk_to_world_ras(heatmap) @ np.array([[1.5, 1.5, 1.5, 1.0], [5.5, 5.5, 5.5, 1.0]]).T
    assert np.allclose(corners[:3].T.ravel(), _world_bounds(segmentation)[[0, 2, 4, 1, 3, 5]])
    # What would be submitted: the prediction, voxel for voxel.
    back, _ = segmentations.segmentation_to_labelmap(segmentation, volume, classes, scene=scene)
    assert np.array_equal(back, label)


def test_transformed_volume_oblique_rotation_and_reused_segmentation(mrml_env, oblique_geometry):
    """A rotation+translation on an oblique volume, a segmentation first made without a transform and
    then reused, and an edit in segmentation coordinates: everything stays voxel-exact."""
    scene = mrml_env.scene
    image, volume = _volume_node(oblique_geometry, scene)
    label = _label()
    segmentation = segmentations.labelmap_to_segmentation(label, volume, CLASSES, scene=scene)   # no transform yet
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    moved = np.eye(4)
    moved[:3, :3] = oblique_direction_about_z(12.0)
    moved[:3, 3] = [4.0, -7.5, 2.25]
    transform.SetMatrixTransformToParent(transforms.array_to_matrix(moved))
    volume.SetAndObserveTransformNodeID(transform.GetID())

    segmentations.labelmap_to_segmentation(label, volume, CLASSES, segmentation_node=segmentation, scene=scene)
    assert segmentation.GetParentTransformNode() is transform
    back, _ = segmentations.segmentation_to_labelmap(segmentation, volume, CLASSES, scene=scene)
    assert np.array_equal(back, label)
    ids = terminology.segment_ids_by_value(segmentation, CLASSES)
    edit = np.zeros(SHAPE, bool)
    edit[9:12, 10:14, 4:7] = True
    scene_checks.set_segment_mask(segmentation, ids[1], (label == 1) | edit, volume, scene=scene)
    expected = label.copy()
    expected[edit] = 1
    back, _ = segmentations.segmentation_to_labelmap(segmentation, volume, CLASSES, scene=scene)
    assert np.array_equal(back, expected)
    # The volume moves out from under the transform again: segmentation and heatmap follow it.
    volume.SetAndObserveTransformNodeID(None)
    segmentations.labelmap_to_segmentation(label, volume, CLASSES, segmentation_node=segmentation, scene=scene)
    heatmap = heatmap_layer.show_heatmap(np.ones(SHAPE, np.float32), volume, scene=scene)
    assert segmentation.GetParentTransformNode() is None and heatmap.GetParentTransformNode() is None
    back, _ = segmentations.segmentation_to_labelmap(segmentation, volume, CLASSES, scene=scene)
    assert np.array_equal(back, label)


def oblique_direction_about_z(degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    return np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------------------------------------
# Case volumes, slice views
# ------------------------------------------------------------------------------------------------
def test_heatmaps_region_maps_and_label_maps_are_not_cases(mrml_env, oblique_geometry):
    scene = mrml_env.scene
    _image_volume, volume = _volume_node(oblique_geometry, scene)
    added = []
    observer = scene.AddObserver(scene.NodeAddedEvent, lambda caller, event: added.append(ownership.non_case_volume_ids(scene)))
    heatmap = heatmap_layer.show_heatmap(np.ones(SHAPE, np.float32), volume, scene=scene)
    scene.RemoveObserver(observer)
    # When the heatmap entered the scene it was already marked: a selector refreshed on NodeAddedEvent
    # never offers it, not even for a moment.
    assert any(heatmap.GetID() in ids for ids in added)
    region_map = volumes.add_volume_from_array(np.zeros(SHAPE, np.uint8), transforms.ijk_to_ras(volume), "regions", scene=scene)
    region_map.SetAttribute(attributes.ROLE_ATTRIBUTE, "regionmap")
    label_map = volumes.add_volume_from_array(np.zeros(SHAPE, np.uint8), transforms.ijk_to_ras(volume), "label",
                                           "vtkMRMLLabelMapVolumeNode", scene=scene)
    other = volumes.add_volume_from_array(np.zeros(SHAPE, np.int16), transforms.ijk_to_ras(volume), "second", scene=scene)
    assert ownership.case_volumes(scene) == [volume, other]
    assert set(ownership.non_case_volume_ids(scene)) == {heatmap.GetID(), region_map.GetID()}
    assert not ownership.is_case_volume(label_map) and not ownership.is_case_volume(heatmap)
    ownership.set_case_id(heatmap, "case-1", "server")
    assert ownership.find_volume_for_case("case-1", "server", scene) is None


def test_show_volume_sets_layers_and_fits_the_views(mrml_env, oblique_geometry):
    scene = mrml_env.scene
    _image_volume, volume = _volume_node(oblique_geometry, scene)
    heatmap = heatmap_layer.show_heatmap(np.ones(SHAPE, np.float32), volume, scene=scene)
    for slice_node in scene_checks.slice_nodes(scene):                 # views somewhere else, zoomed in
        slice_node.SetFieldOfView(3.0, 3.0, 1.0)
    navigation.center_slice_views_on((200.0, -300.0, 90.0), scene)
    slice_views.show_volume(volume, mrml_env.slice_logics, scene)

    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    centre = np.array(bounds).reshape(3, 2).mean(axis=1)
    extent = np.diff(np.array(bounds).reshape(3, 2), axis=1).ravel()
    for composite in slice_views.slice_composite_nodes(scene):
        assert composite.GetBackgroundVolumeID() == volume.GetID() and not composite.GetForegroundVolumeID()
    assert heatmap.GetID() not in {c.GetForegroundVolumeID() for c in slice_views.slice_composite_nodes(scene)}
    for slice_node in scene_checks.slice_nodes(scene):
        in_plane = np.array(slice_node.GetFieldOfView()[:2])
        assert in_plane.max() >= 0.9 * extent.min(), slice_node.GetName()   # zoomed out to the volume
        offset = np.asarray(navigation.slice_view_center_ras(slice_node)) - centre
        normal = transforms.matrix_to_array(slice_node.GetSliceToRAS())[:3, 2]
        in_plane_offset = offset - normal * (offset @ normal)
        assert np.allclose(in_plane_offset, 0.0, atol=1e-6), slice_node.GetName()        # centred on it


def test_nodes_for_volume_picks_the_nodes_made_for_it(mrml_env, oblique_geometry):
    scene = mrml_env.scene
    _image, first = _volume_node(oblique_geometry, scene, name="first")
    _image, second = _volume_node(oblique_geometry, scene, name="second")
    label = np.zeros(SHAPE, np.uint8)
    label[1:3, 1:3, 1:3] = 1
    heat = np.ones(SHAPE, np.float32)
    seg_first = segmentations.labelmap_to_segmentation(label, first, CLASSES, scene=scene)
    heat_first = heatmap_layer.show_heatmap(heat, first, scene=scene)
    seg_second = segmentations.labelmap_to_segmentation(label, second, CLASSES, scene=scene)
    assert ownership.nodes_for_volume(first, seg_second, None, scene) == (seg_first, heat_first)
    assert ownership.nodes_for_volume(second, seg_first, heat_first, scene) == (seg_second, None)
    assert ownership.nodes_for_volume(first, seg_first, heat_first, scene) == (seg_first, heat_first)
    chosen = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "the user's own")  # not made by the panel: kept
    assert ownership.nodes_for_volume(second, chosen, None, scene) == (chosen, None)
    assert ownership.nodes_for_volume(None, seg_first, None, scene) == (seg_first, None)
