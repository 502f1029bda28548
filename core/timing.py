"""Interleaved timing: several ways to run one thing (engines, graphs, programs) timed in
short turns, the order rotating each round, so that a background load on a shared machine
falls on all of them alike. The engine comparison, the INT8 check at export and the torch
program bench all time with this one function; they only say what each call is."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

Call = Callable[[], object]


def interleaved_ms(runs: Mapping[str, Sequence[Call]], calls: int, *, chunk: int = 10,
                   warmup: int = 10, settle: int = 1,
                   pause_s: float = 0.0) -> dict[str, np.ndarray]:
    """Latency (ms) of ``calls`` timed calls of each named run. Each name maps to one or more
    copies (say, identical sessions whose buffers landed differently); round ``r`` uses copy
    ``r % len(copies)``. Per round and name: a pause of ``pause_s`` (spinning threads of the
    previous run park), ``settle`` untimed calls (the switch's cache misses are not this
    run's), then ``chunk`` timed calls. ``warmup`` untimed calls of each first copy before.
    Garbage collection is off while timing."""
    if calls < 1 or chunk < 1 or min(warmup, settle) < 0 or pause_s < 0:
        raise ValueError(f"need calls, chunk >= 1 and warmup, settle, pause_s >= 0; got "
                         f"calls={calls}, chunk={chunk}, warmup={warmup}, settle={settle}, "
                         f"pause_s={pause_s}")
    if not runs or any(not copies for copies in runs.values()):
        raise ValueError("every run needs at least one callable")
    names = list(runs)
    for name in names:
        for _ in range(warmup):
            runs[name][0]()
    times: dict[str, list[float]] = {name: [] for name in names}
    gc.disable()
    try:
        for r in range(-(-calls // chunk)):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                run = runs[name][r % len(runs[name])]
                if pause_s:
                    time.sleep(pause_s)
                for _ in range(settle):
                    run()
                for _ in range(min(chunk, calls - r * chunk)):
                    t0 = time.perf_counter_ns()
                    run()
                    times[name].append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        gc.enable()
    return {name: np.array(t) for name, t in times.items()}
