"""Small counters the pipeline and overlay share: rolling latency percentiles and rates."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


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
