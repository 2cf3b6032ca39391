"""The worker-thread NRRD writer: Slicer's reader (slicer-core), the engine's reader (SimpleITK) and
pynrrd read back exactly the voxels and the geometry that went in."""

from __future__ import annotations

import numpy as np
import pytest
from SynergyPLModuleLib import nrrdfile
from SynergyPLModuleLib.scene import files, transforms, volumes

from SynergyPLLib.engine.io import Volume, read_volume

SHAPE = (17, 23, 11)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.uint16, np.float32, np.float64, np.bool_])
def test_written_nrrd_reads_back_exactly(mrml_env, oblique_geometry, tmp_path, dtype):
    rng = np.random.default_rng(3)
    array = (rng.normal(0, 300, SHAPE) if dtype in (np.float32, np.float64) else rng.integers(0, 200, SHAPE)).astype(dtype)
    image = Volume(array.astype(np.float32), **oblique_geometry)
    path = nrrdfile.write_nrrd(tmp_path / "image.nrrd", array, image.ijk_to_ras)
    expected = array.astype(np.uint8) if dtype == np.bool_ else array

    node = files.read_volume_file(path, scene=mrml_env.scene)     # Slicer's reader
    assert np.array_equal(volumes.array_ijk(node), expected)
    assert volumes.array_ijk(node).dtype == expected.dtype
    assert np.allclose(transforms.ijk_to_ras(node), image.ijk_to_ras, atol=1e-12)
    again = read_volume(path, allow_constant=True)                 # the service's reader
    assert np.array_equal(again.array, expected)
    assert again.same_geometry(image, tol=1e-9) is None


def test_header_is_slicers_and_data_is_gzip(oblique_geometry, tmp_path):
    nrrd = pytest.importorskip("nrrd")
    array = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    image = Volume(array, **oblique_geometry)
    path = nrrdfile.write_nrrd(tmp_path / "a.nrrd", array.T.copy().T, image.ijk_to_ras)  # a Fortran-ordered input
    data, header = nrrd.read(str(path))
    assert header["encoding"] == "gzip" and header["space"] == "left-posterior-superior"
    assert np.array_equal(data, array)
    assert np.allclose(header["space origin"], oblique_geometry["origin"], atol=1e-12)
    assert np.allclose(np.asarray(header["space directions"]).T, image.ijk_to_lps[:3, :3], atol=1e-12)
    raw = nrrdfile.write_nrrd(tmp_path / "raw.nrrd", array, image.ijk_to_ras, compress=False)
    assert np.array_equal(nrrd.read(str(raw))[0], array)
    assert raw.stat().st_size > path.stat().st_size
    assert not list(tmp_path.glob(".*partial"))


def test_refuses_what_nrrd_cannot_hold(tmp_path):
    with pytest.raises(nrrdfile.NrrdWriteError, match="3D"):
        nrrdfile.write_nrrd(tmp_path / "x.nrrd", np.zeros((2, 3)), np.eye(4))
    with pytest.raises(nrrdfile.NrrdWriteError, match="complex"):
        nrrdfile.write_nrrd(tmp_path / "x.nrrd", np.zeros((2, 3, 4), np.complex64), np.eye(4))
    assert not list(tmp_path.iterdir())
