"""Measuring instruments of the pipeline benchmark: percentiles, process CPU and RSS, a
listener keeping every published result, the overlay's receive side (a ZeroMQ subscriber),
the source's own per-frame cost, and latency/drops per window of a run."""

from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.bench.pipeline_models import source_options
from hepascope.core.messages import TOPIC_RESULT
from hepascope.stream.publish import Subscriber
from hepascope.stream.sources import open_source

_MS = 1e-6  # ns -> ms
DECODE_PROBE_FRAMES = 20  # frames timed, unpaced, for the capture/decode stage
TAIL_S = 0.3  # how long the subscriber listens after the run, for results still in flight


def pct(values: list[float] | np.ndarray, q: float) -> float | None:
    arr = np.asarray(values, dtype=np.float64)
    return round(float(np.percentile(arr, q)), 3) if arr.size else None


def p50_p99(values: list[float] | np.ndarray) -> dict[str, float | None]:
    return {"p50_ms": pct(values, 50), "p99_ms": pct(values, 99)}


def _descendants(pid: str) -> list[str]:
    """Child pids of ``pid``, recursively (Linux /proc; the inference process and the
    multiprocessing helpers are children of the pipeline's process)."""
    out: list[str] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            out += [kid, *_descendants(kid)]
    return out


def _vmrss_mb(pid: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:  # gone meanwhile
        pass
    return 0.0


def _rss_mb() -> float:
    """Resident set size now of this process and its children (the inference process
    runs in one): Linux /proc; elsewhere this process's lifetime peak, the best there is."""
    if Path("/proc/self/status").is_file():
        me = str(os.getpid())
        return sum(_vmrss_mb(pid) for pid in (me, *_descendants(me)))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Resources:
    """CPU % (CPU time of this process and its reaped children, i.e. the inference process,
    over wall time; 100 = one core busy) and RSS of both sampled every 0.1 s while a
    section runs (the peak of the section, not of the process's life)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._peak = _rss_mb()
        self._t0 = time.monotonic()
        self._cpu0 = self._cpu()
        self._thread = threading.Thread(target=self._sample, daemon=True,
                                        name="hepascope-bench-rss")
        self._thread.start()

    @staticmethod
    def _cpu() -> float:
        # children's times count once they are reaped: the pipeline joins its inference
        # process before the section ends, so its CPU is in the section's delta
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self._peak = max(self._peak, _rss_mb())

    def finish(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        end = _rss_mb()
        wall = max(time.monotonic() - self._t0, 1e-9)
        return {"cpu_pct": round(100.0 * (self._cpu() - self._cpu0) / wall, 1),
                "rss_peak_mb": round(max(self._peak, end), 1), "rss_end_mb": round(end, 1),
                "cpu_cores": float(len(os.sched_getaffinity(0)))}


class ResultLog:
    """Every published result as the pipeline hands it on (publish time is stamped)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_result(self, msg: dict[str, Any]) -> None:
        self.rows.append({"model": msg["model"], "seq": msg["seq"],
                          "t_capture_ns": msg["t_capture_ns"],
                          "t_publish_ns": msg["t_publish_ns"],
                          "latency_ms": dict(msg["latency_ms"])})


class OverlayProbe:
    """The overlay's receive side: a ZeroMQ SUB in its own thread (a socket lives in one
    thread) stamping the local receive time of every result, keyed by (model, seq)."""

    def __init__(self) -> None:
        self.rx: dict[tuple[str, int], int] = {}
        self.received = 0
        self.malformed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def connect(self, endpoint: str) -> None:
        connected = threading.Event()
        self._thread = threading.Thread(target=self._listen, args=(endpoint, connected),
                                        daemon=True, name="hepascope-bench-overlay")
        self._thread.start()
        connected.wait(5.0)

    def _listen(self, endpoint: str, connected: threading.Event) -> None:
        try:
            sub = Subscriber(endpoint, topics=(TOPIC_RESULT,))
        except BaseException as e:  # re-raised by close(): never swallowed
            self.error = e
            connected.set()
            return
        connected.set()
        try:
            while not self._stop.is_set():
                if not sub.poll(20):
                    continue
                for _, msg in sub.drain():
                    self.rx[(msg["model"], msg["seq"])] = time.monotonic_ns()
        finally:
            self.received, self.malformed = sub.received, sub.malformed
            sub.close()

    def close(self) -> None:
        time.sleep(TAIL_S)  # results published just before the end are still on the wire
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self.error is not None:
            raise self.error


def decode_cost_ms(source: str, fps: float, frames: int = DECODE_PROBE_FRAMES) -> list[float]:
    """Per-frame production time of ``source`` run unpaced (render for a phantom, demux +
    decode for a file): the grab thread's cost, which the pipeline overlaps with inference.
    Timed before the run because ``run_pipeline`` opens its own source."""
    src = open_source(source, source_options(source, fps, max_rate=True))
    out: list[float] = []
    with src:
        it = iter(src)
        for _ in range(frames):
            t0 = time.monotonic_ns()
            if next(it, None) is None:
                break
            out.append((time.monotonic_ns() - t0) * _MS)
    return out


def windows_table(rows: list[dict[str, Any]], seconds: float,
                  windows: int) -> list[dict[str, Any]]:
    """Per window of publish time (from the first result's capture): results, latency
    p50/p99, frames dropped (the seq gaps before each result published in it) and dropped
    so far."""
    if not rows:
        return []
    rows = sorted(rows, key=lambda r: r["t_publish_ns"])
    t0, width = rows[0]["t_capture_ns"], seconds / windows
    lat: list[list[float]] = [[] for _ in range(windows)]
    dropped = [0] * windows
    last = -1  # seq of the previous result: frames before the first one count as dropped
    for r in rows:
        i = min(int((r["t_publish_ns"] - t0) / 1e9 / width), windows - 1)
        lat[i].append(r["latency_ms"]["total"])
        dropped[i] += r["seq"] - last - 1
        last = r["seq"]
    out, so_far = [], 0
    for i in range(windows):
        so_far += dropped[i]
        out.append({"from_s": round(i * width, 3), "results": len(lat[i]),
                    "latency_p50_ms": pct(lat[i], 50), "latency_p99_ms": pct(lat[i], 99),
                    "dropped": dropped[i], "dropped_so_far": so_far})
    return out
