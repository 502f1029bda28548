"""How an inference loop shows that it makes progress, and how its supervisor decides that
it does not (a SIGSTOPped child, a model call that never returns).

``Progress`` is four 64-bit words, in shared memory when made with a ``multiprocessing``
context (handed to the spawned child as an argument): the loop counts a beat after every
step and every idle wait, and writes when the step under way began, how long the last one
took and its phase. The parent reads them without the child's help: a stopped child, or
one stuck in an engine call, cannot beat. ``StallWatch`` is the parent's rule: a child
with work waiting (a step under way, a frame written to the ring since its last beat, or
the end of the source to finish) that has not beaten for the bound is hung. The bound is
``factor`` x the p99 of the step times measured so far, at least ``min_s`` and at most
``max_s``; ``max_s`` until the child finished its first step (a first step may warm up)."""

from __future__ import annotations

import ctypes
import time
from collections import deque
from typing import Any

import numpy as np

LOADING, RUNNING, FINISHING = 0, 1, 2  # phases: before, inside and after the loop
_BEATS, _BUSY, _STEP, _PHASE = range(4)


class Progress:
    """The heartbeat block of one inference loop: one writer (the loop), any readers."""

    def __init__(self, ctx: Any = None) -> None:
        # ctx.RawArray: shared memory, no lock (one writer; aligned 64-bit words)
        self._a: Any = (ctx.RawArray(ctypes.c_int64, 4) if ctx is not None
                        else (ctypes.c_int64 * 4)())

    def idle(self) -> None:
        """A beat while waiting for work: alive, no step under way."""
        self._a[_BUSY] = 0
        self._a[_BEATS] += 1

    def begin(self) -> int:
        """A step starts now (returned, for ``end``)."""
        t = time.monotonic_ns()
        self._a[_BUSY] = t
        return t

    def end(self, t_begin: int) -> None:
        """The step begun at ``t_begin`` is done: its duration, and a beat."""
        self._a[_STEP] = time.monotonic_ns() - t_begin
        self._a[_BUSY] = 0
        self._a[_BEATS] += 1

    def set_phase(self, phase: int) -> None:
        self._a[_PHASE] = phase

    @property
    def beats(self) -> int:
        return int(self._a[_BEATS])

    @property
    def busy_since_ns(self) -> int:
        """When the step under way began (CLOCK_MONOTONIC, the same in every process); 0:
        none."""
        return int(self._a[_BUSY])

    @property
    def last_step_ns(self) -> int:
        return int(self._a[_STEP])

    @property
    def phase(self) -> int:
        return int(self._a[_PHASE])


class StallWatch:
    """The supervisor's hang rule over one child's ``Progress`` at a time (one thread
    calls ``watch``, ``step_done`` and ``stalled_s``); the step times it measured are kept
    across children (the same model)."""

    def __init__(self, min_s: float, max_s: float, factor: float = 10.0,
                 window: int = 256) -> None:
        if not 0 < min_s <= max_s or factor <= 0:
            raise ValueError(f"need 0 < min_s <= max_s and factor > 0, got {min_s}, {max_s}, "
                             f"{factor}")
        self.min_s, self.max_s, self.factor = min_s, max_s, factor
        self._steps: deque[int] = deque(maxlen=window)
        self.watch(Progress(), time.monotonic_ns(), 0)

    def watch(self, progress: Progress, now_ns: int, frames: int) -> None:
        """From now on judge ``progress`` (a new child, ready): nothing waits yet."""
        self._p = progress
        self._beats, self._frames = progress.beats, frames
        self._t_wait: int | None = None
        self._bound_s = self.max_s  # until its first step: a first step may warm up

    def step_done(self) -> None:
        """The child sent a result: its last step's duration is measured, the bound set."""
        ns = self._p.last_step_ns
        if ns > 0:
            self._steps.append(ns)
        if self._steps:
            p99 = float(np.percentile(np.fromiter(self._steps, float), 99)) / 1e9
            self._bound_s = min(max(self.factor * p99, self.min_s), self.max_s)

    def bound_s(self) -> float:
        """How long a child with work waiting may go without a beat (any thread may ask)."""
        return self._bound_s

    def stalled_s(self, now_ns: int, frames: int, finish: bool) -> float | None:
        """Seconds without progress while work waited, once that passes the bound; else
        None. ``frames``: frames written to the ring so far; ``finish``: the child was told
        that the source ended (it must finish, then end)."""
        p = self._p
        beats = p.beats
        if beats != self._beats:
            self._beats, self._frames, self._t_wait = beats, frames, None
        busy = p.busy_since_ns
        if p.phase != RUNNING or not (busy or finish or frames > self._frames):
            self._t_wait = None
            return None
        if self._t_wait is None:  # work waits from now (a step: from when it began)
            self._t_wait = min(busy, now_ns) if busy else now_ns
        quiet = (now_ns - self._t_wait) / 1e9
        return quiet if quiet > self._bound_s else None
