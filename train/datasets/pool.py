"""A process pool for dataset building (rendering phantom cases, decoding files): numpy and
OpenCV only, no torch, results in job order."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import TypeVar

import cv2

Progress = Callable[[int, int], None]
J = TypeVar("J")
R = TypeVar("R")
# fork where there is one: no re-import of the caller's main module (scripts without a
# ``__main__`` guard work) and no torch import per worker; workers use only numpy/OpenCV.
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"


def map_pool(fn: Callable[[J], R], jobs: Sequence[J], workers: int,
             progress: Progress | None = None) -> list[R]:
    """``[fn(job) for job in jobs]`` on ``workers`` processes (in this one when 1);
    ``progress(done, total)`` after each job. ``fn`` must be a module-level function."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list[R] = []
    total = len(jobs)
    if workers == 1:
        for job in jobs:
            results.append(fn(job))
            if progress is not None:
                progress(len(results), total)
        return results
    # one OpenCV thread per worker (the pool already fills the cores); set in the parent
    # around the fork: cv2.setNumThreads in a forked child deadlocks
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with mp.get_context(START_METHOD).Pool(workers) as pool:
            for res in pool.imap(fn, jobs, chunksize=1):
                results.append(res)
                if progress is not None:
                    progress(len(results), total)
    finally:
        cv2.setNumThreads(cv_threads)
    return results


__all__ = ["START_METHOD", "Progress", "map_pool"]
