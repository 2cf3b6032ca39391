"""Leftovers and stalls, against real ``synergypl serve`` processes:

- files a ``kill -9`` left unregistered (a label file, a prediction folder) are removed at the next
  start, and every registered file is kept byte for byte;
- 50 clients long-polling (and 3 streaming events of) a stalled job do not slow ``GET /api/health``;
- a chunked upload (no Content-Length) is refused when it crosses the limit while it streams: the disk
  never holds more than the limit;
- malformed ``Content-Length`` values get a JSON 400.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from svc_support import Server, case_image, label_file, wait_gone

from SynergyPLLib.client import ConnectionError
from SynergyPLLib.engine.io import read_volume

pytestmark = pytest.mark.data


def registered_files(c, project: Path) -> dict[str, str]:
    """sha256 of every file a database row points at: label versions and prediction outputs."""
    out = {}
    for case in c.list_cases():
        for v in c.list_labels(case["id"]):
            out[f"{case['id']}/label-v{v['version']}"] = v["sha256"]
        if case["prediction"]:
            folder = project / "cases" / case["id"] / "predictions" / f"job-{case['prediction']['job_id']:06d}"
            for f in sorted(folder.iterdir()):
                out[str(f.relative_to(project))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def test_kill9_leftovers_are_removed_at_start_and_registered_files_kept(trained_project, tmp_path):
    project = trained_project
    labeled = "hippocampus_001"
    image = case_image(project, labeled)
    gt = read_volume(sorted((project / "cases" / labeled / "labels").glob("v0001-*.nrrd"))[0]).array
    with Server(project) as srv:  # one registered prediction to keep
        c = srv.client()
        waiting = [x["id"] for x in c.list_cases(status="unlabeled")]
        assert c.wait_job(c.predict(waiting[0])["id"], timeout=180)["status"] == "done"
        kept = registered_files(c, project)

    # 1. the service is killed between publishing a label file and registering it
    srv = Server(project, env={"SYNERGYPL_FAULTS": "label-file-written"}).start()
    edited = gt.copy()
    edited[:3, :3, :3] = 2
    with pytest.raises(ConnectionError):
        srv.client().submit_label(labeled, label_file(tmp_path, image, edited), author="a", parent_version=1)
    assert wait_gone(srv.proc.pid)
    labels = project / "cases" / labeled / "labels"
    orphan_labels = [f for f in labels.glob("*.nrrd") if not f.name.startswith("v0001-")]
    assert len(orphan_labels) == 1

    # 2. a prediction worker is killed between publishing its folder and registering it; then kill -9
    srv = Server(project, env={"SYNERGYPL_FAULTS": "prediction-files-written"}).start()
    job = srv.client().wait_job(srv.client().predict(waiting[1])["id"], timeout=180, check=False)
    assert job["status"] == "interrupted" and "killed by signal 9" in job["error"]
    orphan_pred = project / "cases" / waiting[1] / "predictions" / f"job-{job['id']:06d}"
    assert (orphan_pred / "heatmap.nrrd").exists()
    srv.kill9()

    # 3. the service is killed between publishing a new case's folder and registering the case
    srv = Server(project, env={"SYNERGYPL_FAULTS": "case-files-written"}).start()
    with pytest.raises(ConnectionError):
        srv.client().upload_case(project / "cases" / labeled / "image.nrrd", case_id="half_added")
    assert wait_gone(srv.proc.pid)
    assert (project / "cases" / "half_added" / "image.nrrd").exists()

    with Server(project) as srv:
        c = srv.client()
        assert not (project / "cases" / "half_added").exists()  # moved to trash/, not deleted
        assert [p.name.startswith("half_added-unregistered") for p in (project / "trash").iterdir()] == [True]
        assert "half_added" not in [x["id"] for x in c.list_cases()]
        assert not orphan_pred.exists() and not any(f.exists() for f in orphan_labels)
        assert [f.name for f in labels.glob("*.nrrd")] == [f.name for f in labels.glob("v0001-*.nrrd")]
        assert registered_files(c, project) == kept  # nothing registered was touched
        assert [v["version"] for v in c.list_labels(labeled)] == [1]
        # and the store works on: the same submission now becomes version 2
        lv = c.submit_label(labeled, label_file(tmp_path, image, edited), author="a", parent_version=1)
        assert lv["version"] == 2
    assert "removed what a crash left unregistered" in srv.log()


def _running_worker(c, job_id: int, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = c.job(job_id)
        if j["status"] == "running" and j["worker_pid"] and (j["progress"].get("iteration") or 0) >= 1:
            return j
        assert j["status"] in ("queued", "running"), j
        time.sleep(0.2)
    raise AssertionError("training did not start")


def test_many_long_polls_do_not_starve_the_api(project):
    with Server(project) as srv:
        c = srv.client()
        job = c.train(iterations=100000)
        running = _running_worker(c, job["id"])
        os.kill(running["worker_pid"], signal.SIGSTOP)  # a stalled job: no change while clients wait
        try:
            since = c.job(job["id"])["updated_at"]
            done: list[float] = []
            start = time.monotonic()

            def long_poll():
                srv.client(timeout=60).job(job["id"], wait=20, since=since)
                done.append(time.monotonic() - start)

            def stream():
                for _ in srv.client(timeout=60).events(job["id"], timeout=20):
                    pass

            waiters = [threading.Thread(target=long_poll, daemon=True) for _ in range(50)]
            waiters += [threading.Thread(target=stream, daemon=True) for _ in range(3)]
            for t in waiters:
                t.start()
            time.sleep(2.0)  # all of them are waiting now
            times = []
            for _ in range(5):
                t0 = time.monotonic()
                assert c.health()
                times.append(time.monotonic() - t0)
                c.list_cases()
            assert max(times) < 1.0, times
            assert done == [], "the long-polls must still be waiting while health is measured"
            print(f"health with 50 long-polls + 3 event streams waiting: max {max(times) * 1000:.0f} ms")
        finally:
            os.kill(running["worker_pid"], signal.SIGCONT)
        c.cancel_job(job["id"])
        assert c.wait_job(job["id"], timeout=60, check=False)["status"] == "cancelled"
        for t in waiters:
            t.join(30)
        assert len(done) == 50  # each returned once the job changed


# ---- request bodies -----------------------------------------------------------------------------

def _auth(srv) -> dict:
    """The token header a local client sends, where the server asks for one (per-project token)."""
    return getattr(srv, "auth_headers", dict)()


def _stored_bytes(pid: int, project: Path) -> int:
    """Bytes on disk that the upload may have caused: files under the project folder plus the files
    the server process holds open (its spooled upload parts are unnamed temporary files)."""
    total, seen = 0, set()
    for p in list(project.rglob("*")):
        try:
            if p.is_file():
                st = p.stat()
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
        except OSError:  # removed while walking
            pass
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            st = os.stat(fd)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def test_chunked_upload_is_refused_while_streaming(project):
    with Server(project, args=("--max-upload-mb", "20")) as srv:
        peak, stop = [0], threading.Event()
        base = _stored_bytes(srv.proc.pid, project)

        def watch():
            while not stop.is_set():
                peak[0] = max(peak[0], _stored_bytes(srv.proc.pid, project) - base)
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
        auth = "".join(f"{k}: {v}\r\n" for k, v in _auth(srv).items()).encode()
        sock.sendall(b"POST /api/cases HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n" + auth
                     + b"Content-Type: multipart/form-data; boundary=BB\r\n\r\n")
        part = (b'--BB\r\nContent-Disposition: form-data; name="file"; filename="big.nrrd"\r\n'
                b"Content-Type: application/octet-stream\r\n\r\n")
        sock.sendall(f"{len(part):X}\r\n".encode() + part + b"\r\n")
        chunk = np.random.default_rng(0).bytes(1 << 20)
        sent = 0
        try:
            for _ in range(300):  # 300 MB against a 20 MB limit
                sock.sendall(f"{len(chunk):X}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
        finally:
            sock.close()
        time.sleep(0.3)
        stop.set()
        watcher.join()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), reply[:300]
        detail = json.loads(body)["detail"]
        assert "larger than the limit of 20 MB" in detail and "without Content-Length" in detail
        print(f"chunked upload: {sent / 2**20:.0f} MB sent, {detail!r}; peak disk growth "
              f"{peak[0] / 2**20:.1f} MB")
        assert peak[0] < 22 * 2**20, f"the disk grew by {peak[0] / 2**20:.1f} MB"
        assert _stored_bytes(srv.proc.pid, project) - base < 2**20  # and nothing stays
        assert list((project / "tmp").iterdir()) == []
        assert srv.client().health()


def test_malformed_content_length_gets_json_400(project):
    with Server(project) as srv:
        for value in ("-1", "abc", "1e3", "10, 20", ""):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            conn.putrequest("POST", "/api/cases", skip_accept_encoding=True)
            conn.putheader("Content-Length", value)
            conn.putheader("Content-Type", "multipart/form-data; boundary=x")
            for k, v in _auth(srv).items():
                conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            assert resp.status == 400 and resp.getheader("content-type") == "application/json", (value, body)
            assert "Content-Length" in json.loads(body)["detail"], (value, body)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.putrequest("POST", "/api/cases", skip_accept_encoding=True)
        conn.putheader("Content-Length", str(10**12))
        for k, v in _auth(srv).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413 and "larger than the limit" in json.loads(resp.read())["detail"]
        conn.close()
        assert srv.client().health()
