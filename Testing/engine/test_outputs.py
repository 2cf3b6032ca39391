"""What ``synergypl infer`` writes: volumes that keep the input's geometry exactly (NRRD for a DICOM
series, the input's own format otherwise), so ITK combines label and image; names that stay unique
when several inputs share a stem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from SynergyPLLib.cli import main as cli_main
from SynergyPLLib.engine.config import EngineConfig
from SynergyPLLib.engine.data import LoadedCase
from SynergyPLLib.engine.inference import Prediction, flag_regions
from SynergyPLLib.engine.io import Volume, read_volume, write_volume
from SynergyPLLib.engine.outputs import output_stems, write_prediction
from SynergyPLLib.engine.trainer import Trainer

CLASSES = ["background", "blob"]
# all four Study3 brain series are tilted ~10.8 degrees about the R-L axis; the HippoCrop crops are not
OBLIQUE_SERIES = ["11-T1post-18670", "26401-T1prereg-52906", "36468-FLAIRreg-58706", "37830-T2reg-78532"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A two-class checkpoint trained for 4 iterations on 16^3 blobs: enough to run ``infer``."""
    rng = np.random.default_rng(0)

    def cases(n, labeled):
        out = []
        for i in range(n):
            lab = np.zeros((16, 16, 16), np.uint8)
            lab[5:11, 5:11, 5:11] = 1
            img = (lab + rng.normal(0, 0.3, lab.shape)).astype(np.float32)[None]
            out.append(LoadedCase(f"c{i}", img, lab if labeled else None, Volume(np.zeros(lab.shape, np.uint8))))
        return out

    cfg = EngineConfig(classes=CLASSES)
    cfg.model.channels = (4, 8)
    cfg.model.strides = (2,)
    cfg.train.patch_size = (16, 16, 16)
    cfg.train.iterations = 4
    cfg.train.val_every = 4
    cfg.train.checkpoint_every = 4
    res = Trainer(cfg, cases(2, True), cases(2, False), cases(1, True), tmp_path_factory.mktemp("tiny")).run()
    return res.checkpoint


def _series_image(path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
    return reader.Execute()


def _threshold_prediction(image: Volume) -> Prediction:
    label = image.with_array((image.array > np.percentile(image.array, 70)).astype(np.uint8))
    heat = image.with_array(np.where(label.array > 0, 0.3, 1.0).astype(np.float32))
    pred = Prediction(label=label, probabilities=np.zeros((2, 1, 1, 1), np.float32), heatmap=heat,
                      region_map=image.with_array(np.zeros(image.shape, np.uint8)))
    pred.regions = flag_regions(heat, label, CLASSES, max_regions=3)
    return pred


def _assert_same_space(written: sitk.Image, reference: sitk.Image) -> None:
    assert written.GetSize() == reference.GetSize()
    assert written.GetOrigin() == reference.GetOrigin()  # bit for bit
    # NRRD stores each axis as direction * spacing; splitting it again is exact to double round-off
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), rtol=0, atol=1e-12)


@pytest.mark.data
@pytest.mark.parametrize("series_name", OBLIQUE_SERIES[:2])
def test_outputs_of_an_oblique_dicom_series_keep_its_geometry_and_combine_in_itk(dicom_dir, series_name,
                                                                                  tmp_path):
    series = dicom_dir / "Study3" / series_name
    image = read_volume(series)
    assert abs(image.direction[1, 2]) > 0.1, "the series is oblique (that is the point of this test)"
    reference = _series_image(series)
    paths = write_prediction(_threshold_prediction(image), image, series, tmp_path, CLASSES)
    assert paths["label"].name == f"{series_name}_label.nrrd"
    for kind in ("label", "heatmap", "region_map"):
        written = sitk.ReadImage(str(paths[kind]))
        _assert_same_space(written, reference)
    label = sitk.ReadImage(str(paths["label"]))
    stats = sitk.LabelStatisticsImageFilter()
    stats.Execute(reference, label)  # ITK refuses images that do not share one physical space
    assert stats.GetCount(1) == int((read_volume(paths["label"], allow_constant=True).array == 1).sum()) > 0
    masked = sitk.GetArrayFromImage(sitk.Mask(reference, label))
    assert np.count_nonzero(masked) > 0
    # the float32 NIfTI this command used to write for DICOM input is what ITK refused
    nifti = sitk.ReadImage(str(write_volume(read_volume(paths["label"], allow_constant=True),
                                            tmp_path / "old.nii.gz")))
    assert max(abs(a - b) for a, b in zip(nifti.GetOrigin(), reference.GetOrigin(), strict=True)) > 1e-7
    with pytest.raises(RuntimeError, match="physical space|Inputs do not occupy"):
        sitk.Mask(reference, nifti)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_file_inputs_get_outputs_in_their_own_format_with_their_geometry(tmp_path, ext):
    theta = np.deg2rad(17)
    direction = np.array([[np.cos(theta), 0, np.sin(theta)], [0, 1, 0], [-np.sin(theta), 0, np.cos(theta)]])
    arr = np.random.default_rng(0).normal(size=(20, 18, 9)).astype(np.float32)
    src = write_volume(Volume(arr, (0.6875, 0.6875, 6.5), (-97.178176103646, -83.17, -11.42), direction),
                       tmp_path / f"scan{ext}")
    image = read_volume(src)
    paths = write_prediction(_threshold_prediction(image), image, src, tmp_path / "out", CLASSES)
    assert paths["label"].name == f"scan_label{ext}"
    _assert_same_space(sitk.ReadImage(str(paths["label"])), sitk.ReadImage(str(src)))
    sitk.Mask(sitk.ReadImage(str(src)), sitk.ReadImage(str(paths["label"])))


def test_output_stems_are_unique_per_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert output_stems([a / "x.nii.gz", a / "y.nrrd"], None) == ["x", "y"]
    assert output_stems([a / "x.nii.gz", a / "x.nrrd", a / "x"], None) == ["x_nii", "x_nrrd", "x_dicom"]
    assert output_stems([a / "x.nii.gz", b / "x.nii.gz"], None) == ["x", "x"]  # beside each input
    with pytest.raises(ValueError, match=r"a/x.nii.gz and .*b/x.nii.gz would write the same outputs"):
        output_stems([a / "x.nii.gz", b / "x.nii.gz"], tmp_path / "out")
    with pytest.raises(ValueError, match="give each input once"):
        output_stems([a / "x.nii.gz", a / "x.nii.gz"], None)


def test_infer_of_same_named_inputs_writes_separate_outputs(tiny_model, tmp_path, capsys):
    rng = np.random.default_rng(1)
    arr = rng.normal(size=(20, 20, 16)).astype(np.float32)
    arr[6:12, 6:12, 5:11] += 1.0
    nii = write_volume(Volume(arr, (1.0, 1.0, 2.0)), tmp_path / "x.nii.gz")
    nrrd = write_volume(Volume(arr[::-1].copy(), (1.0, 1.0, 2.0)), tmp_path / "x.nrrd")
    assert cli_main(["infer", "--model", str(tiny_model), str(nii), str(nrrd)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["input"] for x in lines] == [str(nii), str(nrrd)]
    names = {p.name for p in tmp_path.iterdir()}
    for tag, ext in (("nii", ".nii.gz"), ("nrrd", ".nrrd")):
        assert {f"x_{tag}_label{ext}", f"x_{tag}_heatmap{ext}", f"x_{tag}_regionmap{ext}",
                f"x_{tag}_regions.json", f"x_{tag}_overlay.png"} <= names
    assert "x_overlay.png" not in names and "x_regions.json" not in names
    assert lines[0]["png"] != lines[1]["png"] and lines[0]["regions"] != lines[1]["regions"]
    # refused before any work when names cannot be told apart
    out = tmp_path / "out"
    assert cli_main(["infer", "--model", str(tiny_model), str(nii), str(nii), "--out", str(out)]) == 2
    assert "would write the same outputs" in capsys.readouterr().err
    assert not out.exists()
