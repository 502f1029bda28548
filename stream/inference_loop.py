"""One model's inference loop, the same in a thread of the pipeline and in the inference
child process (stream/inference_proc.py): the newest frame in the ring wins (frames it
never took are counted as dropped), ``step`` makes the result, and every step and idle
wait beats in a ``Progress`` block, which the supervisor reads to find a hung child.
Model-fault results (``status: model_fault``) are counted; ``max_invalid`` of them in a
row raise ``ModelOutputError``: in a thread that ends the run, in the child it is a crash
and the supervisor restarts it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hepascope.core.errors import ModelOutputError
from hepascope.core.frame import Frame
from hepascope.core.messages import MODEL_FAULT
from hepascope.stream.progress import FINISHING, RUNNING, Progress
from hepascope.stream.ring import RingReader
from hepascope.stream.stats import ModelTally


class RingHandle(Protocol):
    """The pipeline's frame ring as a loop (and the supervisor) sees it: its name, once it
    exists."""

    name: str
    ready: threading.Event


# (frame, time it was read) -> a result message, or None when the model did not run
Step = Callable[[Frame, int], "dict[str, Any] | None"]
# (frames of one stream in capture order, time they were read) -> their result messages
BatchStep = Callable[[list[Frame], int], "list[dict[str, Any]]"]


@dataclass(frozen=True)
class Batched:
    """A main step that takes every waiting frame, oldest first, up to ``size`` at once:
    for an unpaced source, whose frames wait for the model (backpressure), so none is
    dropped; live, the newest frame wins instead."""

    step: BatchStep
    size: int

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"a batch takes at least 1 frame, got {self.size}")


def one_by_one(step: Step) -> BatchStep:
    """``step`` as a ``BatchStep`` of one frame (a model that does not batch)."""
    def run(frames: list[Frame], t_read: int) -> list[dict[str, Any]]:
        msg = step(frames[0], t_read)
        return [] if msg is None else [msg]
    return run


class ResultQueue(Protocol):
    """Where a model's loop puts (result, its tally): the publish queue, or the pipe to
    the parent when the loop runs in the inference process."""

    def put(self, item: tuple[dict[str, Any], ModelTally]) -> None: ...


def infer_loop(step: Step | Batched, tally: ModelTally, ring: RingHandle,
               source_done: threading.Event, stop: threading.Event, results: ResultQueue,
               progress: Progress | None = None, max_invalid: int = 0) -> None:
    """One model's loop (a thread of the pipeline, or the inference process's main thread):
    the newest frame wins (a ``Batched`` step: the waiting frames in order, up to its size);
    ``step`` says whether it made a result. ``progress`` shows each step and idle wait (the
    supervisor reads it); ``max_invalid`` model-fault results in a row raise
    ``ModelOutputError`` (0: never)."""
    progress = progress if progress is not None else Progress()
    progress.set_phase(RUNNING)
    try:
        while not ring.ready.wait(0.05):
            progress.idle()
            if stop.is_set() or source_done.is_set():
                return
        with RingReader(ring.name, start="oldest") as reader:
            take: _Newest | _InOrder
            if isinstance(step, Batched):
                take, run = _InOrder(reader, step.size), step.step
            else:
                take, run = _Newest(reader), one_by_one(step)
            _loop(take, run, tally, source_done, stop, results, progress, max_invalid)
    finally:
        progress.set_phase(FINISHING)


class _Newest:
    """Live: the newest frame in the ring (frames it skips are drops)."""

    def __init__(self, reader: RingReader) -> None:
        self.reader = reader
        self.seen = 0  # ring writes already looked at: one copy per inferred frame, not two

    def take(self, source_done: threading.Event) -> list[Frame] | None:
        """Frames to run ([] none yet), or None when the source ended and all were seen."""
        reader, written = self.reader, self.reader.written
        if written > self.seen:  # frames arrived while we were busy: the newest wins
            frame, self.seen = reader.latest(), written
        else:  # idle: wait for the next one (latest() moved the cursor past the last)
            frame = reader.next(timeout_s=0.05)
            if frame is not None:
                self.seen = written + 1
            elif source_done.is_set() and reader.written == self.seen:
                return None
        return [] if frame is None else [frame]


class _InOrder:
    """Unpaced: every waiting frame, oldest first, up to ``size`` at a time."""

    def __init__(self, reader: RingReader, size: int) -> None:
        self.reader, self.size = reader, size

    def take(self, source_done: threading.Event) -> list[Frame] | None:
        done = source_done.is_set()  # before the read: every write came before it
        first = self.reader.next(timeout_s=0.05)
        if first is None:
            return None if done else []
        frames = [first]
        while len(frames) < self.size and (f := self.reader.next(timeout_s=0)) is not None:
            frames.append(f)
        return frames


def _loop(take: _Newest | _InOrder, run: BatchStep, tally: ModelTally,
          source_done: threading.Event, stop: threading.Event, results: ResultQueue,
          progress: Progress, max_invalid: int) -> None:
    last = -1
    invalid = 0  # model-fault results in a row
    while not stop.is_set():
        progress.idle()
        got = take.take(source_done)
        if got is None:
            break
        frames = [f for f in got if f.seq > last]
        if not frames:
            continue
        t_read = progress.begin()
        for frame in frames:
            tally.took(frame.seq, last)
            last = frame.seq
        msgs = run(frames, t_read)
        progress.end(t_read)
        for msg in msgs:
            fault = msg.get("status") == MODEL_FAULT
            tally.count_result(msg["seq"], fault)
            results.put((msg, tally))
            invalid = invalid + 1 if fault else 0
            if max_invalid and invalid >= max_invalid:
                raise ModelOutputError(f"model {tally.model} gave {invalid} invalid outputs "
                                       f"in a row (last: {msg.get('fault')})")
