"""Counters the pipeline and overlay share: rolling latency percentiles, rates, and the
per-model tallies and run summary of the pipeline."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hepascope.stream.answer import AnswerTally


class LatencyWindow:
    """The last ``size`` latencies (ms); percentiles over them. Thread-safe."""

    def __init__(self, size: int = 300) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)

    def percentile(self, q: float) -> float:
        with self._lock:
            if not self._values:
                return 0.0
            return float(np.percentile(np.fromiter(self._values, float), q))


class RateMeter:
    """Events per second over the last ``window_s`` seconds. Thread-safe."""

    def __init__(self, window_s: float = 1.0) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_ns = int(window_s * 1e9)
        self._times: deque[int] = deque()
        self._lock = threading.Lock()
        self.total = 0

    def tick(self, t_ns: int | None = None) -> None:
        t = time.monotonic_ns() if t_ns is None else t_ns
        with self._lock:
            self._times.append(t)
            self.total += 1
            self._trim(t)

    def _trim(self, now: int) -> None:
        while self._times and now - self._times[0] > self.window_ns:
            self._times.popleft()

    def rate(self) -> float:
        now = time.monotonic_ns()
        with self._lock:
            self._trim(now)
            return len(self._times) * 1e9 / self.window_ns


class LatencyHistogram:
    """Whole-run latency distribution in fixed memory (a surgery lasts hours): 0.05 ms bins
    up to ``max_ms``, beyond that one overflow bin; exact count, mean and maximum."""

    def __init__(self, max_ms: float = 2000.0, bin_ms: float = 0.05) -> None:
        if max_ms <= 0 or bin_ms <= 0:
            raise ValueError("max_ms and bin_ms must be > 0")
        self.bin_ms = bin_ms
        self._counts = np.zeros(int(max_ms / bin_ms) + 1, np.int64)
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, ms: float) -> None:
        self._counts[min(max(int(ms / self.bin_ms), 0), len(self._counts) - 1)] += 1
        self.count += 1
        self.total += ms
        self.max = max(self.max, ms)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentile(self, q: float) -> float:
        """Upper edge of the bin holding the q-th percentile (the maximum if it overflows)."""
        if not self.count:
            return 0.0
        rank = q / 100.0 * self.count
        i = int(np.searchsorted(np.cumsum(self._counts), max(rank, 1), side="left"))
        return self.max if i >= len(self._counts) - 1 else min((i + 1) * self.bin_ms, self.max)


@dataclass
class ModelTally:
    """Counters of one model: its thread counts frames (ints: GIL-atomic updates), the
    publish thread its latencies."""

    model: str
    window_size: int = 300
    frames_seen: int = 0  # frames its thread took from the ring
    frames_out: int = 0   # results published
    dropped: int = 0      # frames its thread never took
    invalid_outputs: int = 0  # results published as model_fault (output not probabilities)
    last_seq_out: int = -1    # the newest frame it gave a result for
    last_seq_seen: int = -1   # the newest frame it took (a child process: answered)
    seen: threading.Condition = field(default_factory=threading.Condition, repr=False)
    rate_out: RateMeter = field(default_factory=RateMeter)
    totals: LatencyHistogram = field(default_factory=LatencyHistogram)
    stage_sum_ms: dict[str, float] = field(default_factory=dict)
    window: LatencyWindow = field(init=False)

    def __post_init__(self) -> None:
        self.window = LatencyWindow(self.window_size)

    def took(self, seq: int, last: int) -> None:
        """The model took frame ``seq``; the frames between it and ``last``, the one it
        took before, it never took: dropped."""
        self.dropped += max(seq - last - 1, 0)
        self.frames_seen += 1
        self.saw(seq)

    def saw(self, seq: int) -> None:
        """The model took frame ``seq`` (wakes a grabber waiting to decode the next)."""
        with self.seen:
            self.last_seq_seen = max(self.last_seq_seen, seq)
            self.seen.notify_all()

    def count_result(self, seq: int, fault: bool) -> None:
        """One more result of this model (for frame ``seq``; ``fault``: a model fault), on
        its way to the publisher."""
        self.frames_out += 1
        self.last_seq_out = max(self.last_seq_out, seq)
        self.invalid_outputs += fault

    def add(self, lat: dict[str, float], now_ns: int) -> None:
        self.rate_out.tick(now_ns)
        self.window.add(lat["total"])
        self.totals.add(lat["total"])
        for k, v in lat.items():
            self.stage_sum_ms[k] = self.stage_sum_ms.get(k, 0.0) + v

    def telemetry(self) -> dict[str, Any]:
        """This model's entry in telemetry's ``models`` list."""
        return {"model": self.model, "frames_seen": self.frames_seen,
                "frames_out": self.frames_out, "dropped": self.dropped,
                "invalid_outputs": self.invalid_outputs,
                "fps_out": round(self.rate_out.rate(), 2),
                "latency_p50_ms": round(self.window.percentile(50), 3),
                "latency_p99_ms": round(self.window.percentile(99), 3)}

    def summary(self, seconds: float) -> dict[str, Any]:
        tot, n = self.totals, max(self.totals.count, 1)
        return {
            "model": self.model, "frames_seen": self.frames_seen,
            "frames_out": self.frames_out, "dropped": self.dropped,
            "invalid_outputs": self.invalid_outputs,
            "results_per_s": round(self.frames_out / seconds, 2),
            "latency_p50_ms": round(tot.percentile(50), 2),
            "latency_p99_ms": round(tot.percentile(99), 2),
            "latency_max_ms": round(tot.max, 2),
            "stage_mean_ms": {k: round(v / n, 3) for k, v in self.stage_sum_ms.items()},
        }


@dataclass
class RunStats:
    """Counters of one run: frames captured, and one tally per model (the main one first)."""

    main: ModelTally
    side: list[ModelTally] = field(default_factory=list)
    frames_in: int = 0
    last_seq_in: int = -1  # the newest frame the source delivered
    rate_in: RateMeter = field(default_factory=RateMeter)
    t_start_ns: int = field(default_factory=time.monotonic_ns)
    answers: AnswerTally = field(default_factory=AnswerTally)  # fed every published result

    @property
    def models(self) -> list[ModelTally]:
        return [self.main, *self.side]

    def settle(self) -> None:
        """At the end: frames captured after a model's last look were never seen either."""
        for m in self.models:
            m.dropped = self.frames_in - m.frames_seen

    def fault_counts(self) -> dict[str, int]:
        """The main model's fault counters, for the top level of telemetry and summary."""
        return {"invalid_outputs": self.main.invalid_outputs}

    def lost_at_end(self) -> int:
        """Frames the source delivered after the newest one the main model answered (by
        sequence number): once the source has ended, frames that never get a result."""
        return max(self.last_seq_in - self.main.last_seq_out, 0)

    def summary(self) -> dict[str, Any]:
        """The main model's figures at the top level (as before side models existed), and
        every model's under ``models``; last, the recording's answer of the main model
        (``answer``) and of every model (``answers``, stream/answer.py)."""
        seconds = max((time.monotonic_ns() - self.t_start_ns) / 1e9, 1e-9)
        main = self.main.summary(seconds)
        return {
            "seconds": round(seconds, 3),
            "frames_in": self.frames_in,
            "frames_out": main["frames_out"],
            "dropped": main["dropped"],
            "fps_in": round(self.frames_in / seconds, 2),
            "invalid_outputs": main["invalid_outputs"],
            **{k: main[k] for k in ("results_per_s", "latency_p50_ms", "latency_p99_ms",
                                    "latency_max_ms", "stage_mean_ms")},
            "models": [main, *(m.summary(seconds) for m in self.side)],
            "answer": self.answers.answer(self.main.model),
            "answers": self.answers.answers([m.model for m in self.models]),
        }
