"""A 512x512x300 CT moves between the panel and the server within 2x of a plain Python process
(issue 7, 2.6), measured against a real ``synergypl serve`` on 127.0.0.1.

**The emulation of Slicer's GUI thread.** In Slicer, PythonQt keeps the GIL on the GUI thread; the GUI
thread gives it up only while it runs Python bytecode, i.e. in the panel's QTimer slot
(``BackgroundRunner.poll`` every ``POLL_INTERVAL_MS``) -- an idle panel runs no other Python. So a worker
thread gets the GIL once per tick, and each blocking call it makes (every socket send/recv, every file
read) costs it a tick. :func:`starved_gui_loop` reproduces exactly that: the main thread sleeps
*inside C while holding the GIL* (``usleep`` called through ``ctypes.PyDLL``, which does not release
the GIL -- like Qt's event loop in C++), then runs the timer slot in Python, where the interpreter
hands the GIL to a waiting thread. :func:`test_the_emulation_starves_an_in_thread_transfer` shows it
bites: the old path (HTTP on the worker thread) is many times slower under it than in a plain process.

The panel path (``panel_client_factory``: the transfer runs in a helper process that the GUI thread
starts and reaps, the worker only waits) is timed from ``submit`` to the ``on_done`` callback on the
GUI thread, as the panel sees it; the plain path is the same client call in a plain process's main
thread. As in the panel, a "Check connection" comes first (it starts the helper ahead), and each timed
transfer starts after a short pause, so that no start-up in the background (the next helper, started
when a transfer ends) overlaps a measurement of either path -- in the panel, predictions and edits lie
between transfers. ``RUNS`` runs of each; the limit is checked on the best run of each path, medians are
reported too; the numbers are printed (``pytest -s``) and written to
``$SYNERGYPL_TRANSFER_REPORT`` when set.
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from SynergyPLModuleLib.background import POLL_INTERVAL_MS, BackgroundCall, BackgroundRunner
from SynergyPLModuleLib.transfers import panel_client_factory

from SynergyPLLib.client import SynergyPLClient, token_for_project

# slow: about two minutes (six 150 MB uploads, which the server stores gzip'ed); the main suite runs it,
# the Python 3.9 / 3.12 runs (make test-pythons) take the quick functional tests of the same path.
pytestmark = [pytest.mark.portable, pytest.mark.data, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CT_SHAPE = (512, 512, 300)
RUNS = int(os.environ.get("SYNERGYPL_TRANSFER_RUNS", "5"))
MAX_RATIO = 2.0
_hold_gil = ctypes.PyDLL(None).usleep  # PyDLL: the call keeps the GIL


def starved_gui_loop(runner: BackgroundRunner, until, period_ms: float = POLL_INTERVAL_MS) -> None:
    """Slicer's idle GUI thread: hold the GIL in C for a timer period, then run the timer slot."""
    hold = ctypes.c_uint(int(period_ms * 1000))
    while not until():
        _hold_gil(hold)
        runner.poll()


def through_panel(runner: BackgroundRunner, work, period_ms: float = POLL_INTERVAL_MS) -> tuple[float, object]:
    """Run ``work(ctx)`` as a panel task under the starved GUI thread; seconds until ``on_done`` ran."""
    outcome = {}
    start = time.perf_counter()
    runner.submit(BackgroundCall("transfer", work, on_done=lambda r: outcome.update(result=r, t=time.perf_counter()),
                       on_error=lambda e: outcome.update(error=e, t=time.perf_counter())))
    deadline = start + 600
    starved_gui_loop(runner, lambda: "t" in outcome or time.perf_counter() > deadline, period_ms)
    if "error" in outcome:
        raise outcome["error"]
    assert "t" in outcome, "the transfer did not finish within 10 minutes"
    return outcome["t"] - start, outcome["result"]


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def _write_ct(python: str, path: Path, shape: tuple) -> Path:
    """A CT-like int16 NRRD (air, a body of soft tissue with noise, a bone ring), written raw by the
    engine's writer (the panel writes what Slicer wrote; the server stores it gzip'ed)."""
    code = f"""
import numpy as np
from SynergyPLLib.engine.io import Volume, write_volume
shape = {tuple(shape)!r}
rng = np.random.default_rng(0)
i, j = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
r = np.sqrt(i ** 2 + (1.3 * j) ** 2)[..., None]
ct = np.where(r < 0.8, 40, -1000) + np.where((r > 0.7) & (r < 0.75), 900, 0)
ct = (ct + rng.normal(0, 15, shape)).astype(np.int16)
write_volume(Volume(ct, spacing=(0.7, 0.7, 1.0)), {str(path)!r}, compress=False)
"""
    subprocess.run([python, "-c", code], cwd=REPO, check=True, timeout=300)
    return path


@pytest.fixture(scope="module")
def served(server_python, small_project, tmp_path_factory):
    from serve_support import quiet_env, wait_healthy
    from SynergyPLModuleLib.local_server import free_port

    port = free_port(0)
    log = tmp_path_factory.mktemp("speed") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([server_python, "-m", "SynergyPLLib.cli", "serve", "--project", str(small_project),
                                 "--port", str(port), "--log-level", "warning"], cwd=REPO, env=quiet_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_healthy(url, proc), log.read_text()[-3000:]
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def token(served, small_project) -> str:
    """The project's token, read from its folder as the panel's "Start local server" does."""
    return token_for_project(small_project)


@pytest.fixture(scope="module")
def ct_file(server_python, tmp_path_factory) -> Path:
    return _write_ct(server_python, tmp_path_factory.mktemp("ct") / "ct.nrrd", CT_SHAPE)


def _report(name: str, numbers: dict) -> None:
    print(f"\n{name}: " + json.dumps(numbers))
    target = os.environ.get("SYNERGYPL_TRANSFER_REPORT")
    if target:
        path = Path(target)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[name] = numbers
        path.write_text(json.dumps(data, indent=1))


def test_a_512x512x300_ct_moves_through_the_panel_within_2x_of_a_plain_process(served, token, ct_file, tmp_path):
    plain = SynergyPLClient(served, token=token, timeout=600)
    runner = BackgroundRunner()
    make_client = panel_client_factory(runner)
    times = {"plain_upload": [], "panel_upload": [], "plain_download": [], "panel_download": []}
    settle = 1.0
    try:
        through_panel(runner, lambda ctx: make_client(served, token, 60).info())  # "Check connection"
        for run in range(RUNS):
            time.sleep(settle)
            t, case = timed(lambda run=run: plain.upload_case(ct_file, case_id=f"plain{run}", timeout=600))
            times["plain_upload"].append(t)
            assert case["shape"] == list(CT_SHAPE)
            time.sleep(settle)
            t, case = through_panel(runner, lambda ctx, run=run: make_client(served, token, 600).upload_case(
                ct_file, case_id=f"panel{run}", timeout=600))
            times["panel_upload"].append(t)
            assert case["id"] == f"panel{run}" and case["shape"] == list(CT_SHAPE)

            time.sleep(settle)
            t, path = timed(lambda run=run: plain.download_image(f"plain{run}", tmp_path / "plain.nrrd"))
            times["plain_download"].append(t)
            time.sleep(settle)
            t, got = through_panel(runner, lambda ctx, run=run: make_client(served, token, 600).download_image(
                f"panel{run}", tmp_path / "panel.nrrd"))
            times["panel_download"].append(t)
            assert Path(got).read_bytes() == Path(path).read_bytes()  # same stored image, byte for byte
    finally:
        runner.shutdown()
    medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
    ratios = {kind: round(medians[f"panel_{kind}"] / medians[f"plain_{kind}"], 2) for kind in ("upload", "download")}
    # asserted on the best run of each path: other work on a shared CI machine only ever adds time, so
    # the minimum is the least noisy estimate of what each path costs (the medians are reported too)
    best = {kind: round(min(times[f"panel_{kind}"]) / min(times[f"plain_{kind}"]), 2) for kind in ("upload", "download")}
    _report("ct_512x512x300", {"file_mb": round(ct_file.stat().st_size / 1e6, 1),
                               "stored_mb": round((tmp_path / "plain.nrrd").stat().st_size / 1e6, 1),
                               "runs": RUNS, "poll_interval_ms": POLL_INTERVAL_MS, "median_s": medians,
                               "ratio": ratios, "ratio_of_best": best, "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
                               "python": sys.version.split()[0]})
    assert best["upload"] <= MAX_RATIO, (best, ratios, times)
    assert best["download"] <= MAX_RATIO, (best, ratios, times)


def test_the_emulation_starves_an_in_thread_transfer(served, token, server_python, tmp_path):
    """The old path (HTTP on the worker thread) under the emulation: a 32 MB CT already fails the limit
    the panel path meets. Best of ``RUNS`` runs of each path, as above (a single run once came out at
    2.96x on a loaded CI machine)."""
    small = _write_ct(server_python, tmp_path / "small.nrrd", (512, 512, 64))
    plain = SynergyPLClient(served, token=token, timeout=600)
    plain.upload_case(small, case_id="small")
    runner = BackgroundRunner()
    times = {"plain": [], "in_thread": [], "panel": []}
    try:
        for _ in range(RUNS):
            time.sleep(0.5)
            times["plain"].append(timed(lambda: plain.download_image("small", tmp_path / "plain.nrrd"))[0])
            times["in_thread"].append(through_panel(runner, lambda ctx: SynergyPLClient(
                served, token=token, timeout=600).download_image("small", tmp_path / "thread.nrrd"))[0])
            time.sleep(0.5)
            times["panel"].append(through_panel(runner, lambda ctx: panel_client_factory(runner)(
                served, token, 600).download_image("small", tmp_path / "panel.nrrd"))[0])
    finally:
        runner.shutdown()
    best = {k: min(v) for k, v in times.items()}
    _report("emulation_check_32mb_download", {"stored_mb": round((tmp_path / "plain.nrrd").stat().st_size / 1e6, 1),
                                              "runs": RUNS, "best_s": {k: round(v, 3) for k, v in best.items()},
                                              "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()}})
    assert best["in_thread"] > MAX_RATIO * best["plain"], times
