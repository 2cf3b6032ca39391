"""A web page cannot drive a SynergyPL server on 127.0.0.1 (issue 8, item 3).

The reproductions of the issue, sent with http.client as a browser sends them: cross-origin "simple"
requests (``text/plain`` and multipart bodies need no CORS preflight) with ``Origin:
http://evil.example`` or ``Sec-Fetch-Site: cross-site``, and a DNS-rebinding page's ``Host:
evil.example:8765``. The server runs with ``--loopback-without-token`` -- the old default, the weakest
setting there is -- so that it is the Origin and Host checks alone that refuse them; a second server in
the default mode (token always) refuses them too. Each refusal must leave the project unchanged.
"""

from __future__ import annotations

import json

import pytest
from svc_support import Server, form_body, label_file, make_project, raw_request

from SynergyPLLib.engine.io import read_volume

pytestmark = pytest.mark.data

EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, hippocampus_dir):
    """A server that lets loopback clients in without the token (and knows the name team.example)."""
    project = make_project(tmp_path_factory.mktemp("browser") / "project", hippocampus_dir, cases=4, labeled=2)
    with Server(project, args=("--loopback-without-token", "--allowed-host", "team.example")) as srv:
        yield srv


@pytest.fixture(scope="module")
def default_server(tmp_path_factory, hippocampus_dir):
    project = make_project(tmp_path_factory.mktemp("browser-default") / "project", hippocampus_dir, cases=3,
                           labeled=2)
    with Server(project) as srv:
        yield srv


def _label_upload(srv, tmp_path, author="attacker") -> tuple[bytes, str, str, int]:
    """A valid label for the first case as a multipart form: (body, content type, case id, latest version)."""
    c = srv.client()
    case = c.list_cases()[0]
    image = read_volume(srv.project / "cases" / case["id"] / "image.nrrd")
    data = label_file(tmp_path, image, (image.array > image.array.mean()).astype("uint8")).read_bytes()
    latest = c.list_labels(case["id"])[-1]["version"]
    body, ctype = form_body({"author": author, "parent_version": latest}, {"file": ("label.nrrd", data)})
    return body, ctype, case["id"], latest


def _refused(status: int, out: dict, *words: str) -> str:
    assert status == 403, (status, out)
    detail = out["detail"]
    for w in words:
        assert w in detail, detail
    return detail


def test_cross_origin_simple_requests_are_refused(open_server, tmp_path):
    srv, c = open_server, open_server.client()
    port, shown = srv.port, {}
    jobs_before, cases_before = c.jobs(), [x["id"] for x in c.list_cases()]

    # start training: POST /api/train, text/plain (no preflight)
    status, out = raw_request(port, "POST", "/api/train", b'{"iterations": 2}',
                              {"Origin": EVIL, "Content-Type": "text/plain"})
    shown["train (Origin, text/plain)"] = (status, _refused(status, out, "cross-site request refused", EVIL))
    status, out = raw_request(port, "POST", "/api/train", b"{}",
                              {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"})
    shown["train (Sec-Fetch-Site only)"] = (status, _refused(status, out, "Sec-Fetch-Site: cross-site"))
    assert c.jobs() == jobs_before

    # create a case: multipart form from another site
    image = (srv.project / "cases" / cases_before[0] / "image.nrrd").read_bytes()
    body, ctype = form_body({"case_id": "planted"}, {"file": ("x.nrrd", image)})
    status, out = raw_request(port, "POST", "/api/cases", body, {"Origin": EVIL, "Content-Type": ctype})
    shown["create case (multipart)"] = (status, _refused(status, out, "cross-site request refused"))
    assert [x["id"] for x in c.list_cases()] == cases_before

    # submit a label version as "attacker", multipart and text/plain
    body, ctype, cid, latest = _label_upload(srv, tmp_path)
    status, out = raw_request(port, "POST", f"/api/cases/{cid}/labels", body, {"Origin": EVIL, "Content-Type": ctype})
    shown["submit label (multipart)"] = (status, _refused(status, out, "cross-site request refused"))
    status, out = raw_request(port, "POST", f"/api/cases/{cid}/labels", body,
                              {"Origin": "null", "Content-Type": "text/plain"})
    shown["submit label (Origin null, text/plain)"] = (status, _refused(status, out, "cross-site request refused"))
    assert c.list_labels(cid)[-1]["version"] == latest
    assert all(v["author"] != "attacker" for v in c.list_labels(cid))

    # delete a case
    status, out = raw_request(port, "DELETE", f"/api/cases/{cid}", None, {"Origin": EVIL})
    shown["delete case"] = (status, _refused(status, out, "cross-site request refused"))
    assert c.get_case(cid)["id"] == cid

    # reading the API from another site's script is refused as well
    status, out = raw_request(port, "GET", "/api/cases", None, {"Origin": EVIL})
    shown["GET cases (Origin)"] = (status, _refused(status, out, "cross-site request refused"))

    # cancel a running job
    job = c.train(iterations=100000)
    status, out = raw_request(port, "POST", f"/api/jobs/{job['id']}/cancel", b"",
                              {"Origin": EVIL, "Content-Type": "text/plain"})
    shown["cancel job"] = (status, _refused(status, out, "cross-site request refused"))
    assert c.job(job["id"])["cancel_requested"] is False
    assert c.cancel_job(job["id"])["cancel_requested"] or c.job(job["id"])["status"] == "cancelled"
    c.wait_job(job["id"], timeout=120, check=False)

    # control: the very same requests without the browser's headers are served (this server lets
    # loopback in without the token), so it is the Origin check that refused them above
    status, out = raw_request(port, "POST", f"/api/cases/{cid}/labels", body, {"Content-Type": ctype})
    assert status == 201 and out["author"] == "attacker", out
    body, ctype = form_body({"case_id": "planted"}, {"file": ("x.nrrd", image)})
    status, out = raw_request(port, "POST", "/api/cases", body, {"Content-Type": ctype})
    assert status == 201 and out["id"] == "planted", out
    print(json.dumps(shown, indent=1))


def test_dns_rebinding_host_is_refused_for_every_method(open_server):
    srv, port = open_server, open_server.port
    for method, path in (("GET", "/api/cases"), ("GET", "/api/info"), ("GET", "/api/health"), ("GET", "/docs"),
                         ("POST", "/api/train")):
        status, out = raw_request(port, method, path, b"{}" if method == "POST" else None,
                                  {"Host": f"evil.example:{port}", "Content-Type": "text/plain"})
        _refused(status, out, "Host 'evil.example:", "DNS rebinding", "--allowed-host")
    # even with the right token: a rebinding page does not have it, but the rule does not depend on it
    status, out = raw_request(port, "GET", "/api/cases", None, {"Host": "evil.example", **srv.auth_headers()})
    assert status == 403
    assert srv.client().jobs(kind="train", status="queued") == []


def test_own_names_same_origin_and_plain_clients_pass(open_server):
    port = open_server.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}", "team.example",
                 f"team.example:{port}", "10.1.2.3:8765"):
        status, out = raw_request(port, "GET", "/api/cases", None, {"Host": host})
        assert status == 200, (host, status, out)
    # a same-origin page (the /docs UI) may POST; the Origin matches the Host
    status, out = raw_request(port, "POST", "/api/models/99/activate", b"",
                              {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"})
    assert status == 404, out  # reached the route
    status, out = raw_request(port, "POST", "/api/models/99/activate", b"",
                              {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"})
    assert status == 404, out
    # another port on localhost is another origin
    status, out = raw_request(port, "POST", "/api/models/99/activate", b"", {"Origin": "http://localhost:3000"})
    assert status == 403, out
    status, out = raw_request(port, "GET", "/api/next-case?predict=true", None, {"Sec-Fetch-Site": "same-site"})
    assert status == 403 and "Sec-Fetch-Site: same-site" in out["detail"], out
    # a link clicked on another site may open the documentation page
    status, _ = raw_request(port, "GET", "/docs", None, {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert status == 200


def test_default_server_refuses_the_same_requests(default_server, tmp_path):
    srv, port = default_server, default_server.port
    status, out = raw_request(port, "POST", "/api/train", b"{}", {"Origin": EVIL, "Content-Type": "text/plain"})
    _refused(status, out, "cross-site request refused")
    status, out = raw_request(port, "GET", "/api/cases", None, {"Host": f"evil.example:{port}"})
    _refused(status, out, "DNS rebinding")
    # without Origin, without token: the token is what a page (or another local user) lacks
    status, out = raw_request(port, "POST", "/api/train", b"{}", {"Content-Type": "text/plain"})
    assert status == 401 and "needs a token" in out["detail"], out
    body, ctype, cid, latest = _label_upload(srv, tmp_path)
    status, out = raw_request(port, "POST", f"/api/cases/{cid}/labels", body, {"Content-Type": ctype})
    assert status == 401, out
    assert srv.client().list_labels(cid)[-1]["version"] == latest
    assert srv.client().jobs() == []
