"""Run many independent harness jobs (benchmark or ablation runs) one by one or in worker processes,
with one progress bar over the jobs."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed


def run_jobs(fn: Callable[..., dict], calls: list[dict], *, workers: int = 1, desc: str = "runs",
             describe: Callable[[dict], str] | None = None, progress: bool = True,
             serial_extra: dict | None = None) -> list[dict]:
    """``fn(**call)`` for every call; returns the results in the order they finished.

    ``workers > 1`` runs them in that many spawned processes (``fn`` and the calls must pickle);
    otherwise in this process, each call also getting ``serial_extra`` (e.g. an iteration bar that only
    makes sense in the foreground). ``describe(result)`` is shown after the bar as the last result.
    """
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(calls), desc=desc, unit="run")
    done: list[dict] = []

    def finished(res: dict) -> None:
        done.append(res)
        if bar:
            bar.update(1)
            if describe:
                bar.set_postfix(last=describe(res))

    try:
        if workers <= 1:
            for call in calls:
                finished(fn(**call, **(serial_extra or {})))
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                for f in as_completed([pool.submit(fn, **call) for call in calls]):
                    finished(f.result())
    finally:
        if bar:
            bar.close()
    return done
