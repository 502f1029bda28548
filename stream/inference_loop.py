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


class ResultQueue(Protocol):
    """Where a model's loop puts (result, its tally): the publish queue, or the pipe to
    the parent when the loop runs in the inference process."""

    def put(self, item: tuple[dict[str, Any], ModelTally]) -> None: ...


def infer_loop(step: Step, tally: ModelTally, ring: RingHandle, source_done: threading.Event,
               stop: threading.Event, results: ResultQueue, progress: Progress | None = None,
               max_invalid: int = 0) -> None:
    """One model's loop (a thread of the pipeline, or the inference process's main thread):
    the newest frame wins; ``step`` says whether it made a result. ``progress`` shows each
    step and idle wait (the supervisor reads it); ``max_invalid`` model-fault results in a
    row raise ``ModelOutputError`` (0: never)."""
    progress = progress if progress is not None else Progress()
    progress.set_phase(RUNNING)
    try:
        while not ring.ready.wait(0.05):
            progress.idle()
            if stop.is_set() or source_done.is_set():
                return
        with RingReader(ring.name, start="oldest") as reader:
            _newest_first(reader, step, tally, source_done, stop, results, progress,
                          max_invalid)
    finally:
        progress.set_phase(FINISHING)


def _newest_first(reader: RingReader, step: Step, tally: ModelTally,
                  source_done: threading.Event, stop: threading.Event, results: ResultQueue,
                  progress: Progress, max_invalid: int) -> None:
    last = -1
    seen = 0  # ring writes already looked at: one copy per inferred frame, not two
    invalid = 0  # model-fault results in a row
    while not stop.is_set():
        progress.idle()
        written = reader.written
        if written > seen:  # frames arrived while we were busy: the newest wins
            frame, seen = reader.latest(), written
        else:  # idle: wait for the next one (latest() moved the cursor past the last)
            frame = reader.next(timeout_s=0.05)
            if frame is not None:
                seen = written + 1
            elif source_done.is_set() and reader.written == seen:
                break
        if frame is None or frame.seq <= last:
            continue
        t_read = progress.begin()
        tally.took(frame.seq, last)
        last = frame.seq
        msg = step(frame, t_read)
        progress.end(t_read)
        if msg is None:
            continue
        fault = msg.get("status") == MODEL_FAULT
        tally.count_result(frame.seq, fault)
        results.put((msg, tally))
        invalid = invalid + 1 if fault else 0
        if max_invalid and invalid >= max_invalid:
            raise ModelOutputError(f"model {tally.model} gave {invalid} invalid outputs in a "
                                   f"row (last: {msg.get('fault')})")
