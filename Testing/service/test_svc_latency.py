"""Latency of a prediction with heatmap through the API versus calling the engine directly.

Both run with one torch thread on the CPU on the same hippocampus case, after a warm-up (the worker
keeps the model loaded). The API's overhead (queue, worker hand-off, writing three NRRD volumes and the
regions JSON, the HTTP round trips) must stay under a second.
"""

from __future__ import annotations

import statistics
import time

import torch
from svc_support import Server

from SynergyPLLib.engine.inference import Predictor
from SynergyPLLib.engine.io import read_volume

REPEATS = 7


def test_prediction_latency_api_vs_engine(trained_project):
    with Server(trained_project) as srv:
        c = srv.client()
        cid = c.list_cases(status="unlabeled")[0]["id"]
        c.wait_job(c.predict(cid)["id"], timeout=120)  # warm-up: worker start, model load
        api, api_download = [], []
        for _ in range(REPEATS):
            t = time.perf_counter()
            c.wait_job(c.predict(cid)["id"], timeout=60)
            api.append(time.perf_counter() - t)
            c.download_prediction(cid, "heatmap")
            c.prediction(cid)
            api_download.append(time.perf_counter() - t)
        model = trained_project / c.info()["models"][0]["file"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictor = Predictor.from_checkpoint(model, device="cpu")
        image = read_volume(trained_project / "cases" / cid / "image.nrrd")
        predictor.predict(image, heatmap=True)
        engine = []
        for _ in range(REPEATS):
            t = time.perf_counter()
            predictor.predict(image, heatmap=True)
            engine.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    a, ad, e = statistics.median(api), statistics.median(api_download), statistics.median(engine)
    print(f"\nprediction with heatmap, median of {REPEATS} on {cid} {image.shape}: engine {e:.3f}s, API {a:.3f}s "
          f"(+{a - e:.3f}s), API incl. downloading heatmap + regions {ad:.3f}s")
    assert a < e + 1.0, (a, e)
