"""Exports: .seg.nrrd loaded by Slicer's own reader (slicer-core) with the right geometry, names,
colours and terminology; NIfTI; DICOM SEG referencing the original series."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from svc_support import Server, case_image, import_slicer, label_file, read_bytes_volume, zip_folder

from SynergyPLLib.client import ConflictError
from SynergyPLLib.engine.io import read_volume


@pytest.fixture(scope="module")
def srv(tmp_path_factory, hippocampus_dir):
    from svc_support import make_project

    project = make_project(tmp_path_factory.mktemp("export") / "project", hippocampus_dir, cases=2, labeled=2)
    with Server(project) as s:
        yield s


def _slicer_load(path):
    slicer = import_slicer()

    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1, "Slicer could not read the file"
    return node.GetSegmentation()


def test_seg_nrrd_loads_in_slicer_with_geometry_names_colours_terminology(srv, tmp_path):
    import vtk
    from vtk.util import numpy_support

    c = srv.client()
    cid = "hippocampus_001"
    path = c.export(cid, "seg.nrrd", path=tmp_path / "x.seg.nrrd")
    label = read_bytes_volume(c.download_label(cid, 1), tmp_path)
    image = case_image(srv.project, cid)
    info = c.info()
    seg = _slicer_load(path)
    assert seg.GetNumberOfSegments() == 2
    for n, cls in enumerate(info["classes"]):
        s = seg.GetNthSegment(n)
        assert s.GetName() == cls["name"]
        assert np.allclose(s.GetColor(), np.array(cls["color"]) / 255.0, atol=1e-4)
        term = vtk.reference("")
        assert s.GetTag("TerminologyEntry", term)
        t = cls["terminology"]
        assert f"SCT^{t['category']['code']}^{t['category']['meaning']}" in str(term)
        assert f"SCT^{t['type']['code']}^{t['type']['meaning']}" in str(term)
        assert f"^{t['typeModifier']['code']}^" in str(term)

        rep = s.GetRepresentation("Binary labelmap")
        m = vtk.vtkMatrix4x4()
        rep.GetImageToWorldMatrix(m)
        to_ras = np.array([[m.GetElement(r, q) for q in range(4)] for r in range(4)])
        i0, i1, j0, j1, k0, k1 = rep.GetExtent()
        scal = numpy_support.vtk_to_numpy(rep.GetPointData().GetScalars())
        block = scal.reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1).transpose(2, 1, 0)
        mask = block == s.GetLabelValue()
        # map Slicer's voxels (RAS) back onto the case image's grid
        ii, jj, kk = np.nonzero(mask)
        ras = to_ras @ np.stack([ii + i0, jj + j0, kk + k0, np.ones_like(ii)])
        ijk = np.linalg.inv(image.ijk_to_ras) @ ras
        assert np.allclose(ijk, np.round(ijk), atol=1e-4)
        idx = np.round(ijk[:3]).astype(int)
        assert (label.array[idx[0], idx[1], idx[2]] == cls["value"]).all()
        assert mask.sum() == (label.array == cls["value"]).sum() > 0


def test_nifti_export_keeps_geometry_and_values(srv, tmp_path):
    c = srv.client()
    p = c.export("hippocampus_003", "nifti", path=tmp_path / "x.nii.gz")
    vol = read_volume(p, allow_constant=True)
    ref = read_bytes_volume(c.download_label("hippocampus_003", 1), tmp_path)
    assert ref.same_geometry(vol) is None
    np.testing.assert_array_equal(vol.array, ref.array)
    with pytest.raises(ConflictError, match="was not uploaded as DICOM"):
        c.export("hippocampus_003", "dicom-seg")


def test_dicom_seg_export_references_the_series(srv, dicom_dir, tmp_path):
    import highdicom as hd

    c = srv.client()
    series = dicom_dir / "Study3" / "11_HCropVolume"
    c.upload_case(zip_folder(series), case_id="dcm-case", filename="s.zip")
    image = case_image(srv.project, "dcm-case")
    arr = np.zeros(image.shape, np.uint8)
    ci = np.array(image.shape) // 2
    arr[ci[0] - 5:ci[0], ci[1] - 4:ci[1] + 4, ci[2] - 3:ci[2] + 3] = 1
    arr[ci[0]:ci[0] + 6, ci[1] - 4:ci[1] + 4, ci[2] - 2:ci[2] + 5] = 2
    with pytest.raises(Exception, match="no label versions"):
        c.export("dcm-case", "dicom-seg")
    c.submit_label("dcm-case", label_file(tmp_path, image, arr), author="Reader^Rita", parent_version=0)
    data = c.export("dcm-case", "dicom-seg")
    ds = pydicom.dcmread(io.BytesIO(data))
    seg = hd.seg.Segmentation.from_dataset(ds)
    assert [d.SegmentLabel for d in ds.SegmentSequence] == ["Anterior", "Posterior"]
    assert [d.SegmentDescription for d in ds.SegmentSequence] == ["Hippocampus, Anterior", "Hippocampus, Posterior"]
    assert [d.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning
            for d in ds.SegmentSequence] == ["Anterior", "Posterior"]
    assert str(ds.ContentCreatorName) == "Reader^Rita" and ds.SeriesDescription.startswith("SynergyPL segmentation")
    assert str(ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue) == "5366008"
    sources = [pydicom.dcmread(f) for f in sorted((srv.project / "cases" / "dcm-case" / "dicom").glob("*.dcm"))]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert ds.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    uids = [s.SOPInstanceUID for s in sources]
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2],
                                            combine_segments=True)
    # frames (slice, row, column) of the source series == our label [i, j, k] -> [k, j, i]
    np.testing.assert_array_equal(np.asarray(got), arr.transpose(2, 1, 0))
    # the slices we stored are the series' slices in ITK's order: positions increase along the normal
    ref = read_volume(series)
    assert ref.same_geometry(image) is None
