"""Reading volumes with geometry, and clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SynergyPLLib.engine.data import load_decathlon
from SynergyPLLib.engine.io import Volume, VolumeError, read_label, read_volume, write_volume


def _oblique() -> Volume:
    theta = np.deg2rad(20)
    direction = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    arr = np.random.default_rng(0).normal(size=(12, 10, 8)).astype(np.float32)
    return Volume(arr, spacing=(0.7, 1.1, 2.5), origin=(-30.0, 12.5, 7.0), direction=direction)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_geometry_round_trips(tmp_path, ext):
    vol = _oblique()
    back = read_volume(write_volume(vol, tmp_path / f"v{ext}"))
    assert np.array_equal(back.array, vol.array)
    assert np.allclose(back.ijk_to_lps, vol.ijk_to_lps, atol=1e-5)
    assert np.allclose(back.ijk_to_ras, np.diag([-1, -1, 1, 1]) @ vol.ijk_to_lps, atol=1e-5)


def test_bad_images_are_named_and_explained(tmp_path):
    with pytest.raises(VolumeError, match="no such file"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(VolumeError, match="junk.nii.gz.*(cannot be read|corrupt)"):
        read_volume(tmp_path / "junk.nii.gz")
    flat = Volume(np.random.rand(20, 20, 1).astype(np.float32))
    with pytest.raises(VolumeError, match="2D"):
        read_volume(write_volume(flat, tmp_path / "flat.nrrd"))
    nan = Volume(np.full((4, 4, 4), np.nan, np.float32))
    with pytest.raises(VolumeError, match="NaN"):
        read_volume(write_volume(nan, tmp_path / "nan.nrrd"))
    const = Volume(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(VolumeError, match="constant"):
        read_volume(write_volume(const, tmp_path / "const.nrrd"))
    good = write_volume(_oblique(), tmp_path / "good.nii.gz")
    data = good.read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(VolumeError, match="trunc.nii.gz"):
        read_volume(tmp_path / "trunc.nii.gz")


def test_label_checks(tmp_path):
    image = _oblique()
    lab = image.with_array(np.zeros(image.shape, np.uint8))
    lab.array[2:4, 2:4, 2:4] = 2
    assert read_label(write_volume(lab, tmp_path / "ok.nrrd"), image, 3).array.max() == 2
    with pytest.raises(VolumeError, match=r"values \[2\] are outside the classes 0..1"):
        read_label(tmp_path / "ok.nrrd", image, 2)
    shifted = Volume(lab.array, image.spacing, (0.0, 0.0, 0.0), image.direction)
    with pytest.raises(VolumeError, match="origin"):
        read_label(write_volume(shifted, tmp_path / "shift.nrrd"), image, 3)
    small = Volume(lab.array[:-1], image.spacing, image.origin, image.direction)
    with pytest.raises(VolumeError, match="shape"):
        read_label(write_volume(small, tmp_path / "small.nrrd"), image, 3)


def test_decathlon_errors(tmp_path):
    with pytest.raises(VolumeError, match="no dataset.json"):
        load_decathlon(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "2": "x"}, "training": []}))
    with pytest.raises(VolumeError, match="0..N-1"):
        load_decathlon(tmp_path)


@pytest.mark.data
def test_real_hippocampus_and_dicom_geometry(hippocampus_dir, dicom_dir):
    classes, cases = load_decathlon(hippocampus_dir)
    assert classes == ["background", "Anterior", "Posterior"] and len(cases) == 200
    image = read_volume(cases[0].image)
    label = read_label(cases[0].label, image, 3)
    assert set(np.unique(label.array)) <= {0, 1, 2}
    series = read_volume(dicom_dir / "Study1" / "13_HCropVolume")
    assert sorted(series.shape) == [32, 35, 51]
    with pytest.raises(VolumeError, match="DICOM series"):
        read_volume(dicom_dir / "Study1")


@pytest.mark.parametrize("name", ["t.nrrd", "t.mha", "t.nii"])
def test_truncated_uncompressed_files_are_refused(tmp_path, name):
    good = write_volume(_oblique(), tmp_path / f"good_{name}", compress=False)
    data = good.read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) - 200])
    with pytest.raises(VolumeError, match=name):
        read_volume(tmp_path / name)


def test_preprocessing_resamples_and_inverts_onto_the_original_grid():
    import torch

    from SynergyPLLib.engine.config import PreprocessConfig
    from SynergyPLLib.engine.data import Preprocessor

    vol = _oblique()
    pre = Preprocessor(PreprocessConfig(orientation="RAS", spacing=(1.0, 1.0, 1.0), intensity="zscore"))
    x = pre.image(vol)
    assert x.shape[0] == 1 and x.shape[1:] != vol.shape  # resampled to 1 mm
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2
    # a smooth field survives the round trip onto the original grid
    field = torch.linspace(0, 1, x.shape[1])[:, None, None].expand(*x.shape[1:])[None].float()
    back = pre.invert(field, x)
    assert tuple(back.shape[1:]) == vol.shape
    label = pre.label(vol.with_array((vol.array > 0).astype(np.uint8)))
    assert label.shape[1:] == x.shape[1:]
    identity = Preprocessor(PreprocessConfig(orientation=None))  # the default reorients to RAS since 0.2
    assert identity.is_identity_grid and tuple(identity.image(vol).shape[1:]) == vol.shape


def test_nan_in_nifti_is_refused(tmp_path):
    import nibabel as nib

    arr = np.random.rand(6, 6, 6).astype(np.float32)
    arr[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(VolumeError, match="NaN"):
        read_volume(tmp_path / "nan.nii.gz")
