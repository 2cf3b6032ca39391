"""Numbers no column can hold, and references to things that do not exist: a 4xx naming the parameter,
and nothing stored (issue 8, item 4).

Each request goes over real HTTP to a real server; after all of them the project's files, its label
versions and its tmp/ folder are exactly what they were.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from svc_support import Server, case_image, label_file, make_project, project_files

BIG = 2**63  # the smallest integer a 64-bit column cannot hold
CID = "hippocampus_001"


@pytest.fixture(scope="module")
def srv(tmp_path_factory, hippocampus_dir):
    root = tmp_path_factory.mktemp("bounds")
    project = make_project(root / "project", hippocampus_dir, cases=2, labeled=1)
    with Server(project) as s:
        yield s


def call(srv, method: str, path: str, *, query: dict | None = None, body: dict | None = None,
         form: dict | None = None, file: bytes | None = None) -> tuple[int, dict]:
    """One request; returns (status, JSON body)."""
    url = srv.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    headers, data = dict(srv.auth_headers()), None  # the project token, as every client sends it
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    elif form is not None:
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                 for k, v in form.items()]
        if file is not None:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="l.nrrd"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + file + b"\r\n")
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def stored(srv) -> tuple:
    c = srv.client()
    return project_files(srv.project), [(v["version"], v["sha256"], v["model_version"]) for v in c.list_labels(CID)]


@pytest.mark.data
@pytest.mark.parametrize("method,path,query,body,status,names", [
    ("GET", f"/api/jobs/{BIG}", None, None, 422, "job_id"),
    ("GET", "/api/jobs/-7", None, None, 422, "job_id"),
    ("GET", f"/api/jobs/{2**31}", None, None, 422, "job_id"),
    ("POST", f"/api/jobs/{BIG}/cancel", None, None, 422, "job_id"),
    ("POST", f"/api/jobs/{BIG}/resume", None, None, 422, "job_id"),
    ("GET", f"/api/jobs/{BIG}/events", None, None, 422, "job_id"),
    ("GET", "/api/jobs/1", {"wait": "1e308"}, None, 422, "wait"),
    ("GET", "/api/jobs/1", {"wait": "nan"}, None, 422, "wait"),
    ("GET", "/api/jobs", {"limit": str(BIG)}, None, 422, "limit"),
    ("GET", "/api/jobs", {"kind": "magic"}, None, 422, "kind"),
    ("POST", f"/api/models/{BIG}/activate", None, None, 422, "version"),
    ("POST", "/api/models/0/activate", None, None, 422, "version"),
    ("POST", "/api/models/999/activate", None, None, 404, "no model version 999"),
    ("GET", f"/api/cases/{CID}/labels/{BIG}", None, None, 400, "label version must be a number"),
    ("GET", f"/api/cases/{CID}/labels/%C2%B2", None, None, 400, "label version must be a number"),  # '²' passes str.isdigit()
    ("GET", f"/api/cases/{CID}/labels/9999999999", None, None, 404, "no label version 9999999999"),
    ("GET", f"/api/cases/{CID}/export", {"version": str(BIG)}, None, 422, "version"),
    ("GET", f"/api/cases/{CID}/export", {"version": "-7"}, None, 422, "version"),
    ("GET", f"/api/cases/{CID}/export", {"format": "exe"}, None, 400, "unknown export format"),
    ("POST", f"/api/cases/{CID}/predict", None, {"model_version": BIG}, 422, "model_version"),
    ("POST", f"/api/cases/{CID}/predict", None, {"model_version": -7}, 422, "model_version"),
    ("POST", f"/api/cases/{CID}/predict", None, {"model_version": 999}, 404, "no model version 999"),
    ("GET", f"/api/cases/{CID}/prediction/secrets", None, None, 422, "kind"),
    ("GET", "/api/next-case", {"max_queue": str(BIG)}, None, 422, "max_queue"),
    ("POST", "/api/train", None, {"iterations": BIG}, 422, "iterations"),
    ("POST", "/api/train", None, {"method": "magic"}, 422, "method"),
    ("GET", "/api/cases", {"status": "lost"}, None, 422, "status"),
])
def test_out_of_range_numbers_and_unknown_references_are_4xx(srv, method, path, query, body, status, names):
    before = stored(srv)
    got, out = call(srv, method, path, query=query, body=body)
    assert got == status, out
    assert names in out["detail"], out
    assert stored(srv) == before


@pytest.mark.data
@pytest.mark.parametrize("fields,status,names", [
    ({"model_version": str(BIG)}, 422, "model_version"),
    ({"model_version": "-7"}, 422, "model_version"),
    ({"model_version": "999"}, 404, "model_version 999 names no model"),
    ({"parent_version": str(BIG)}, 422, "parent_version"),
    ({"parent_version": "-1"}, 422, "parent_version"),
])
def test_label_version_with_bad_numbers_stores_nothing(srv, tmp_path, fields, status, names):
    """The label file is valid; only the numbers are wrong. No version, no file (no orphan) is left."""
    before = stored(srv)
    image = case_image(srv.project, CID)
    data = label_file(tmp_path, image, (image.array > image.array.mean()).astype("uint8")).read_bytes()
    form = {"author": "fuzz", "source": "model", "parent_version": "1", **fields}
    got, out = call(srv, "POST", f"/api/cases/{CID}/labels", form=form, file=data)
    assert got == status, out
    assert names in out["detail"], out
    assert stored(srv) == before
    assert list((srv.project / "tmp").iterdir()) == []
