"""Run benchmark jobs one at a time or side by side, with the CPU split between them.

Each job is a whole ``agent run`` (seconds to minutes of small-matrix compute). Side by side, each
job process gets ``cpu_count // jobs`` OpenMP threads (at least one) unless ``OMP_NUM_THREADS`` is
already set: torch's default (every core per process) oversubscribes the machine, which on the
2-core development machine made every round 3–5× slower.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Sequence


def threads_per_job(jobs: int) -> int:
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def _call(fn: Callable, threads: int, args: tuple):
    import torch

    torch.set_num_threads(threads)
    return fn(*args)


def run_jobs(fn: Callable, calls: Sequence[tuple], jobs: int, label: Callable[[tuple], str]) -> list:
    """``[fn(*args) for args in calls]``, ``jobs`` at a time, in order; prints a line per finished job."""
    t0 = time.perf_counter()
    if jobs <= 1:  # in this process, with its own thread settings
        out = []
        for args in calls:
            print(f"[{time.perf_counter() - t0:6.0f}s] {label(args)} …", flush=True)
            out.append(fn(*args))
        return out
    threads = threads_per_job(jobs)
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # spawned workers inherit it before torch loads
    results: list = [None] * len(calls)
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_call, fn, threads, args): k for k, args in enumerate(calls)}
            for done, fut in enumerate(as_completed(futures), 1):
                k = futures[fut]
                results[k] = fut.result()
                print(f"[{time.perf_counter() - t0:6.0f}s] {done}/{len(calls)} done: {label(calls[k])}", flush=True)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return results
