"""A malicious-file corpus against a real ``synergypl serve``: detached headers, truncations per dtype
and format, decompression bombs, NaN, 2D, 4D, mismatched geometry, wrong label values, unsafe ids and
file names. Every file is made here from the real hippocampus/DICOM data (nothing committed). Each
refusal must carry its expected status and a message naming the problem, and leave the store
unchanged (cases, label versions, every file under the project folder, an empty tmp/).
"""

from __future__ import annotations

import gzip
import io
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from svc_support import Server, case_image, make_project

from SynergyPLLib.client import ServerError
from SynergyPLLib.engine.io import Volume, read_volume, write_volume

pytestmark = pytest.mark.data
LIMITS = {"max_voxels": 4_000_000, "max_image_mb": 8.0}  # small, so the bombs stay small too


@pytest.fixture(scope="module")
def srv(tmp_path_factory, hippocampus_dir):
    root = tmp_path_factory.mktemp("corpus")
    project = make_project(root / "project", hippocampus_dir, cases=2, labeled=1)
    cfg = yaml.safe_load((project / "project.yaml").read_text())
    cfg["service"].update(LIMITS)
    (project / "project.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (root / "secret.txt").write_bytes(b"S" * 62475)  # what a detached header would point at
    with Server(project, args=("--max-upload-mb", "16")) as s:
        yield s


@pytest.fixture(scope="module")
def labeled(srv):
    cid = srv.client().list_cases(status="confirmed")[0]["id"]
    return cid, case_image(srv.project, cid)


def snapshot(srv) -> tuple:
    """Everything a refused upload must not change: cases, label versions, files, trash."""
    c = srv.client()
    cases = [(x["id"], [v["sha256"] for v in c.list_labels(x["id"])]) for x in c.list_cases()]
    files = sorted((str(p.relative_to(srv.project)), p.stat().st_size) for p in srv.project.rglob("*")
                   if p.is_file() and p.parts[len(srv.project.parts)] not in ("logs", ".serve.lock")
                   and not p.name.startswith("synergypl.sqlite"))
    outside = sorted(p.name for p in srv.project.parent.iterdir())
    return cases, files, outside


def refused(srv, status: int, match: str, send, *args, **kw) -> str:
    """Call ``send``; it must fail with ``status`` and a message containing ``match``; nothing stored."""
    before = snapshot(srv)
    with pytest.raises(ServerError) as err:
        send(*args, **kw)
    msg = err.value.message
    assert err.value.status == status, (match, err.value.status, msg)
    assert match.lower() in msg.lower(), (match, msg)
    assert str(srv.project) not in msg  # no server paths in messages
    assert snapshot(srv) == before, f"something was stored after: {msg}"
    assert list((srv.project / "tmp").iterdir()) == []
    return msg


# ---- files made from real data ------------------------------------------------------------------

def nrrd_parts(path: Path) -> tuple[bytes, bytes]:
    data = path.read_bytes()
    end = data.index(b"\n\n") + 2
    return data[:end], data[end:]


def mha_parts(path: Path) -> tuple[bytes, bytes]:
    data = path.read_bytes()
    end = data.index(b"\n", data.index(b"ElementDataFile")) + 1
    return data[:end], data[end:]


def truncated(vol: Volume, tmp: Path, fmt: str, compressed: bool) -> Path:
    """``vol`` written by ITK as ``fmt``, then its voxel data cut to half (and re-compressed)."""
    ext = {"nrrd": ".nrrd", "mha": ".mha", "nifti": ".nii.gz" if compressed else ".nii"}[fmt]
    name = f"cut-{vol.array.dtype}-{'z' if compressed else 'raw'}{ext}"
    src = write_volume(vol, tmp / f"src-{name}", compress=compressed)
    half = vol.array.nbytes // 2
    if fmt == "nifti":
        raw = gzip.decompress(src.read_bytes()) if compressed else src.read_bytes()
        cut = raw[: len(raw) - vol.array.nbytes + half]
        out = gzip.compress(cut) if compressed else cut
    else:
        head, data = (nrrd_parts if fmt == "nrrd" else mha_parts)(src)
        if compressed:
            raw = gzip.decompress(data) if fmt == "nrrd" else zlib.decompress(data)
            data = gzip.compress(raw[:half]) if fmt == "nrrd" else zlib.compress(raw[:half])
        else:
            data = data[:half]
        out = head + data
    (tmp / name).write_bytes(out)
    return tmp / name


def deflate_zeros(n: int) -> bytes:
    """gzip of ``n`` zero bytes, made in pieces (a bomb for the test, without holding ``n`` bytes)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    parts = [comp.compress(block) for _ in range(n >> 20)]
    return b"".join(parts) + comp.compress(bytes(n % (1 << 20))) + comp.flush()


# ---- detached headers ---------------------------------------------------------------------------

def test_detached_headers_are_refused(srv, labeled, tmp_path):
    c = srv.client()
    cid, image = labeled
    secret = srv.project.parent / "secret.txt"
    i, j, k = image.shape
    for target in ("../../secret.txt", str(secret), "/dev/zero", "../project.yaml"):
        for key in ("data file", "datafile"):
            hdr = (f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {i} {j} {k}\nencoding: raw\n{key}: {target}\n\n")
            refused(srv, 422, "detached NRRD header", c.upload_case, hdr.encode(), filename="evil.nrrd")
            refused(srv, 422, "detached NRRD header", c.submit_label, cid, hdr.encode(), filename="evil.nrrd",
                    author="attacker", parent_version=1)
        mha = (f"ObjectType = Image\nNDims = 3\nDimSize = {i} {j} {k}\nElementType = MET_UCHAR\n"
               f"ElementDataFile = {target}\n")
        refused(srv, 422, "detached MetaImage header", c.upload_case, mha.encode(), filename="evil.mha")
        refused(srv, 422, "detached MetaImage header", c.submit_label, cid, mha.encode(), filename="evil.mha",
                author="attacker", parent_version=1)
    # an ITK-written detached pair, sent as its header alone
    pair = write_volume(image, tmp_path / "pair.nhdr")
    refused(srv, 422, "detached header (.nhdr)", c.upload_case, pair, filename="pair.nhdr")
    mhd = write_volume(image, tmp_path / "pair.mhd")
    refused(srv, 422, "detached header (.mhd)", c.submit_label, cid, mhd, author="a", parent_version=1)
    # the same detached NRRD under another format's name is still not read as NRRD
    hdr = f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {i} {j} {k}\nencoding: raw\ndata file: /dev/zero\n\n"
    refused(srv, 422, "cannot be read as MetaImage", c.upload_case, hdr.encode(), filename="evil.mha")
    refused(srv, 422, "truncated or corrupt", c.upload_case, hdr.encode(), filename="evil.nii.gz")
    # a NIfTI header whose voxels are in a separate .img file
    import nibabel as nib

    img = nib.Nifti1Pair(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    nib.save(img, tmp_path / "pair.hdr")
    refused(srv, 422, "separate file", c.upload_case, (tmp_path / "pair.hdr").read_bytes(), filename="pair.nii")


# ---- truncations --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["nrrd", "mha", "nifti"])
def test_truncated_files_per_dtype_and_encoding(srv, labeled, tmp_path, fmt):
    c = srv.client()
    cid, image = labeled
    lab = read_volume(sorted((srv.project / "cases" / cid / "labels").glob("*.nrrd"))[0]).array
    assert lab.max() > 0  # a real label with foreground to lose
    for compressed in (False, True):
        cut = truncated(image.with_array(lab.astype(np.uint8)), tmp_path, fmt, compressed)
        refused(srv, 422, "truncated", c.submit_label, cid, cut, author="t", parent_version=1)
        for dtype in (np.int16, np.float32):
            cut = truncated(image.with_array(image.array.astype(dtype)), tmp_path, fmt, compressed)
            refused(srv, 422, "truncated", c.upload_case, cut, case_id="cut")
            cut = truncated(image.with_array(lab.astype(dtype)), tmp_path, fmt, compressed)
            refused(srv, 422, "truncated", c.submit_label, cid, cut, author="t", parent_version=1)
    # a DICOM series with one file cut short, and a MetaImage cut inside its header
    if fmt == "mha":
        src = write_volume(image, tmp_path / "short.mha", compress=False).read_bytes()
        msg = refused(srv, 422, "cannot be read as MetaImage", c.upload_case, src[:60], filename="short.mha")
        assert "No such file" not in msg


def test_truncated_dicom_file_in_a_series(srv, dicom_dir, tmp_path):
    c = srv.client()
    files = sorted((dicom_dir / "Study1" / "13_HCropVolume").glob("*.dcm"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, f in enumerate(files):
            data = f.read_bytes()
            zf.writestr(f"s/{f.name}", data[: len(data) - 1000] if n == 5 else data)
    refused(srv, 422, "is truncated", c.upload_case, buf.getvalue(), filename="cut.zip")
    # a series declaring far more voxels than it holds (rows x columns edited)
    import pydicom

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in files:
            ds = pydicom.dcmread(f)
            ds.Rows, ds.Columns = 4000, 4000
            out = io.BytesIO()
            ds.save_as(out)
            zf.writestr(f"s/{f.name}", out.getvalue())
    refused(srv, 413, "over the limit", c.upload_case, buf.getvalue(), filename="huge.zip")


# ---- bombs and limits ---------------------------------------------------------------------------

def test_decompression_bombs_and_declared_sizes(srv, labeled, tmp_path):
    c = srv.client()
    cid, _ = labeled
    tiny = gzip.compress(bytes(1000))
    bomb = b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1500 1500 1000\nencoding: gzip\n\n" + tiny
    assert len(bomb) < 1024
    refused(srv, 413, "2,250,000,000 voxels, over the limit", c.upload_case, bomb, filename="bomb.nrrd")
    refused(srv, 413, "over the limit", c.submit_label, cid, bomb, filename="bomb.nrrd", author="a",
            parent_version=1)
    mha = (b"ObjectType = Image\nNDims = 3\nDimSize = 1500 1500 1000\nElementType = MET_UCHAR\n"
           b"CompressedData = True\nElementDataFile = LOCAL\n" + zlib.compress(bytes(1000)))
    refused(srv, 413, "voxels, over the limit", c.upload_case, mha, filename="bomb.mha")
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1500, 1500, 1000))
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 352
    nii = gzip.compress(hdr.binaryblock + bytes(4) + bytes(1000))
    refused(srv, 413, "voxels, over the limit", c.upload_case, nii, filename="bomb.nii.gz")
    # within the voxel limit, over the byte limit (float64)
    big = b"NRRD0004\ntype: double\ndimension: 3\nsizes: 120 120 100\nendian: little\nencoding: gzip\n\n" + tiny
    refused(srv, 413, "MB of voxel data", c.upload_case, big, filename="f64.nrrd")
    # a small declared volume whose gzip stream inflates to 64 MB: only the declared bytes are inflated
    small = b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 50 50 50\nencoding: gzip\n\n" + deflate_zeros(64 << 20)
    refused(srv, 422, "more voxel data than its header declares", c.upload_case, small, filename="inflate.nrrd")
    # a NIfTI whose gzip runs past the decompressed limit after its header
    hdr.set_data_shape((20, 20, 20))
    nii = hdr.binaryblock + bytes(4)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    nii = comp.compress(nii) + b"".join(comp.compress(bytes(1 << 20)) for _ in range(40)) + comp.flush()
    refused(srv, 413, "decompresses to more than the limit", c.upload_case, nii, filename="trail.nii.gz")


# ---- content: NaN, 2D, 4D, geometry, values -----------------------------------------------------

def test_nan_2d_4d_geometry_and_label_values(srv, labeled, tmp_path):
    import SimpleITK as sitk

    c = srv.client()
    cid, image = labeled
    arr = image.array.astype(np.float32)
    arr[3, 4, 5] = np.nan
    refused(srv, 422, "NaN", c.upload_case, write_volume(image.with_array(arr), tmp_path / "nan.nrrd"))
    refused(srv, 422, "NaN", c.submit_label, cid, write_volume(image.with_array(arr), tmp_path / "nanl.mha"),
            author="a", parent_version=1)
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(image.array[:, :, 10].astype(np.int16)), str(flat))
    refused(srv, 422, "2D", c.upload_case, flat)
    four = tmp_path / "four.nrrd"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(image.array.astype(np.int16))] * 2), str(four))
    refused(srv, 422, "4D", c.upload_case, four)
    z = np.zeros(image.shape, np.uint8)

    def label(vol, name):
        return c.submit_label, cid, write_volume(vol, tmp_path / name)

    send = dict(author="a", parent_version=1)
    refused(srv, 422, "shape", *label(Volume(z[:, :-2], image.spacing, image.origin, image.direction), "s.nrrd"),
            **send)
    refused(srv, 422, "spacing", *label(Volume(z, (3.0, 1.0, 1.0), image.origin, image.direction), "sp.nii.gz"),
            **send)
    moved = tuple(o + 7.0 for o in image.origin)
    refused(srv, 422, "origin", *label(Volume(z, image.spacing, moved, image.direction), "o.mha"), **send)
    bad = z.copy()
    bad[1, 2, 3] = 9
    refused(srv, 422, "outside the classes", *label(image.with_array(bad), "v.nrrd"), **send)
    neg = z.astype(np.int16)
    neg[0, 0, 0] = -3
    refused(srv, 422, "outside the classes", *label(image.with_array(neg), "n.nii"), **send)
    frac = z.astype(np.float32)
    frac[2, 2, 2] = 1.5
    refused(srv, 422, "non-integer", *label(image.with_array(frac), "f.mha"), **send)


# ---- ids and file names -------------------------------------------------------------------------

def test_path_traversal_ids_and_file_names(srv, labeled, tmp_path):
    c = srv.client()
    cid, image = labeled
    ok = write_volume(image, tmp_path / "ok.nrrd")
    for bad in ("../evil", "..", "a/../../b", "..\\x", ".hidden", "a..b", "/etc/passwd", "x" * 101):
        refused(srv, 400, "case id", c.upload_case, ok, case_id=bad)
    # a traversing file name names the case (sanitised), never a path
    before = snapshot(srv)
    made = c.upload_case(ok, filename="../../../escape.nrrd")
    assert made["id"] == "escape" and (srv.project / "cases" / "escape" / "image.nrrd").exists()
    assert sorted(p.name for p in srv.project.parent.iterdir()) == before[2]
    c.delete_case("escape")
    label = write_volume(image.with_array(np.zeros(image.shape, np.uint8)), tmp_path / "l.nrrd")
    for path_id in ("..%2F..%2Fsecret", "%2e%2e", "a..b"):
        with pytest.raises(ServerError) as err:
            c.submit_label(path_id, label, author="a", parent_version=0)
        assert 400 <= err.value.status < 500, (path_id, err.value)


def test_well_formed_files_of_every_format_are_still_accepted(srv, labeled, tmp_path):
    """The checks refuse what is broken, not what ITK, nibabel and Slicer write."""
    c = srv.client()
    cid, image = labeled
    lab = read_volume(sorted((srv.project / "cases" / cid / "labels").glob("*.nrrd"))[0]).array
    version = c.list_labels(cid)[-1]["version"]
    for name, compress in (("a.nrrd", True), ("b.nrrd", False), ("c.mha", True), ("d.mha", False),
                           ("e.nii.gz", True), ("f.nii", False)):
        f = write_volume(image.with_array(lab.astype(np.int16)), tmp_path / name, compress=compress)
        v = c.submit_label(cid, f, author="ok", parent_version=version)
        assert v["voxels"] == {str(k): int((lab == k).sum()) for k in range(3)}, name
        version = v["version"]
    import nrrd

    nrrd.write(str(tmp_path / "pynrrd.nrrd"), image.array.astype(np.float32),
               {"space": "left-posterior-superior", "space directions": np.diag(image.spacing),
                "space origin": np.array(image.origin), "encoding": "gzip"})
    made = c.upload_case(tmp_path / "pynrrd.nrrd", case_id="pynrrd")
    assert made["shape"] == list(image.shape)
    c.delete_case("pynrrd")


def test_engine_names_a_too_short_metaimage(tmp_path):
    """Outside the upload checks too (CLI, init), a cut MetaImage is called truncated, not 'No such file'."""
    from SynergyPLLib.engine.io import VolumeError

    vol = Volume(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32))
    for compress in (False, True):
        data = write_volume(vol, tmp_path / "full.mha", compress=compress).read_bytes()
        (tmp_path / "short.mha").write_bytes(data[: len(data) // 2])
        with pytest.raises(VolumeError, match="truncated") as err:
            read_volume(tmp_path / "short.mha")
        assert "No such file" not in str(err.value)
