"""Training rounds, predictions, job queue, progress (SSE and polling), model versions, next case."""

from __future__ import annotations

import time

import numpy as np
import pytest
from svc_support import TINY_ITERATIONS, Server, case_image, read_bytes_volume

from SynergyPLLib.client import ConflictError, NotFoundError


def test_round_progress_events_versions_and_rollback(project):
    with Server(project) as srv:
        c = srv.client()
        job = c.train(iterations=TINY_ITERATIONS)
        assert job["status"] == "queued" and job["kind"] == "train"
        with pytest.raises(ConflictError, match=f"training job {job['id']} is already"):
            c.train(iterations=3)
        events = list(c.events(job["id"], timeout=120))
        kinds = [e["event"] for e in events]
        assert kinds[-1] == "end" and events[-1]["data"]["status"] == "done"
        progress = [e["data"] for e in events if e["event"] == "progress" and "iteration" in e["data"]]
        assert progress, kinds
        assert all({"iteration", "total", "losses", "eta_seconds", "val_dice"} <= set(p) for p in progress)
        assert progress[-1]["total"] == TINY_ITERATIONS
        assert any(p["val_dice"] is not None for p in progress)
        assert any(p["losses"] for p in progress)
        statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
        assert statuses[-1] == "done" and "running" in statuses

        done = c.job(job["id"])
        assert done["status"] == "done" and done["model_version"] == 1
        info = c.info()
        assert info["active_model"] == 1
        m1 = info["models"][0]
        assert m1["version"] == 1 and m1["parent_version"] is None and m1["active"]
        assert 0.0 <= m1["metrics"]["val_dice"] <= 1.0 and m1["metrics"]["iterations"] == TINY_ITERATIONS
        # 3 labeled cases: 20 % -> 1 held out for validation, 2 trained on; 3 unlabeled
        assert (m1["metrics"]["n_labeled"], m1["metrics"]["n_validation"], m1["metrics"]["n_unlabeled"]) == (2, 1, 3)
        assert not set(map(tuple, m1["data"]["validation"])) & set(map(tuple, m1["data"]["labeled"]))

        # second round fine-tunes version 1; polled instead of streamed
        job2 = c.train(iterations=4)
        seen = []
        final = c.wait_job(job2["id"], timeout=120, on_update=lambda j: seen.append(j["status"]))
        assert final["model_version"] == 2 and "done" in seen
        models = {m["version"]: m for m in c.models()}
        assert models[2]["parent_version"] == 1 and models[2]["active"] and not models[1]["active"]
        hist = c.train_history()
        assert [h["model_version"] for h in hist] == [1, 2]
        assert all("val_dice" in h["metrics"] for h in hist)

        # rollback: predictions name the version they used
        assert c.activate_model(1)["active"] is True
        with pytest.raises(NotFoundError, match="no model version 9"):
            c.activate_model(9)
        cid = c.list_cases(status="unlabeled")[0]["id"]
        pj = c.wait_job(c.predict(cid)["id"], timeout=120)
        assert pj["model_version"] == 1 and c.prediction(cid)["model_version"] == 1
        assert c.info()["active_model"] == 1
        # each version has its own model file in its own folder
        assert len(list((srv.project / "models").glob("job-*/model.pt"))) == 2


def test_prediction_outputs_in_case_geometry(trained_project, tmp_path):
    with Server(trained_project) as srv:
        c = srv.client()
        cid = c.list_cases(status="unlabeled")[0]["id"]
        job = c.predict(cid)
        again = c.predict(cid)  # the same queued/running job is reused
        assert again["id"] == job["id"]
        done = c.wait_job(job["id"], timeout=120)
        assert done["model_version"] == 1 and done["result"]["model_version"] == 1
        pred = c.prediction(cid)
        assert pred["model_version"] == 1 and pred["case_id"] == cid and pred["job_id"] == job["id"]
        assert pred["disagreement"] == pytest.approx(sum(r["score"] for r in pred["regions"]), rel=1e-6)
        for r in pred["regions"]:
            assert {"rank", "voxel_count", "bbox_ijk", "centroid_ras", "mean_confidence", "classes", "score"} <= set(r)
        params = pred["region_params"]  # sent with the regions: the panel recomputes with them
        assert params["threshold"] == pred["flag_threshold"] and params["min_voxels"] >= 1
        assert len(pred["regions"]) <= params["max_regions"]
        assert all(r["voxel_count"] >= params["min_voxels"] for r in pred["regions"])
        image = case_image(srv.project, cid)
        label = read_bytes_volume(c.download_prediction(cid, "label"), tmp_path, "l.nrrd")
        heat = read_bytes_volume(c.download_prediction(cid, "heatmap"), tmp_path, "h.nrrd")
        regions = read_bytes_volume(c.download_prediction(cid, "regions"), tmp_path, "r.nrrd")
        for v in (label, heat, regions):
            assert image.same_geometry(v) is None
        assert set(np.unique(label.array)) <= {0, 1, 2}
        assert heat.array.dtype == np.float32 and 0.0 <= heat.array.min() and heat.array.max() <= 1.0
        assert set(np.unique(regions.array)) <= {0, 1, 2, 3}
        flagged = sum(r["voxel_count"] for r in pred["regions"])
        assert flagged == pred["flagged_voxels"] <= heat.array.size
        assert c.get_case(cid)["status"] == "predicted"
        saved = c.download_prediction(cid, "heatmap", tmp_path / "sub" / "heat.nrrd")
        assert saved.read_bytes() == c.download_prediction(cid, "heatmap")
        with pytest.raises(NotFoundError, match="no prediction yet"):
            c.prediction(c.list_cases(status="unlabeled")[1]["id"])


def test_predictions_queue_and_next_case_ranking(trained_project):
    with Server(trained_project) as srv:
        c = srv.client()
        waiting = [x["id"] for x in c.list_cases() if x["status"] == "unlabeled"]
        first = c.next_case()  # nothing predicted yet: queues predictions for the waiting cases
        assert first["score"] is None and "no case has a prediction yet" in first["reason"]
        assert len(first["queued_predictions"]) == len(waiting)
        jobs = [c.wait_job(j, timeout=180) for j in first["queued_predictions"]]
        # one prediction worker: the queue is served in order, one at a time
        for a, b in zip(jobs, jobs[1:], strict=False):
            assert a["id"] < b["id"] and a["finished_at"] <= b["started_at"]
        scores = {cid: c.prediction(cid)["disagreement"] for cid in waiting}
        nxt = c.next_case(predict=False)
        assert nxt["case"]["id"] == max(scores, key=scores.get)
        assert nxt["score"] == pytest.approx(max(scores.values()))
        assert nxt["candidates"] == len(waiting) and nxt["queued_predictions"] == []
        assert c.info()["cases"]["predicted"] == len(waiting)


def test_cancel_training_and_queued_prediction(trained_project):
    with Server(trained_project) as srv:
        c = srv.client()
        job = c.train(iterations=5000)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            j = c.job(job["id"], wait=5, since=c.job(job["id"])["updated_at"])
            if j["status"] == "running" and (j["progress"].get("iteration") or 0) >= 2:
                break
        assert j["status"] == "running"
        # predictions run alongside a training round, with the active model
        cid = c.list_cases(status="unlabeled")[0]["id"]
        p = c.wait_job(c.predict(cid)["id"], timeout=120)
        assert p["model_version"] == 1
        # a queued prediction is cancelled at once
        other = c.list_cases(status="unlabeled")[1]["id"]
        q1, q2 = c.predict(other), c.predict(c.list_cases(status="unlabeled")[2]["id"])
        cancelled = c.cancel_job(q2["id"])
        assert cancelled["status"] in ("cancelled", "running") or cancelled["cancel_requested"]
        c.wait_job(q1["id"], timeout=120)
        assert c.wait_job(q2["id"], timeout=60, check=False)["status"] in ("cancelled", "done")

        before_cancel = c.job(job["id"])
        assert before_cancel["status"] == "running", before_cancel  # the round must still be running here
        c.cancel_job(job["id"])
        end = c.wait_job(job["id"], timeout=60, check=False)
        assert end["status"] == "cancelled" and end["model_version"] is None
        assert "cancelled at iteration" in end["error"]
        assert [m["version"] for m in c.models()] == [1] and c.info()["active_model"] == 1
        with pytest.raises(ConflictError, match="already cancelled"):
            c.cancel_job(job["id"])
        with pytest.raises(ConflictError, match="only interrupted or failed"):
            c.resume_job(job["id"])
        # and a new round may start
        assert c.train(iterations=2)["status"] == "queued"
