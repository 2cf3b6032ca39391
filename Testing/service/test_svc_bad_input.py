"""Malformed input: every case answered 4xx with a clear message, and nothing stored."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import zipfile

import numpy as np
import pytest
from svc_support import Server, case_image, project_files, zip_folder

from SynergyPLLib.client import BadRequestError, NotFoundError, ServerError, TooLargeError
from SynergyPLLib.engine.io import Volume, read_volume, write_volume


@pytest.fixture(scope="module")
def srv(tmp_path_factory, hippocampus_dir):
    from svc_support import make_project

    root = tmp_path_factory.mktemp("bad")
    project = make_project(root / "project", hippocampus_dir, cases=3, labeled=1)
    with Server(project, args=("--max-upload-mb", "1")) as s:
        yield s


@pytest.fixture
def unchanged(srv):
    """Asserts after the test that no file, case or label version was added and tmp/ is empty."""
    c = srv.client()
    before = (project_files(srv.project), [(x["id"], (x["latest_label"] or {}).get("version")) for x in c.list_cases()])
    yield
    after = (project_files(srv.project), [(x["id"], (x["latest_label"] or {}).get("version")) for x in c.list_cases()])
    assert after == before
    assert list((srv.project / "tmp").iterdir()) == []


def _expect(exc_type, match, fn, *args, status=None, **kw):
    with pytest.raises(exc_type) as err:
        fn(*args, **kw)
    assert 400 <= err.value.status < 500
    if status is not None:
        assert err.value.status == status
    assert match.lower() in err.value.message.lower(), err.value.message
    return err.value


# ---- images -------------------------------------------------------------------------------------

def test_corrupt_and_truncated_images(srv, unchanged, hippocampus_dir):
    c = srv.client()
    rng = np.random.default_rng(0)
    _expect(BadRequestError, "junk.nii.gz: file is truncated or corrupt", c.upload_case, rng.bytes(5000),
            filename="junk.nii.gz", status=422)
    _expect(BadRequestError, "junk.nrrd: cannot be read", c.upload_case, rng.bytes(5000), filename="junk.nrrd",
            status=422)
    good = sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[0].read_bytes()
    _expect(BadRequestError, "truncated", c.upload_case, good[: len(good) // 2], filename="half.nii.gz", status=422)
    raw = gzip.decompress(good)
    _expect(BadRequestError, "truncated", c.upload_case, raw[: len(raw) // 3], filename="cut.nii", status=422)
    _expect(BadRequestError, "empty", c.upload_case, b"", filename="empty.nrrd", status=422)
    _expect(BadRequestError, "unsupported type", c.upload_case, b"hello", filename="notes.txt", status=400)


def test_nan_2d_and_constant_images(srv, unchanged, tmp_path):
    c = srv.client()
    arr = np.random.default_rng(1).normal(size=(20, 20, 10)).astype(np.float32)
    arr[3, 4, 5] = np.nan
    _expect(BadRequestError, "nan.nrrd: image contains NaN", c.upload_case,
            write_volume(Volume(arr), tmp_path / "nan.nrrd"), status=422)
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "nan.nii.gz")
    _expect(BadRequestError, "nan.nii.gz: image contains NaN", c.upload_case, tmp_path / "nan.nii.gz", status=422)
    arr[3, 4, 5] = np.inf
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "inf.nii")
    _expect(BadRequestError, "infinite", c.upload_case, tmp_path / "inf.nii", status=422)
    import SimpleITK as sitk

    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((30, 30), np.int16) * np.arange(30, dtype=np.int16)), str(flat))
    _expect(BadRequestError, "2D", c.upload_case, flat, status=422)
    slab = write_volume(Volume(np.random.default_rng(2).normal(size=(30, 30, 1)).astype(np.float32)),
                        tmp_path / "slab.nii.gz")
    _expect(BadRequestError, "2D", c.upload_case, slab, status=422)
    const = write_volume(Volume(np.full((10, 10, 10), 7, np.int16)), tmp_path / "const.nrrd")
    _expect(BadRequestError, "constant", c.upload_case, const, status=422)


def test_upload_over_size_limit(srv, unchanged, tmp_path):
    c = srv.client()
    big = write_volume(Volume(np.random.default_rng(3).normal(size=(80, 80, 80)).astype(np.float32)),
                       tmp_path / "big.nrrd", compress=False)  # about 2 MB, limit is 1 MB
    _expect(TooLargeError, "larger than the limit", c.upload_case, big, status=413)
    # without Content-Length (chunked), the limit is enforced while reading
    body, ctype = _multipart({"file": ("big.nrrd", big.read_bytes())})
    status, detail = _raw(srv, "POST", "/api/cases", chunks=[body[i:i + 65536] for i in range(0, len(body), 65536)],
                          headers={"Content-Type": ctype, "Transfer-Encoding": "chunked"})
    assert status == 413 and "larger than the limit" in detail


def test_bad_dicom_zips(srv, unchanged, dicom_dir):
    c = srv.client()
    _expect(BadRequestError, "not a valid ZIP", c.upload_case, b"PK\x03\x04broken", filename="s.zip", status=422)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../evil.dcm", b"x")
    _expect(BadRequestError, "unsafe path", c.upload_case, buf.getvalue(), filename="slip.zip", status=422)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in ("Study1/13_HCropVolume", "Study3/11_HCropVolume"):
            for f in sorted((dicom_dir / name).glob("*.dcm"))[:3]:
                zf.write(f, f"{name}/{f.name}")
    _expect(BadRequestError, "2 DICOM series", c.upload_case, buf.getvalue(), filename="two.zip", status=422)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", b"no images here")
    _expect(BadRequestError, "no DICOM", c.upload_case, buf.getvalue(), filename="none.zip", status=422)
    full = zip_folder(dicom_dir / "Study1" / "13_HCropVolume")
    _expect(BadRequestError, "not a valid ZIP", c.upload_case, full[: len(full) // 2], filename="half.zip", status=422)


# ---- labels -------------------------------------------------------------------------------------

@pytest.fixture
def labeled(srv):
    cid = srv.client().list_cases(status="confirmed")[0]["id"]
    return cid, case_image(srv.project, cid)


def test_label_shape_geometry_and_values(srv, unchanged, labeled, tmp_path):
    c = srv.client()
    cid, image = labeled
    z = np.zeros(image.shape, np.uint8)

    def submit(vol, name):
        return c.submit_label(cid, write_volume(vol, tmp_path / name), author="t", parent_version=1)

    _expect(BadRequestError, "shape", submit, Volume(z[:-1], image.spacing, image.origin, image.direction), "s.nrrd",
            status=422)
    _expect(BadRequestError, "spacing", submit, Volume(z, (2.0, 1.0, 1.0), image.origin, image.direction), "sp.nrrd",
            status=422)
    shifted = tuple(o + 5.0 for o in image.origin)
    _expect(BadRequestError, "origin", submit, Volume(z, image.spacing, shifted, image.direction), "o.nrrd", status=422)
    _expect(BadRequestError, "direction", submit, Volume(z, image.spacing, image.origin, -np.asarray(image.direction)),
            "d.nrrd", status=422)
    bad = z.copy()
    bad[1, 1, 1] = 5
    _expect(BadRequestError, "outside the classes", submit, image.with_array(bad), "v.nrrd", status=422)
    neg = z.astype(np.int16)
    neg[2, 2, 2] = -1
    _expect(BadRequestError, "outside the classes", submit, image.with_array(neg), "n.nrrd", status=422)
    frac = z.astype(np.float32)
    frac[0, 0, 0] = 0.5
    _expect(BadRequestError, "non-integer", submit, image.with_array(frac), "f.nrrd", status=422)
    _expect(BadRequestError, "cannot be read", c.submit_label, cid, b"\x00" * 300, author="t", parent_version=1,
            filename="junk.nrrd", status=422)
    _expect(BadRequestError, "source must be", c.submit_label, cid, write_volume(image.with_array(z), tmp_path / "ok.nrrd"),
            author="t", parent_version=1, source="robot", status=400)
    _expect(BadRequestError, "author is required", c.submit_label, cid, tmp_path / "ok.nrrd", author="  ",
            parent_version=1, status=400)


def test_missing_and_mistyped_form_fields(srv, unchanged, labeled):
    cid, _ = labeled
    body, ctype = _multipart({"file": ("l.nrrd", b"x"), "parent_version": "1"})
    status, detail = _raw(srv, "POST", f"/api/cases/{cid}/labels", body=body, headers={"Content-Type": ctype})
    assert status == 422 and "author" in detail
    body, ctype = _multipart({"file": ("l.nrrd", b"x"), "author": "a", "parent_version": "latest"})
    status, detail = _raw(srv, "POST", f"/api/cases/{cid}/labels", body=body, headers={"Content-Type": ctype})
    assert status == 422 and "parent_version" in detail
    status, detail = _raw(srv, "POST", "/api/train", body=b'{"iterations": -3}',
                          headers={"Content-Type": "application/json"})
    assert status == 422 and "iterations" in detail
    status, detail = _raw(srv, "POST", "/api/train", body=b'{"labels": "some"}',
                          headers={"Content-Type": "application/json"})
    assert status == 422 and "labels" in detail
    status, detail = _raw(srv, "POST", "/api/train", body=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 422 and "json" in detail.lower()


# ---- ids ----------------------------------------------------------------------------------------

def test_unknown_and_unsafe_ids(srv, unchanged, labeled, tmp_path):
    c = srv.client()
    cid, image = labeled
    ok = write_volume(image.with_array(np.zeros(image.shape, np.uint8)), tmp_path / "ok.nrrd")
    _expect(NotFoundError, "no case 'ghost'", c.submit_label, "ghost", ok, author="t", parent_version=0, status=404)
    _expect(NotFoundError, "no case 'ghost'", c.download_image, "ghost", status=404)
    _expect(NotFoundError, "no job 999", c.job, 999, status=404)
    img = read_volume(srv.project / "cases" / cid / "image.nrrd")
    src = write_volume(img, tmp_path / "img.nrrd")
    for bad in ("../evil", "a/b", "..", "x\\y", ".hidden", "a..b"):
        with pytest.raises(ServerError) as err:
            c.upload_case(src, case_id=bad)
        assert err.value.status == 400, (bad, err.value)
        assert "case id" in err.value.message
    for path in ("/api/cases/..", "/api/cases/../../etc/passwd", "/api/cases/%2e%2e/labels",
                 "/api/cases/a%2Fb/image", "/api/cases/..%2F..%2Fproject.yaml/image", "/api/cases/a..b/labels/1"):
        status, detail = _raw(srv, "GET", path)
        assert 400 <= status < 500 and detail, (path, status, detail)
        assert "root:" not in detail and "engine" not in detail
    _expect(BadRequestError, "unknown export format", c.export, cid, format="png", status=400)
    _expect(BadRequestError, "label version must be a number", c.download_label, cid, "v1", status=400)


# ---- raw HTTP helpers ---------------------------------------------------------------------------

def _multipart(fields: dict) -> tuple[bytes, str]:
    b = "test-boundary-123"
    out = b""
    for k, v in fields.items():
        if isinstance(v, tuple):
            out += (f'--{b}\r\nContent-Disposition: form-data; name="{k}"; filename="{v[0]}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n").encode() + v[1] + b"\r\n"
        else:
            out += f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    return out + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def _raw(srv, method, path, body=None, chunks=None, headers=None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    headers = {**srv.auth_headers(), **(headers or {})}
    try:
        if chunks is not None:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            conn.endheaders()
            try:
                for ch in chunks:
                    conn.send(f"{len(ch):X}\r\n".encode() + ch + b"\r\n")
                conn.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
        else:
            conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        try:
            detail = json.loads(data).get("detail", "")
        except ValueError:
            detail = data.decode(errors="replace")
        return resp.status, detail if isinstance(detail, str) else json.dumps(detail)
    finally:
        conn.close()
