"""The pipeline runner. Stages know nothing of wiring: a source yields frames, the
classifier maps a frame to probabilities, the publisher sends maps. ``compose`` wires them:

    grabber thread:   source -> shared-memory ring      (never blocks; newest overwrites oldest)
    inference thread: ring (newest frame wins) -> classifier -> result queue; or, when the
                      classifier is an ``InferenceProcess``, the same loop in a supervised
                      child process whose results this thread relays (stream/supervisor.py)
    side threads:     ring (newest frame wins) -> side model, on its own cadence -> result queue
    publish thread:   result queue -> results channel; telemetry every period (the heartbeat)

Every frame carries its capture time; every stage adds a stamp; a frame a model's thread
never saw is counted as dropped for that model. A side model (the clip 3D-CNN) has its own
thread, ring reader and engine session: it never waits for the main model nor makes it
wait; they share only the cores (hence its single engine thread) and the result queue.
Side models stay threads of this process even when the main model runs in a child."""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

from hepascope.core.config import PipelineConfig
from hepascope.core.messages import (
    SCHEMA_VERSION,
    TOPIC_RESULT,
    TOPIC_TELEMETRY,
    RunStamp,
)
from hepascope.stream.classifier import Classifier
from hepascope.stream.grab import Backpressure, LazyRing, grab_loop, source_health
from hepascope.stream.inference_loop import Step, infer_loop
from hepascope.stream.results import SideModel, main_step, side_step
from hepascope.stream.sources.base import Source
from hepascope.stream.stats import ModelTally, RunStats
from hepascope.stream.supervisor import InferenceProcess

log = logging.getLogger(__name__)

_MS = 1e-6  # ns -> ms
# Nice increment of a side model's thread (Linux schedules threads one by one): when the
# cores are short the main model gets them, and the side model, whose window spans a
# minute, is only a little later.
SIDE_NICE = 10


class Sink(Protocol):
    """Where messages go (the ZeroMQ publisher, or a list in tests)."""

    def send(self, topic: bytes, msg: dict[str, Any]) -> None: ...


class ResultListener(Protocol):
    """Told of every published result (the session recorder)."""

    def on_result(self, msg: dict[str, Any]) -> None: ...


class Pipeline:
    """Handle on a composed pipeline: ``run()`` starts it and returns its summary."""

    def __init__(self, threads: list[threading.Thread], stop: threading.Event,
                 done: threading.Event, errors: list[BaseException], stats: RunStats,
                 ring_name: str,
                 inference_info: Callable[[], dict[str, Any]] | None = None,
                 run: RunStamp | None = None) -> None:
        self._threads = threads
        self.run_id = (run or RunStamp.new()).run_id
        # where the main model runs, its pid and restarts (telemetry and the summary)
        self.inference_info = inference_info or _in_thread
        self.on_stop: Callable[[], None] | None = None  # thread-safe source interrupt
        self.stop_event = stop
        self._done = done
        self._errors = errors
        self.stats = stats
        self.ring_name = ring_name

    def run(self, duration_s: float | None = None) -> dict[str, Any]:
        """Run until the source ends, ``duration_s`` passes, ``stop()`` or an error; re-raise
        the first error of any stage. When the source ended by itself, ``results_lost``
        counts its last frames that got no result (the model was down at the end)."""
        self.stats.t_start_ns = time.monotonic_ns()
        for t in self._threads:
            t.start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not self._done.is_set() and not self.stop_event.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self._done.wait(0.1 if left is None else min(0.1, left))
        ended = self._done.is_set() and not self.stop_event.is_set()
        self.stop()
        for t in self._threads:
            t.join(timeout=10.0)
        self.stats.settle()
        if self._errors:
            raise self._errors[0]
        lost = self.stats.lost_at_end() if ended else 0
        return {**self.stats.summary(), **self.inference_info(), "results_lost": lost}

    def stop(self) -> None:
        self.stop_event.set()
        if self.on_stop is not None:
            self.on_stop()


def _worker(name: str, fn: Callable[[], None], stop: threading.Event,
            errors: list[BaseException]) -> threading.Thread:
    def body() -> None:
        try:
            fn()
        except BaseException as e:  # handed to run(), which re-raises it: never swallowed
            errors.append(e)
            stop.set()

    return threading.Thread(target=body, name=f"hepascope-{name}", daemon=True)


def _in_thread() -> dict[str, Any]:
    return {"inference": "thread", "inference_pid": os.getpid(), "inference_restarts": 0,
            "inference_up": True}


def compose(source: Source, classifier: Classifier | InferenceProcess, sink: Sink,
            config: PipelineConfig,
            *, side: Sequence[SideModel] = (), listeners: tuple[ResultListener, ...] = (),
            engine_name: str = "onnxruntime", ring_name: str | None = None,
            on_ring: Callable[[str], None] | None = None) -> Pipeline:
    """Wire source -> ring -> classifier (and each side model, in its own thread) -> sink
    into a runnable ``Pipeline``. An ``InferenceProcess`` classifier runs in its child
    process, relayed and restarted by the main model's thread."""
    stop, done, source_done = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []
    run = RunStamp.new()
    stats = RunStats(ModelTally(classifier.model_name, config.latency_window),
                     [ModelTally(m.model_name, config.latency_window) for m in side])
    results: queue.Queue[tuple[dict[str, Any], ModelTally]] = queue.Queue(maxsize=256)
    ring = LazyRing(ring_name or f"hepascope-{os.getpid()}-{uuid.uuid4().hex[:8]}",
                     config.ring_slots, on_ring)
    steps = _model_steps(classifier, side)
    finished = [threading.Event() for _ in steps]
    where = classifier.telemetry if isinstance(classifier, InferenceProcess) else _in_thread

    pace = _backpressure(source, classifier, stats)

    def info() -> dict[str, Any]:
        return {**where(), **stats.fault_counts(), **source_health(source, ring),
                **(pace.report() if pace is not None else {})}

    def grab() -> None:
        try:
            grab_loop(source, ring, stats, stop, pace)
        finally:
            source_done.set()

    def infer(i: int) -> None:
        if i > 0:
            _lower_priority(SIDE_NICE)
        step, tally = steps[i], stats.models[i]
        try:  # the main model's invalid outputs in a row end the run (no restart)
            _run_step(step, tally, ring, source_done, stop, results, stats,
                      max_invalid=0 if i else config.inference_max_invalid)
        finally:
            finished[i].set()

    def publish() -> None:
        try:
            _publish_loop(sink, results, lambda: all(e.is_set() for e in finished),
                          stats, config, listeners, source.source_id, engine_name, ring.name,
                          info, run)
        finally:
            done.set()
            ring.close()

    work: list[tuple[str, Callable[[], None]]] = [
        ("grab", grab), *((f"side-{i}" if i else "infer", partial(infer, i))
                          for i in range(len(steps))), ("publish", publish)]
    threads = [_worker(n, f, stop, errors) for n, f in work]
    pipeline = Pipeline(threads, stop, done, errors, stats, ring.name, info, run)
    # a reconnecting source waiting out an outage yields no frame to notice the stop by
    pipeline.on_stop = getattr(source, "interrupt", None)
    return pipeline


def _backpressure(source: Source, classifier: Classifier | InferenceProcess,
                  stats: RunStats) -> Backpressure | None:
    """For an unpaced source, decoding held to the main model's pace (``grab.py``): the
    model takes frames in this process, or answers them from its child, a batch (up to
    ``InferenceProcess.batch`` frames) in flight while the next one is decoded."""
    if not getattr(source, "unpaced", False):
        return None
    if isinstance(classifier, InferenceProcess):
        return Backpressure(stats.main, 2 * max(classifier.batch, 1) - 1)
    return Backpressure(stats.main, 0)


def _model_steps(classifier: Classifier | InferenceProcess,
                side: Sequence[SideModel]) -> list[Step | InferenceProcess]:
    """What each model's thread runs: first the main model's step (or its inference
    process), then each side model's step."""
    main: Step | InferenceProcess = (classifier if isinstance(classifier, InferenceProcess)
                                     else partial(main_step, classifier))
    return [main, *(partial(side_step, m) for m in side)]


def _run_step(step: Step | InferenceProcess, tally: ModelTally, ring: LazyRing,
              source_done: threading.Event, stop: threading.Event,
              results: queue.Queue[tuple[dict[str, Any], ModelTally]], stats: RunStats, *,
              max_invalid: int) -> None:
    """One model's inference until the source ends or ``stop``: an ``InferenceProcess``
    serves it from its child (relayed, restarted), any other step loops in this thread
    (``max_invalid`` invalid outputs in a row end the run; 0: never)."""
    if isinstance(step, InferenceProcess):
        step.serve(ring, source_done, stop, lambda m: results.put((m, tally)), tally,
                   lambda: stats.frames_in)
    else:
        infer_loop(step, tally, ring, source_done, stop, results, max_invalid=max_invalid)


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux only: elsewhere the call
    would name a process, not a thread)."""
    if nice <= 0 or sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as e:  # not fatal: the side model then competes on equal terms
        log.warning("could not lower a side model's priority: %s", e)


def publish_result(msg: dict[str, Any], now: int, run: RunStamp, sink: Sink,
                   tally: ModelTally, stats: RunStats,
                   listeners: tuple[ResultListener, ...]) -> None:
    """Send one result at ``now``: its publish time, run stamp and publish / total
    latency added; counted in its model's ``tally`` and ``stats``' answers; listeners told."""
    t_inf = msg.pop("_t_infer_ns")
    msg["t_publish_ns"] = now
    run.stamp(msg)
    lat = msg["latency_ms"]
    lat["publish"] = (now - t_inf) * _MS
    lat["total"] = (now - msg["t_capture_ns"]) * _MS
    sink.send(TOPIC_RESULT, msg)
    tally.add(lat, now)
    stats.answers.add(msg)
    for listener in listeners:
        listener.on_result(msg)


def _publish_loop(sink: Sink, results: queue.Queue[tuple[dict[str, Any], ModelTally]],
                  inferring_done: Callable[[], bool], stats: RunStats,
                  config: PipelineConfig, listeners: tuple[ResultListener, ...], stream: str,
                  engine: str, ring_name: str, info: Callable[[], dict[str, Any]],
                  run: RunStamp) -> None:
    period_ns = int(config.telemetry_period_s * 1e9)
    next_telemetry = time.monotonic_ns()
    while True:
        try:
            item: tuple[dict[str, Any], ModelTally] | None = results.get(timeout=0.02)
        except queue.Empty:
            item = None
        now = time.monotonic_ns()
        if item is not None:
            publish_result(item[0], now, run, sink, item[1], stats, listeners)
        if now >= next_telemetry:
            sink.send(TOPIC_TELEMETRY, {**telemetry_message(stats, now, stream, engine,
                                                            ring_name, run.run_id), **info()})
            next_telemetry = now + period_ns
        # on stop too, wait for the model threads: a result counted as out just before the
        # stop is still on its way into the queue (stop cannot lose it)
        if item is None and inferring_done() and results.empty():
            return


def telemetry_message(stats: RunStats, now: int, stream: str, engine: str,
                      ring_name: str, run_id: str) -> dict[str, Any]:
    """The heartbeat: the main model's figures at the top level, every model's in ``models``.
    It goes on while the inference process is down (results stop: the overlay says STALE);
    the publish loop adds where inference runs, its pid, restarts and ``inference_up``."""
    main = stats.main
    return {
        "v": SCHEMA_VERSION, "stream": stream, "t_publish_ns": now, "run_id": run_id,
        "fps_in": round(stats.rate_in.rate(), 2), "fps_out": round(main.rate_out.rate(), 2),
        "dropped": main.dropped, "latency_p50_ms": round(main.window.percentile(50), 3),
        "latency_p99_ms": round(main.window.percentile(99), 3),
        "frames_in": stats.frames_in, "frames_out": main.frames_out,
        "model": main.model, "engine": engine, "ring": ring_name, "pid": os.getpid(),
        "invalid_outputs": main.invalid_outputs,
        "models": [m.telemetry() for m in stats.models],
    }
