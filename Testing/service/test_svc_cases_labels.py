"""Cases and label versions through a real server and the real client."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from svc_support import BACKENDS, Server, case_image, label_file, read_bytes_volume, zip_folder

from SynergyPLLib.client import ConflictError, NotFoundError
from SynergyPLLib.engine.io import read_volume

# each test runs on SQLite and on PostgreSQL (conftest.py: database_url)
pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)


@pytest.fixture
def server(project):
    with Server(project) as srv:
        yield srv


def test_info_describes_project_classes_and_device(server):
    info = server.client().info()
    assert info["name"] == "Hippocampus"
    assert [c["name"] for c in info["classes"]] == ["Anterior", "Posterior"]
    assert [c["value"] for c in info["classes"]] == [1, 2]
    for c in info["classes"]:
        assert len(c["color"]) == 3 and all(0 <= x <= 255 for x in c["color"])
        assert c["terminology"]["category"]["meaning"] == "Anatomical Structure"
        assert c["terminology"]["type"] == {"scheme": "SCT", "code": "5366008", "meaning": "Hippocampus"}
    assert info["models"] == [] and info["active_model"] is None
    assert info["device"].startswith("CPU")
    assert info["cases"] == {"total": 6, "unlabeled": 3, "predicted": 0, "in_review": 0, "confirmed": 3}
    assert info["jobs"]["training"] is None


def test_list_and_get_cases_with_status(server):
    c = server.client()
    cases = c.list_cases()
    assert len(cases) == 6
    assert [x["status"] for x in cases].count("confirmed") == 3
    assert [x["id"] for x in c.list_cases(status="unlabeled")] == [x["id"] for x in cases[3:]]
    one = c.get_case(cases[0]["id"])
    assert one["latest_label"]["version"] == 1 and one["latest_label"]["author"] == "import"
    with pytest.raises(NotFoundError, match="no case 'nope'"):
        c.get_case("nope")


def test_upload_nifti_nrrd_and_dicom_zip_keep_geometry(server, hippocampus_dir, dicom_dir, tmp_path):
    c = server.client()
    src = hippocampus_dir / "imagesTr" / "hippocampus_101.nii.gz"
    if not src.exists():
        src = sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[-1]
    case = c.upload_case(src)
    assert case["id"] == src.name[:-7] and case["source_format"] == "nifti" and case["status"] == "unlabeled"
    back = read_bytes_volume(c.download_image(case["id"]), tmp_path)
    orig = read_volume(src)
    assert orig.same_geometry(back) is None
    np.testing.assert_array_equal(orig.array, back.array)

    # NRRD with a non-trivial geometry, uploaded from bytes under another id
    nrrd = tmp_path / "oblique.nrrd"
    from SynergyPLLib.engine.io import Volume, write_volume

    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    write_volume(Volume(orig.array.astype(np.int16), (0.8, 0.9, 1.2), (10.0, -20.0, 5.5), rot), nrrd)
    case2 = c.upload_case(nrrd.read_bytes(), case_id="oblique-1", filename="oblique.nrrd")
    assert case2["spacing"] == pytest.approx([0.8, 0.9, 1.2]) and case2["origin"] == pytest.approx([10, -20, 5.5])
    assert np.allclose(np.reshape(case2["direction"], (3, 3)), rot)

    series = dicom_dir / "Study1" / "13_HCropVolume"
    case3 = c.upload_case(zip_folder(series), case_id="dicom-crop", filename="series.zip")
    assert case3["source_format"] == "dicom" and case3["has_dicom"] is True
    ref = read_volume(series)
    assert case3["shape"] == list(ref.shape)
    back3 = read_bytes_volume(c.download_image("dicom-crop"), tmp_path, "d.nrrd")
    assert ref.same_geometry(back3) is None
    kept = sorted((server.project / "cases" / "dicom-crop" / "dicom").glob("*.dcm"))
    assert len(kept) == ref.shape[2]
    with pytest.raises(ConflictError, match="already exists"):
        c.upload_case(src)
    assert len(c.list_cases()) == 9


def test_label_versions_chain_and_stale_parent_conflict(server, tmp_path):
    c = server.client()
    cid = c.list_cases(status="confirmed")[0]["id"]
    image = case_image(server.project, cid)
    v1 = read_bytes_volume(c.download_label(cid, 1), tmp_path, "v1.nrrd")
    edited = v1.array.copy()
    edited[0:3, 0:3, 0:3] = 2
    lv2 = c.submit_label(cid, label_file(tmp_path, image, edited), author="alice", parent_version=1)
    assert lv2["version"] == 2 and lv2["parent_version"] == 1 and lv2["status"] == "confirmed"
    assert lv2["voxels"]["2"] == int((edited == 2).sum())

    # bob edited version 1 too: his submit is stale and must name alice's version 2
    with pytest.raises(ConflictError) as err:
        c.submit_label(cid, label_file(tmp_path, image, v1.array, "bob.nrrd"), author="bob", parent_version=1)
    assert err.value.status == 409
    assert "version 2" in err.value.message and "alice" in err.value.message
    assert err.value.latest_version == 2 and err.value.latest_author == "alice"
    with pytest.raises(ConflictError, match="version 2 by alice"):
        c.submit_label(cid, label_file(tmp_path, image, v1.array, "c.nrrd"), author="carol", parent_version=0)

    versions = c.list_labels(cid)
    assert [v["version"] for v in versions] == [1, 2]
    np.testing.assert_array_equal(read_bytes_volume(c.download_label(cid, 2), tmp_path, "r2.nrrd").array, edited)
    np.testing.assert_array_equal(read_bytes_volume(c.download_label(cid, 1), tmp_path, "r1.nrrd").array, v1.array)
    np.testing.assert_array_equal(read_bytes_volume(c.download_label(cid, "latest"), tmp_path, "rl.nrrd").array,
                                  edited)
    with pytest.raises(NotFoundError, match="no label version 7"):
        c.download_label(cid, 7)

    # a model-made label goes to review, which changes the case's status
    lv3 = c.submit_label(cid, label_file(tmp_path, image, edited, "m.nrrd"), author="model", source="model",
                         parent_version=2)
    assert lv3["status"] == "in_review" and c.get_case(cid)["status"] == "in_review"

    # first label of an unlabeled case: parent 0
    uid = c.list_cases(status="unlabeled")[0]["id"]
    uimg = case_image(server.project, uid)
    first = c.submit_label(uid, label_file(tmp_path, uimg, np.zeros(uimg.shape, np.uint8), "u.nrrd"),
                           author="dora", parent_version=0)
    assert first["version"] == 1 and first["parent_version"] is None
    assert c.get_case(uid)["status"] == "confirmed"


def test_delete_case_moves_files_to_trash(server):
    c = server.client()
    cid = c.list_cases()[-1]["id"]
    c.delete_case(cid)
    with pytest.raises(NotFoundError):
        c.get_case(cid)
    assert not (server.project / "cases" / cid).exists()
    assert any(p.name.startswith(cid) for p in (server.project / "trash").iterdir())
    assert len(c.list_cases()) == 5
    with pytest.raises(NotFoundError):
        c.delete_case(cid)


def test_without_model_or_labels_jobs_are_refused_clearly(server):
    c = server.client()
    cid = c.list_cases()[0]["id"]
    with pytest.raises(ConflictError, match="no model yet"):
        c.predict(cid)
    for case in c.list_cases(status="confirmed"):
        c.delete_case(case["id"])
    with pytest.raises(ConflictError, match="no case has a confirmed label"):
        c.train(iterations=2)
    assert c.jobs() == []


def test_openapi_documents_every_route(server):
    with urllib.request.urlopen(server.url + "/openapi.json", timeout=10) as r:
        doc = json.loads(r.read())
    paths = doc["paths"]
    for p in ["/api/info", "/api/cases", "/api/cases/{case_id}", "/api/cases/{case_id}/image",
              "/api/cases/{case_id}/labels", "/api/cases/{case_id}/labels/{version}", "/api/cases/{case_id}/predict",
              "/api/cases/{case_id}/prediction", "/api/cases/{case_id}/prediction/{kind}", "/api/train",
              "/api/train/history", "/api/jobs/{job_id}", "/api/jobs/{job_id}/cancel", "/api/jobs/{job_id}/resume",
              "/api/jobs/{job_id}/events", "/api/next-case", "/api/cases/{case_id}/export", "/api/models",
              "/api/models/{version}/activate"]:
        assert p in paths, p
    assert "409" in paths["/api/cases/{case_id}/labels"]["post"]["responses"]
