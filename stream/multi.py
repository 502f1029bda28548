"""Many streams, one model: N sources share one inference thread that batches across
streams. Stages know nothing of the wiring here either:

    grabber thread per stream: source -> its own frame ring (newest overwrites oldest)
    inference thread:          each step, the newest unseen frame of every stream that has
                               one -> one batch -> BatchClassifier -> one result per frame
    publish thread:            results -> results channel, each with its stream's id and
                               sequence; telemetry per stream every period (the heartbeat)

Each stream keeps what a one-stream pipeline keeps: its ring, its drop counters, its
backpressure (an unpaced source), its verdict state, its latency figures, and its
freshness: the age of its newest result's frame (``result_age_ms``; ``stale`` beyond
``overlay.stale_ms``, as an overlay would say STALE). A stream whose source stalls, fails
or ends leaves the others running. Inference runs in a thread of this process (no
supervised child process: that stays the one-stream path's)."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from hepascope.core.config import Config
from hepascope.core.errors import ModelOutputError
from hepascope.core.frame import Frame
from hepascope.core.messages import MODEL_FAULT, TOPIC_TELEMETRY, RunStamp
from hepascope.stream.batch import BatchClassifier
from hepascope.stream.grab import Backpressure, LazyRing, grab_loop, source_health
from hepascope.stream.pipeline import ResultListener, Sink, publish_result, telemetry_message
from hepascope.stream.results import result_message
from hepascope.stream.ring import RingReader
from hepascope.stream.sources.base import Source
from hepascope.stream.stats import ModelTally, RunStats

log = logging.getLogger(__name__)

_MS = 1e-6  # ns -> ms


class _SignalRing(LazyRing):
    """A stream's ring that wakes the inference thread at every frame."""

    def __init__(self, name: str, slots: int, arrived: threading.Event) -> None:
        super().__init__(name, slots, None)
        self._arrived = arrived

    def write(self, frame: Frame) -> None:
        super().write(frame)
        self._arrived.set()


@dataclass
class StreamState:
    """One stream: its source, ring, counters, and what the inference thread last took."""

    index: int
    source: Source
    ring: LazyRing
    stats: RunStats
    pace: Backpressure | None
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None        # why its source ended early (the others go on)
    newest_capture_ns: int = -1     # capture time of its newest published result
    reader: RingReader | None = None
    seen: int = 0                   # ring writes already looked at
    last: int = -1                  # sequence of the newest frame taken
    invalid: int = 0                # model-fault results in a row

    def age_ms(self, now: int) -> float | None:
        """How old the frame of its newest result is (None before its first result)."""
        return None if self.newest_capture_ns < 0 else (now - self.newest_capture_ns) * _MS


class MultiStream:
    """N sources -> one batched model -> ``sink``. ``run()`` starts it and returns the
    summary: each stream's figures under ``streams``, the batching under ``batches``."""

    def __init__(self, sources: Sequence[Source], model: BatchClassifier, sink: Sink,
                 config: Config, *, engine_name: str = "onnxruntime",
                 listeners: tuple[ResultListener, ...] = (),
                 stale_ms: float | None = None) -> None:
        ids = [s.source_id for s in sources]
        if not sources or len(set(ids)) != len(ids):
            raise ValueError(f"need one or more sources with distinct ids, got {ids}")
        if model.streams != len(sources):
            raise ValueError(f"the model is set up for {model.streams} streams, "
                             f"not {len(sources)}")
        self.model, self.sink, self.config = model, sink, config
        self.engine_name, self.listeners = engine_name, listeners
        self.stale_ns = int((stale_ms or config.overlay.stale_ms) * 1e6)
        self.run_stamp = RunStamp.new()
        self.stop_event = threading.Event()
        self._arrived = threading.Event()
        self._infer_done = threading.Event()
        self._errors: list[BaseException] = []
        self._results: queue.Queue[tuple[dict[str, Any], int]] = queue.Queue(maxsize=1024)
        tag = f"hepascope-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.streams = [self._stream(i, s, f"{tag}-s{i}") for i, s in enumerate(sources)]

    def _stream(self, i: int, source: Source, ring_name: str) -> StreamState:
        cfg = self.config.pipeline
        stats = RunStats(ModelTally(self.model.model_name, cfg.latency_window))
        pace = Backpressure(stats.main, 0) if getattr(source, "unpaced", False) else None
        ring = _SignalRing(ring_name, cfg.ring_slots, self._arrived)
        return StreamState(i, source, ring, stats, pace)

    def run(self, duration_s: float | None = None) -> dict[str, Any]:
        """Run until every source ends, ``duration_s`` passes, ``stop()`` or an error of
        the model or the publisher (re-raised); a source's error ends only its stream."""
        t0 = time.monotonic_ns()
        for st in self.streams:
            st.stats.t_start_ns = t0
        grabbers = [self._thread(f"grab-{st.index}", partial(self._grab, st))
                    for st in self.streams]
        workers = [self._thread("infer", self._infer), self._thread("publish", self._publish)]
        for t in (*grabbers, *workers):
            t.start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while workers[1].is_alive() and not self.stop_event.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            workers[1].join(0.05)
        self.stop()
        for t in workers:
            t.join(timeout=10.0)
        for t in grabbers:  # a source stalled inside its read may not notice: not waited on
            t.join(timeout=1.0)
        for st in self.streams:
            st.stats.settle()
        if self._errors:
            raise self._errors[0]
        return self.summary((time.monotonic_ns() - t0) / 1e9)

    def stop(self) -> None:
        """End the run (thread-safe); a source that can be interrupted is."""
        self.stop_event.set()
        for st in self.streams:
            interrupt: Callable[[], None] | None = getattr(st.source, "interrupt", None)
            if interrupt is not None:
                interrupt()

    def _thread(self, name: str, fn: Callable[[], None]) -> threading.Thread:
        def body() -> None:
            try:
                fn()
            except BaseException as e:  # handed to run(), which re-raises it
                self._errors.append(e)
                self.stop_event.set()

        return threading.Thread(target=body, name=f"hepascope-{name}", daemon=True)

    def _grab(self, st: StreamState) -> None:
        """One stream's grabber: its source's error ends this stream only (logged,
        reported in its summary), never the others."""
        try:
            grab_loop(st.source, st.ring, st.stats, self.stop_event, st.pace)
        except Exception as e:
            st.error = f"{type(e).__name__}: {e}"
            log.warning("stream %s ended: %s", st.source.source_id, st.error)
        finally:
            st.done.set()
            self._arrived.set()

    def _infer(self) -> None:
        """Each step: the newest unseen frame of every stream that has one, as one batch."""
        try:
            while not self.stop_event.is_set():
                self._arrived.wait(0.05)
                self._arrived.clear()  # cleared before looking: a frame after it sets it again
                taken = []
                for st in self.streams:
                    got = self._take(st)
                    if got is not None:
                        taken.append((st, *got))
                if taken:
                    self._run_batch(taken)
                elif all(st.done.is_set() for st in self.streams) \
                        and not any(self._pending(st) for st in self.streams):
                    return
        finally:
            for st in self.streams:
                if st.reader is not None:
                    st.reader.close()
            self._infer_done.set()

    def _pending(self, st: StreamState) -> bool:
        return st.reader is not None and st.reader.written > st.seen

    def _take(self, st: StreamState) -> tuple[Frame, int] | None:
        """Stream ``st``'s newest frame not taken yet, with the time it was read, or None
        (frames written meanwhile and never taken are counted as dropped)."""
        if st.reader is None:
            if not st.ring.ready.is_set():
                return None
            st.reader = RingReader(st.ring.name, start="oldest")
        written = st.reader.written
        if written <= st.seen:
            return None
        frame, st.seen = st.reader.latest(), written
        if frame is None or frame.seq <= st.last:
            return None
        st.stats.main.took(frame.seq, st.last)
        st.last = frame.seq
        return frame, time.monotonic_ns()

    def _run_batch(self, taken: list[tuple[StreamState, Frame, int]]) -> None:
        """One engine run for the frames taken; each stream's result to the publisher."""
        outs = self.model.predict_batch([f for _, f, _ in taken],
                                        [st.index for st, _, _ in taken])
        limit = self.config.pipeline.inference_max_invalid
        for (st, frame, t_read), out in zip(taken, outs, strict=True):
            msg = result_message(self.model.stream_model(st.index), frame, t_read, out)
            fault = msg["status"] == MODEL_FAULT
            st.stats.main.count_result(frame.seq, fault)
            self._results.put((msg, st.index))
            st.invalid = st.invalid + 1 if fault else 0
            if st.invalid >= limit:
                raise ModelOutputError(f"model {self.model.model_name} gave {st.invalid} "
                                       f"invalid outputs in a row on {st.source.source_id} "
                                       f"(last: {msg.get('fault')})")

    def _publish(self) -> None:
        """Results as they come, each stream's telemetry every period; until the inference
        thread is done and every result is out."""
        period_ns = int(self.config.pipeline.telemetry_period_s * 1e9)
        next_telemetry = time.monotonic_ns()
        try:
            while True:
                try:
                    item: tuple[dict[str, Any], int] | None = self._results.get(timeout=0.02)
                except queue.Empty:
                    item = None
                now = time.monotonic_ns()
                if item is not None:
                    self._send_result(*item, now)
                if now >= next_telemetry:
                    for st in self.streams:
                        self.sink.send(TOPIC_TELEMETRY, self.telemetry(st, now))
                    next_telemetry = now + period_ns
                if item is None and self._infer_done.is_set() and self._results.empty():
                    return
        finally:
            for st in self.streams:
                st.ring.close()

    def _send_result(self, msg: dict[str, Any], i: int, now: int) -> None:
        st = self.streams[i]
        publish_result(msg, now, self.run_stamp, self.sink, st.stats.main, st.stats,
                       self.listeners)
        st.newest_capture_ns = max(st.newest_capture_ns, msg["t_capture_ns"])

    def freshness(self, st: StreamState, now: int) -> dict[str, Any]:
        """``result_age_ms`` (absent before the first result) and ``stale``: no result yet
        after ``stale_ms`` of running, or the newest result's frame older than that."""
        age = st.age_ms(now)
        since = now - st.stats.t_start_ns
        stale = since > self.stale_ns if age is None else age * 1e6 > self.stale_ns
        return {"stale": stale, **({} if age is None else {"result_age_ms": round(age, 3)})}

    def telemetry(self, st: StreamState, now: int) -> dict[str, Any]:
        """Stream ``st``'s heartbeat: a one-stream pipeline's, with its freshness."""
        return {**telemetry_message(st.stats, now, st.source.source_id, self.engine_name,
                                    st.ring.name, self.run_stamp.run_id),
                "inference": "thread", "inference_pid": os.getpid(), "inference_restarts": 0,
                "inference_up": True, **st.stats.fault_counts(),
                **source_health(st.source, st.ring),
                **(st.pace.report() if st.pace is not None else {}),
                **self.freshness(st, now)}

    def summary(self, seconds: float) -> dict[str, Any]:
        """Each stream's figures (a one-stream run's, with its source, freshness and any
        error) and the batching: engine runs and frames per run."""
        now = time.monotonic_ns()
        per = []
        for st in self.streams:
            s = st.stats.summary()
            per.append({"source": st.source.source_id,
                        **{k: v for k, v in s.items() if k not in ("models", "answers")},
                        **self.freshness(st, now), "error": st.error})
        m = self.model
        return {"seconds": round(seconds, 3), "model": m.model_name, "engine": self.engine_name,
                "run_id": self.run_stamp.run_id, "batchable": m.batchable,
                "batches": m.batches,
                "frames_per_batch": round(m.batched_frames / max(m.batches, 1), 3),
                "results_per_s": round(sum(p["results_per_s"] for p in per), 2),
                "streams": per}
