"""The pipeline runner. Stages know nothing of wiring: a source yields frames, the
classifier maps a frame to probabilities, the publisher sends maps. ``compose`` wires them:

    grabber thread:   source -> shared-memory ring      (never blocks; newest overwrites oldest)
    inference thread: ring (newest frame wins) -> classifier -> result queue
    publish thread:   result queue -> results channel; telemetry every period (the heartbeat)

Every frame carries its capture time; every stage adds a stamp; a frame the inference
thread never saw is counted as dropped."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hepascope.stream.classifier import Classifier
from hepascope.stream.config import PipelineConfig
from hepascope.stream.frame import Frame
from hepascope.stream.messages import SCHEMA_VERSION, TOPIC_RESULT, TOPIC_TELEMETRY
from hepascope.stream.ring import RingReader, RingWriter, slot_bytes_for
from hepascope.stream.sources.base import Source
from hepascope.stream.stats import LatencyHistogram, LatencyWindow, RateMeter

log = logging.getLogger(__name__)

_MS = 1e-6  # ns -> ms


class Sink(Protocol):
    """Where messages go (the ZeroMQ publisher, or a list in tests)."""

    def send(self, topic: bytes, msg: dict[str, Any]) -> None: ...


class ResultListener(Protocol):
    """Told of every published result (the session recorder)."""

    def on_result(self, msg: dict[str, Any]) -> None: ...


@dataclass
class RunStats:
    """Counters of one run, shared by the threads (ints: GIL-atomic updates)."""

    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    rate_in: RateMeter = field(default_factory=RateMeter)
    rate_out: RateMeter = field(default_factory=RateMeter)
    totals: LatencyHistogram = field(default_factory=LatencyHistogram)
    stage_sum_ms: dict[str, float] = field(default_factory=dict)
    t_start_ns: int = field(default_factory=time.monotonic_ns)

    def summary(self) -> dict[str, Any]:
        seconds = max((time.monotonic_ns() - self.t_start_ns) / 1e9, 1e-9)
        tot, n = self.totals, max(self.totals.count, 1)
        return {
            "seconds": round(seconds, 3),
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped": self.dropped,
            "fps_in": round(self.frames_in / seconds, 2),
            "results_per_s": round(self.frames_out / seconds, 2),
            "latency_p50_ms": round(tot.percentile(50), 2),
            "latency_p99_ms": round(tot.percentile(99), 2),
            "latency_max_ms": round(tot.max, 2),
            "stage_mean_ms": {k: round(v / n, 3) for k, v in self.stage_sum_ms.items()},
        }


class Pipeline:
    """Handle on a composed pipeline: ``run()`` starts it and returns its summary."""

    def __init__(self, threads: list[threading.Thread], stop: threading.Event,
                 done: threading.Event, errors: list[BaseException], stats: RunStats,
                 ring_name: str) -> None:
        self._threads = threads
        self.stop_event = stop
        self._done = done
        self._errors = errors
        self.stats = stats
        self.ring_name = ring_name

    def run(self, duration_s: float | None = None) -> dict[str, Any]:
        """Run until the source ends, ``duration_s`` passes, ``stop()`` or an error; re-raise
        the first error of any stage."""
        self.stats.t_start_ns = time.monotonic_ns()
        for t in self._threads:
            t.start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not self._done.is_set() and not self.stop_event.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self._done.wait(0.1 if left is None else min(0.1, left))
        self.stop()
        for t in self._threads:
            t.join(timeout=10.0)
        # Frames captured after the last inference were never inferred either.
        self.stats.dropped = self.stats.frames_in - self.stats.frames_out
        if self._errors:
            raise self._errors[0]
        return self.stats.summary()

    def stop(self) -> None:
        self.stop_event.set()


def _worker(name: str, fn: Callable[[], None], stop: threading.Event,
            errors: list[BaseException]) -> threading.Thread:
    def body() -> None:
        try:
            fn()
        except BaseException as e:  # handed to run(), which re-raises it: never swallowed
            errors.append(e)
            stop.set()

    return threading.Thread(target=body, name=f"hepascope-{name}", daemon=True)


def compose(source: Source, classifier: Classifier, sink: Sink, config: PipelineConfig,
            *, listeners: tuple[ResultListener, ...] = (), engine_name: str = "onnxruntime",
            ring_name: str | None = None,
            on_ring: Callable[[str], None] | None = None) -> Pipeline:
    """Wire source -> ring -> classifier -> sink into a runnable ``Pipeline``."""
    stop, done = threading.Event(), threading.Event()
    source_done, ring_ready, infer_done = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []
    stats = RunStats()
    window = LatencyWindow(config.latency_window)
    results: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=256)
    name = ring_name or f"hepascope-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ring: dict[str, Any] = {}

    def grab() -> None:
        try:
            with source:
                for frame in source:
                    writer = ring.get("writer")
                    if writer is None:
                        c = 1 if frame.image.ndim == 2 else 3
                        writer = RingWriter(name, slots=config.ring_slots,
                                            slot_bytes=slot_bytes_for(frame.height, frame.width, c))
                        ring["writer"] = writer
                        ring_ready.set()
                        if on_ring is not None:
                            on_ring(name)
                    writer.write(frame)
                    stats.frames_in += 1
                    stats.rate_in.tick(frame.t_capture_ns)
                    if stop.is_set():
                        break
        finally:
            source_done.set()

    def infer() -> None:
        try:
            _infer_loop(classifier, ring_ready, source_done, stop, stats, results, name)
        finally:
            infer_done.set()

    def publish() -> None:
        try:
            _publish_loop(sink, results, infer_done, stop, stats, window, config,
                          listeners, source.source_id, classifier.model_name, engine_name, name)
        finally:
            done.set()
            writer = ring.pop("writer", None)
            if writer is not None:
                writer.close()

    threads = [_worker(n, f, stop, errors) for n, f in
               (("grab", grab), ("infer", infer), ("publish", publish))]
    return Pipeline(threads, stop, done, errors, stats, name)


def _infer_loop(classifier: Classifier, ring_ready: threading.Event,
                source_done: threading.Event, stop: threading.Event, stats: RunStats,
                results: queue.Queue[dict[str, Any]], ring_name: str) -> None:
    while not ring_ready.wait(0.05):
        if stop.is_set() or source_done.is_set():
            return
    last = -1
    seen = 0  # ring writes already looked at: one copy per inferred frame, not two
    with RingReader(ring_name, start="oldest") as reader:
        while not stop.is_set():
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
            t_read = time.monotonic_ns()
            stats.dropped += frame.seq - last - 1
            last = frame.seq
            msg = _classify(classifier, frame, t_read)
            stats.frames_out += 1
            results.put(msg)


def _classify(classifier: Classifier, frame: Frame, t_read: int) -> dict[str, Any]:
    probs, stages = classifier.predict(frame)
    t_inf = time.monotonic_ns()
    return {
        "v": SCHEMA_VERSION,
        "stream": frame.source_id,
        "seq": int(frame.seq),
        "model": classifier.model_name,
        "labels": list(classifier.labels),
        "probs": [float(p) for p in probs],
        "top": classifier.labels[int(np.argmax(probs))],
        "t_capture_ns": frame.t_capture_ns,
        "pts_s": frame.pts_s,
        "latency_ms": {"queue": (t_read - frame.t_capture_ns) * _MS, **stages},
        "_t_infer_ns": t_inf,
    }


def _publish_loop(sink: Sink, results: queue.Queue[dict[str, Any]], infer_done: threading.Event,
                  stop: threading.Event, stats: RunStats, window: LatencyWindow,
                  config: PipelineConfig, listeners: tuple[ResultListener, ...], stream: str,
                  model: str, engine: str, ring_name: str) -> None:
    period_ns = int(config.telemetry_period_s * 1e9)
    next_telemetry = time.monotonic_ns()
    while True:
        try:
            msg = results.get(timeout=0.02)
        except queue.Empty:
            msg = None
        now = time.monotonic_ns()
        if msg is not None:
            t_inf = msg.pop("_t_infer_ns")
            msg["t_publish_ns"] = now
            lat = msg["latency_ms"]
            lat["publish"] = (now - t_inf) * _MS
            lat["total"] = (now - msg["t_capture_ns"]) * _MS
            sink.send(TOPIC_RESULT, msg)
            stats.rate_out.tick(now)
            window.add(lat["total"])
            stats.totals.add(lat["total"])
            for k, v in lat.items():
                stats.stage_sum_ms[k] = stats.stage_sum_ms.get(k, 0.0) + v
            for listener in listeners:
                listener.on_result(msg)
        if now >= next_telemetry:
            sink.send(TOPIC_TELEMETRY, {
                "v": SCHEMA_VERSION, "stream": stream, "t_publish_ns": now,
                "fps_in": round(stats.rate_in.rate(), 2),
                "fps_out": round(stats.rate_out.rate(), 2),
                "dropped": stats.dropped, "latency_p50_ms": round(window.percentile(50), 3),
                "latency_p99_ms": round(window.percentile(99), 3),
                "frames_in": stats.frames_in, "frames_out": stats.frames_out,
                "model": model, "engine": engine, "ring": ring_name, "pid": os.getpid(),
            })
            next_telemetry = now + period_ns
        if msg is None and (infer_done.is_set() or stop.is_set()) and results.empty():
            return
