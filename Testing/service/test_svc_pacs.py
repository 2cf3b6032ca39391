"""A project backed by a real PACS: Orthanc with its DICOMweb plugin on 127.0.0.1 (orthanc_support.py),
holding the real hippocampus-crop MR series of ``../shared/data/dicom`` uploaded through its REST API.

- Round trip: import a series (metadata only), predict (the worker fetches the series on first use),
  submit a confirmed label, publish it as DICOM SEG (STOW-RS), read the SEG back from Orthanc with
  highdicom: frames, the reference to the source series, segment codes, author, label version, pixels.
  Publishing the same version again is refused (409 naming the SEG already stored); force stores a
  second one. The round trip's seconds are printed (``-s``) and kept in pacs.json.
- ``synergypl init --from-dicomweb``: every volume series becomes a case, the others are skipped with
  their reason; no secret in project.yaml; "Next case" + the image download fetch the series, whose
  geometry matches the one computed from the metadata at import.
- Bad input, each a clear error with nothing stored: series that are not volumes (built from the real
  files with pydicom: a localizer, mixed sizes, two orientations, repeated positions, missing slices),
  an unknown series (404), Orthanc stopped (502; the project keeps working and recovers when it is back),
  a server that never answers (504), wrong or missing credentials, a secret written in project.yaml.
- Bearer token and TLS (a self-signed certificate given as ca_bundle) reach a real server.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from orthanc_support import PASSWORD, USER, Orthanc, missing
from svc_support import REPO, Server, read_bytes_volume, volume_bytes

from SynergyPLLib.client.errors import ServerError
from SynergyPLLib.engine.io import read_volume

PW_ENV = "SYNERGYPL_TEST_PACS_PASSWORD"
SERIES = ("Study1/13_HCropVolume", "Study3/11_HCropVolume")
BAD_KINDS = {  # how a bad series is built from the real one -> what the error must say
    "localizer": "localizer",
    "mixed_sizes": "mixed image sizes",
    "two_orientations": "different orientations",
    "repeated_positions": "share a position",
    "missing_slices": "uneven slice spacing",
}


def _need_orthanc() -> None:
    why = missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why + "; CI must have it")
        pytest.skip(why)


def _uid(ds) -> tuple[str, str]:
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def bad_series(src: Path, kind: str, out: Path) -> list[Path]:
    """A copy of the real series ``src`` (new series and instance UIDs) broken as ``kind`` says."""
    from pydicom.uid import generate_uid

    files = sorted(src.glob("*.dcm"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    out.mkdir(parents=True)
    series_uid = generate_uid()
    dss = [pydicom.dcmread(f) for f in files]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]) if "ImagePositionPatient" in d else 0.0)
    if kind == "missing_slices":
        dss = dss[:10] + dss[13:]
    if kind == "repeated_positions":
        dss = dss + [pydicom.dcmread(io.BytesIO(_bytes(d))) for d in dss[:4]]
    for i, ds in enumerate(dss):
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = f"broken {kind}"
        ds.SeriesNumber = 70 + list(BAD_KINDS).index(kind)
        ds.InstanceNumber = i + 1
        if kind == "localizer" and i == 0:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        if kind == "mixed_sizes" and i == 5:
            arr = ds.pixel_array[:-4, :]
            ds.Rows = arr.shape[0]
            ds.PixelData = np.ascontiguousarray(arr).tobytes()
        if kind == "two_orientations" and i % 2:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    paths = []
    for i, ds in enumerate(dss):
        p = out / f"{i:03d}.dcm"
        ds.save_as(p)
        paths.append(p)
    return paths


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, dicom_dir):
    """Orthanc holding the two real HCropVolume series and the broken copies; yields a dict with the
    server, the series' (study, series) UIDs by name and the upload seconds."""
    _need_orthanc()
    root = tmp_path_factory.mktemp("orthanc")
    with Orthanc(root / "server") as orthanc:
        uids = {}
        t0 = time.monotonic()
        for name in SERIES:
            files = sorted((dicom_dir / name).glob("*.dcm"))
            answers = orthanc.upload(files)
            assert all(a["Status"] in ("Success", "AlreadyStored") for a in answers)
            uids[name] = _uid(pydicom.dcmread(files[0], stop_before_pixels=True))
        upload_s = time.monotonic() - t0
        for kind in BAD_KINDS:
            files = bad_series(dicom_dir / SERIES[0], kind, root / kind)
            orthanc.upload(files)
            uids[kind] = _uid(pydicom.dcmread(files[0], stop_before_pixels=True))
        yield {"orthanc": orthanc, "uids": uids, "upload_s": upload_s, "root": root}


def section(orthanc: Orthanc, **kw) -> dict:
    return {"url": orthanc.dicomweb_url, "auth": "basic", "username": USER, "password_env": PW_ENV, **kw}


@pytest.fixture
def pacs_env(monkeypatch):
    monkeypatch.setenv(PW_ENV, PASSWORD)


def add_dicomweb(project: Path, sect: dict) -> None:
    cfg_path = project / "project.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["dicomweb"] = sect
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def seg_from_orthanc(orthanc: Orthanc, study: str, series: str, sop: str):
    import requests
    from dicomweb_client.api import DICOMwebClient

    s = requests.Session()
    s.auth = (USER, PASSWORD)
    return DICOMwebClient(orthanc.dicomweb_url, session=s).retrieve_instance(study, series, sop)


def orthanc_seg_series(orthanc: Orthanc, study: str) -> list[str]:
    import requests
    from dicomweb_client.api import DICOMwebClient

    s = requests.Session()
    s.auth = (USER, PASSWORD)
    found = DICOMwebClient(orthanc.dicomweb_url, session=s).search_for_series(
        study, search_filters={"Modality": "SEG"})
    return sorted(f["0020000E"]["Value"][0] for f in found)


# ---- the round trip -----------------------------------------------------------------------------------
@pytest.mark.data
def test_round_trip_import_predict_submit_publish_read_back(pacs, trained_project, tmp_path, dicom_dir, capsys):
    import highdicom as hd

    orthanc, (study, series) = pacs["orthanc"], pacs["uids"][SERIES[0]]
    add_dicomweb(trained_project, section(orthanc))
    times = {"upload_32_instances": pacs["upload_s"]}
    with Server(trained_project, env={PW_ENV: PASSWORD}) as srv:
        c = srv.client()
        t0 = time.monotonic()
        case = c._json("POST", "/pacs/import", json_body={"study_uid": study, "series_uid": series,
                                                           "case_id": "pacs_hcrop"})
        times["import_metadata"] = time.monotonic() - t0
        assert case["id"] == "pacs_hcrop" and case["status"] == "unlabeled" and case["source_format"] == "dicomweb"
        assert case["has_dicom"]  # the panel offers DICOM SEG export before the files are fetched
        assert case["shape"] == [35, 51, 32] or sorted(case["shape"]) == sorted([51, 35, 32]), case["shape"]
        assert not (trained_project / "cases" / "pacs_hcrop" / "image.nrrd").exists()  # not fetched yet
        listed = {s["SeriesInstanceUID"]: s for s in c._json("GET", "/pacs/series", params={"study": study})}
        assert listed[series]["case_id"] == "pacs_hcrop" and listed[series]["Modality"] == "MR"

        t0 = time.monotonic()
        job = c.predict("pacs_hcrop")  # the worker fetches the series on first use
        c.wait_job(job["id"], timeout=300)
        times["fetch_and_predict"] = time.monotonic() - t0
        info = c._json("GET", "/cases/pacs_hcrop/pacs")
        assert info["fetched"] and info["series"] == series and info["study"] == study
        times["fetch_alone"] = info["fetch_seconds"]
        image = read_bytes_volume(c.download_image("pacs_hcrop"), tmp_path, "img.nrrd")
        original = read_volume(dicom_dir / SERIES[0])
        assert np.array_equal(image.array, original.array)

        pred = read_bytes_volume(c.download_prediction("pacs_hcrop", "label"), tmp_path, "pred.nrrd")
        arr = pred.array.astype(np.uint8).copy()
        ci, cj, ck = (np.array(arr.shape) // 2).tolist()
        arr[ci - 4:ci, cj - 3:cj + 3, ck - 2:ck + 2] = 1  # the reader's corrections: both classes present
        arr[ci:ci + 4, cj - 3:cj + 3, ck - 2:ck + 2] = 2
        lv = c.submit_label("pacs_hcrop", volume_bytes(pred.with_array(arr), "lab.nrrd", tmp_path),
                            author="Rita Reader", parent_version=0, status="confirmed", filename="lab.nrrd")
        assert lv["version"] == 1 and lv["status"] == "confirmed"

        t0 = time.monotonic()
        pub = c._json("POST", "/cases/pacs_hcrop/pacs/publish")
        times["publish_stow"] = time.monotonic() - t0
        t0 = time.monotonic()
        ds = seg_from_orthanc(orthanc, study, pub["series_uid"], pub["sop_uid"])
        times["read_back_wado"] = time.monotonic() - t0

        seg = hd.seg.Segmentation.from_dataset(ds)
        n_slices = original.shape[2]
        assert int(seg.NumberOfFrames) == 2 * n_slices  # binary, one frame per segment and source slice
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
        assert str(seg.StudyInstanceUID) == study
        assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == n_slices
        classes = c.info()["classes"]
        for item, cls in zip(seg.SegmentSequence, classes, strict=True):
            assert item.SegmentLabel == cls["name"]
            code = item.SegmentedPropertyTypeCodeSequence[0]
            assert (code.CodeValue, code.CodingSchemeDesignator) == (cls["terminology"]["type"]["code"],
                                                                     cls["terminology"]["type"]["scheme"])
            cat = item.SegmentedPropertyCategoryCodeSequence[0]
            assert cat.CodeValue == cls["terminology"]["category"]["code"]
        assert str(seg.ContentCreatorName) == "Reader^Rita"
        assert int(seg.SeriesNumber) == 1001 and seg.ContentLabel == "SYNERGYPL_V1"
        assert "v1" in seg.SeriesDescription and "Rita Reader" in seg.SeriesDescription
        # the pixels: the submitted label, frame by frame on the source slices in the case's order
        sources = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                   for f in sorted((trained_project / "cases" / "pacs_hcrop" / "dicom").glob("*.dcm"))]
        frames = seg.get_pixels_by_source_instance(sources, combine_segments=True)
        assert np.array_equal(np.transpose(frames, (2, 1, 0)), arr)

        exported = pydicom.dcmread(io.BytesIO(c.export("pacs_hcrop", "dicom-seg")))  # the panel's export
        assert exported.ReferencedSeriesSequence[0].SeriesInstanceUID == series

        # a second publish of the same version: refused, naming the SEG on the PACS
        with pytest.raises(ServerError) as err:
            c._json("POST", "/cases/pacs_hcrop/pacs/publish", params={"version": 1})
        assert err.value.status == 409
        assert f"already published as SeriesInstanceUID {pub['series_uid']}" in err.value.message
        assert "force=true" in err.value.message
        assert orthanc_seg_series(orthanc, study) == [pub["series_uid"]]  # no duplicate stored
        again = c._json("POST", "/cases/pacs_hcrop/pacs/publish", params={"version": 1, "force": True})
        assert again["series_uid"] != pub["series_uid"] and again["forced"]
        assert orthanc_seg_series(orthanc, study) == sorted([pub["series_uid"], again["series_uid"]])
        assert [p["series_uid"] for p in c._json("GET", "/cases/pacs_hcrop/pacs")["published"]] == [
            pub["series_uid"], again["series_uid"]]
    times["round_trip_total"] = sum(v for k, v in times.items() if k != "upload_32_instances")
    with capsys.disabled():  # shown in CI's log without -s
        print("\nOrthanc round trip (s): " + json.dumps({k: round(v, 3) for k, v in times.items()}))
    (Path(os.environ.get("SYNERGYPL_PACS_TIMINGS", tmp_path / "pacs-timings.json"))).write_text(json.dumps(times))


# ---- init --from-dicomweb, next case ------------------------------------------------------------------
@pytest.mark.data
def test_init_from_dicomweb_and_next_case_brings_the_series(pacs, tmp_path, dicom_dir):
    orthanc = pacs["orthanc"]
    project = tmp_path / "pacs-project"
    env = {**os.environ, PW_ENV: PASSWORD, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "SynergyPLLib.cli", "init", "--project", str(project),
                          "--from-dicomweb", orthanc.dicomweb_url, "--dicomweb-auth", "basic",
                          "--dicomweb-username", USER, "--dicomweb-secret-env", PW_ENV,
                          "--classes", "Anterior,Posterior", "--name", "Hippocampus"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "2 cases from the PACS" in out, out
    for kind, words in BAD_KINDS.items():  # each broken series skipped with its reason
        assert f"broken {kind}" in out and words in out, (kind, out)
    text = (project / "project.yaml").read_text()
    assert PASSWORD not in text and f"password_env: {PW_ENV}" in text
    link = json.loads((project / "pacs.json").read_text())["cases"]
    assert sorted(v["series"] for v in link.values()) == sorted(pacs["uids"][n][1] for n in SERIES)
    assert not list((project / "cases").glob("*/image.nrrd"))  # nothing fetched at init

    with Server(project, env={PW_ENV: PASSWORD}) as srv:
        c = srv.client()
        nxt = c.next_case(predict=False)["case"]
        assert nxt["id"] in link and nxt["status"] == "unlabeled"
        name = next(n for n in SERIES if pacs["uids"][n][1] == link[nxt["id"]]["series"])
        image = read_bytes_volume(c.download_image(nxt["id"]), tmp_path, "img.nrrd")  # fetched now
        original = read_volume(dicom_dir / name)
        assert np.array_equal(image.array, original.array)
        after = c.get_case(nxt["id"])
        # the geometry computed from the metadata at import is the one ITK reads from the pixels
        for key in ("shape", "spacing", "origin", "direction"):
            assert np.allclose(nxt[key], after[key], atol=1e-4), (key, nxt[key], after[key])
            assert np.allclose(after[key], np.asarray(getattr(original, key), dtype=float).reshape(-1), atol=1e-4)
        assert after["has_dicom"]
        assert c.download_image(nxt["id"]) == image_bytes_again(c, nxt["id"])  # second read: no new fetch
        # a deleted PACS case can be imported again (its link goes with it); an unknown case is a 404
        other = next(cid for cid in link if cid != nxt["id"])
        c.delete_case(other)
        with pytest.raises(ServerError) as err:
            c._json("GET", f"/cases/{other}/pacs")
        assert err.value.status == 404
        again = c._json("POST", "/pacs/import", json_body={"study_uid": link[other]["study"],
                                                           "series_uid": link[other]["series"]})
        assert again["id"] == other and again["status"] == "unlabeled"
        with pytest.raises(ServerError) as err:  # importing it twice is a conflict naming the case
            c._json("POST", "/pacs/import", json_body={"study_uid": link[other]["study"],
                                                       "series_uid": link[other]["series"]})
        assert err.value.status == 409 and other in err.value.message


def image_bytes_again(c, case_id: str) -> bytes:
    return c.download_image(case_id)


# ---- bad input ---------------------------------------------------------------------------------------
@pytest.fixture
def pacs_ws(pacs, tmp_path, pacs_env):
    from SynergyPLLib.service.domain.pacs import init_from_dicomweb

    ws, _ = init_from_dicomweb(tmp_path / "p", section(pacs["orthanc"]), classes=["Anterior", "Posterior"],
                               series_uids=[pacs["uids"][SERIES[0]][1]], quiet=True)
    yield ws
    ws.close()


def _stored(ws) -> tuple:
    from SynergyPLLib.service.domain.cases import list_cases
    from SynergyPLLib.service.domain.pacs import links

    return ([c["id"] for c in list_cases(ws)], sorted(links(ws)["cases"]), sorted(p.name for p in ws.tmp.iterdir()),
            sorted(p.name for p in (ws.root / "cases").iterdir()) if (ws.root / "cases").exists() else [])


@pytest.mark.data
@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_a_series_that_is_not_a_volume_is_refused_and_nothing_is_stored(pacs, pacs_ws, kind):
    from SynergyPLLib.service.domain.errors import Unprocessable
    from SynergyPLLib.service.domain.pacs import import_series

    before = _stored(pacs_ws)
    study, series = pacs["uids"][kind]
    with pytest.raises(Unprocessable) as err:
        import_series(pacs_ws, study, series)
    assert BAD_KINDS[kind] in err.value.detail and series in err.value.detail, err.value.detail
    assert _stored(pacs_ws) == before


@pytest.mark.data
def test_instances_of_several_series_are_not_one_volume(dicom_dir):
    from SynergyPLLib.service.domain.errors import Unprocessable
    from SynergyPLLib.service.domain.pacs import volume_geometry

    one = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted((dicom_dir / SERIES[0]).glob("*.dcm"))]
    two = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted((dicom_dir / SERIES[1]).glob("*.dcm"))]
    assert volume_geometry(one, "one")["shape"][2] == len(one)
    with pytest.raises(Unprocessable) as err:
        volume_geometry(one + two, "mixed")
    assert "belong to 2 series" in err.value.detail


@pytest.mark.data
@pytest.mark.parametrize("iop", [None, [-1, 0, 0, 0, 1, 0]])
def test_geometry_from_metadata_is_the_one_itk_reads(dicom_dir, tmp_path, iop):
    """Non-square pixels (and a flipped row direction, which reverses the slice order): the geometry
    computed from the metadata at import equals the one ITK reads from the files at fetch."""
    from SynergyPLLib.service.domain.pacs import volume_geometry

    out = tmp_path / "series"
    out.mkdir()
    for f in sorted((dicom_dir / SERIES[0]).glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = [0.5, 0.8]
        if iop is not None:
            ds.ImageOrientationPatient = iop
        ds.save_as(out / f.name)
    meta = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(out.glob("*.dcm"))]
    g = volume_geometry(meta, "series")
    vol = read_volume(out)
    assert g["shape"] == list(vol.shape)
    for key in ("spacing", "origin", "direction"):
        assert np.allclose(g[key], np.asarray(getattr(vol, key), dtype=float).reshape(-1), atol=1e-4), key


@pytest.mark.data
def test_unknown_series_is_404(pacs, pacs_ws):
    from SynergyPLLib.service.domain.errors import NotFound
    from SynergyPLLib.service.domain.pacs import import_series

    study, _ = pacs["uids"][SERIES[0]]
    before = _stored(pacs_ws)
    with pytest.raises(NotFound) as err:
        import_series(pacs_ws, study, "1.2.3.4.5.6.7.8.9")
    assert "not on the PACS" in err.value.detail and "1.2.3.4.5.6.7.8.9" in err.value.detail
    assert _stored(pacs_ws) == before


@pytest.mark.data
def test_orthanc_stopped_is_502_the_project_keeps_working_and_recovers(tmp_path, dicom_dir, pacs_env):
    _need_orthanc()
    from SynergyPLLib.service.domain.pacs import init_from_dicomweb

    with Orthanc(tmp_path / "orthanc") as orthanc:
        files = sorted((dicom_dir / SERIES[0]).glob("*.dcm"))
        orthanc.upload(files)
        ws, _ = init_from_dicomweb(tmp_path / "p", section(orthanc), classes=["Anterior", "Posterior"], quiet=True)
        ws.close()
    project = tmp_path / "p"
    cid = next(iter(json.loads((project / "pacs.json").read_text())["cases"]))
    with Server(project, env={PW_ENV: PASSWORD}) as srv:  # Orthanc is down now
        c = srv.client()
        for call in (lambda: c.download_image(cid), lambda: c._json("GET", "/pacs/series"),
                     lambda: c._json("POST", f"/cases/{cid}/pacs/fetch")):
            with pytest.raises(ServerError) as err:
                call()
            assert err.value.status == 502 and "unreachable" in err.value.message, err.value.message
            assert orthanc.dicomweb_url in err.value.message
        assert not (project / "cases" / cid / "image.nrrd").exists()
        assert not [p for p in (project / "tmp").iterdir() if p.name.startswith("pacs-")]  # nothing half-stored
        assert [x["id"] for x in c.list_cases()] == [cid]  # the project keeps working
        assert c.info()["name"]
        orthanc.start()  # back on the same port with the same storage
        try:
            image = read_bytes_volume(c.download_image(cid), tmp_path, "img.nrrd")
            assert np.array_equal(image.array, read_volume(dicom_dir / SERIES[0]).array)
        finally:
            orthanc.stop()


class _Silent:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.data
def test_a_server_that_never_answers_is_a_timeout_504(trained_project):
    silent = _Silent()
    try:
        add_dicomweb(trained_project, {"url": f"http://127.0.0.1:{silent.port}/dicom-web", "timeout": 1})
        with Server(trained_project) as srv:
            c = srv.client()
            t0 = time.monotonic()
            with pytest.raises(ServerError) as err:
                c._json("POST", "/pacs/import", json_body={"study_uid": "1.2.3", "series_uid": "1.2.3.4"})
            took = time.monotonic() - t0
            assert err.value.status == 504, err.value.message
            assert "did not answer in time" in err.value.message and "1 s" in err.value.message
            assert took < 15, took  # not retried five times
            assert len(c.list_cases()) == 10  # the project keeps working
    finally:
        silent.close()


@pytest.mark.data
def test_credentials_wrong_missing_or_written_in_the_file(pacs, tmp_path, monkeypatch):
    from SynergyPLLib.service.domain.errors import Conflict, PacsUnavailable
    from SynergyPLLib.service.domain.pacs import remote_studies
    from SynergyPLLib.service.store.dicomweb import DicomwebConfig, DicomwebError

    class _WS:  # what remote_studies reads of a workspace: its configuration
        def __init__(self, sect):
            self.config = type("C", (), {"dicomweb": sect})()

    orthanc = pacs["orthanc"]
    monkeypatch.setenv(PW_ENV, "wrong")
    with pytest.raises(PacsUnavailable) as err:  # HTTP 502 (api/errors.py)
        remote_studies(_WS(section(orthanc)))
    assert "HTTP 401" in err.value.detail and "credentials" in err.value.detail
    monkeypatch.delenv(PW_ENV)
    with pytest.raises(Conflict) as err:
        remote_studies(_WS(section(orthanc)))
    assert PW_ENV in err.value.detail
    with pytest.raises(DicomwebError) as err:
        DicomwebConfig.from_dict({**section(orthanc), "password": PASSWORD})
    assert "environment variable" in str(err.value) and "password_env" in str(err.value)
    monkeypatch.setenv(PW_ENV, PASSWORD)
    assert any(s["StudyInstanceUID"] == pacs["uids"][SERIES[0]][0] for s in remote_studies(_WS(section(orthanc))))


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every QIDO request with an empty list and records the Authorization header."""

    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _Recorder.seen.append(self.headers.get("Authorization", ""))
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_bearer_token_comes_from_the_named_environment_variable(monkeypatch):
    from SynergyPLLib.service.store.dicomweb import DicomwebConfig, DicomwebStore

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MY_PACS_TOKEN", "tok-123")
        cfg = DicomwebConfig.from_dict({"url": f"http://127.0.0.1:{srv.server_address[1]}/dw", "auth": "bearer",
                                        "token_env": "MY_PACS_TOKEN"})
        assert DicomwebStore(cfg).studies() == []
        assert _Recorder.seen[-1] == "Bearer tok-123"
        assert "tok-123" not in json.dumps(cfg.to_dict())
    finally:
        srv.shutdown()


def test_tls_needs_the_ca_bundle_of_a_self_signed_server(tmp_path):
    """A real TLS server (Python's, with a self-signed certificate for 127.0.0.1: Orthanc 1.10's own
    HTTPS crashes with Debian's OpenSSL 3): trusted with ca_bundle, refused without it."""
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    from SynergyPLLib.service.store.dicomweb import DicomwebConfig, DicomwebError, DicomwebStore

    key, crt = tmp_path / "key.pem", tmp_path / "crt.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(crt), str(key))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{srv.server_address[1]}/dicom-web"
    try:
        assert DicomwebStore(DicomwebConfig.from_dict({"url": url, "ca_bundle": str(crt)})).series() == []
        with pytest.raises(DicomwebError) as err:
            DicomwebStore(DicomwebConfig.from_dict({"url": url})).series()
        assert err.value.kind == "unreachable" and "TLS" in str(err.value) and "ca_bundle" in str(err.value)
        with pytest.raises(DicomwebError) as err:
            DicomwebConfig.from_dict({"url": url, "ca_bundle": str(tmp_path / "none.pem")}).session()
        assert "no such file" in str(err.value)
    finally:
        srv.shutdown()


@pytest.mark.data
def test_training_fetches_labeled_pacs_cases_and_leaves_unfetched_unlabeled_ones_out(pacs, pacs_ws, tmp_path):
    """A label submitted before the series was fetched (checked against the metadata geometry) is
    usable: the training round's case selection fetches that case; an unfetched unlabeled PACS case is
    left out of the unlabeled pool instead of failing the round."""
    from SynergyPLLib.engine.io import write_volume
    from SynergyPLLib.service.domain.cases import image_geometry, list_cases
    from SynergyPLLib.service.domain.labels import add_label_version
    from SynergyPLLib.service.domain.pacs import import_series, is_fetched
    from SynergyPLLib.service.domain.training_data import select_cases
    from SynergyPLLib.service.store.db import Case

    labeled = list_cases(pacs_ws)[0]["id"]
    other = import_series(pacs_ws, *pacs["uids"][SERIES[1]])["id"]
    with pacs_ws.db.Session() as s:
        grid = image_geometry(s.get(Case, labeled))
    arr = np.zeros(grid.shape, np.uint8)
    arr[10:20, 10:20, 5:10] = 1
    path = write_volume(grid.with_array(arr), tmp_path / "lab.nrrd")
    add_label_version(pacs_ws, labeled, path, filename="lab.nrrd", author="Rita Reader", source="human",
                      parent_version=0, status="confirmed")
    assert not is_fetched(pacs_ws, labeled) and not is_fetched(pacs_ws, other)
    chosen = select_cases(pacs_ws)
    assert {e["id"] for e in chosen["labeled"] + chosen["validation"]} == {labeled}
    assert is_fetched(pacs_ws, labeled) and (pacs_ws.root / chosen["labeled"][0]["image"]).exists()
    assert other not in [e["id"] for e in chosen["unlabeled"]] and not is_fetched(pacs_ws, other)
