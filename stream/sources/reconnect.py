"""Reconnect with backoff: a source wrapper that survives a live stream going away.

``Reconnecting(factory)`` opens ``factory()`` and hands its frames on. When the inner source
fails with a ``SourceError`` (server killed, connection reset, read timeout) it closes it,
logs one warning line, waits with exponential backoff (with jitter, never above
``backoff_max_s``, cut short by ``close()``), opens a fresh ``factory()`` and goes on. A
source that can tell whether its server listens (``reachable(timeout_s)``; RTSP: one TCP
connect) and whose server did not at the start of a wait is probed every ``PROBE_S``
meanwhile: a restarted server is reopened within ``PROBE_S`` of listening again, not at the
next backoff step (up to ``backoff_max_s`` later), while a server that listens but fails
still gets the whole backoff. Frames
are renumbered so ``seq`` keeps increasing across reconnects (the overlay and the pipeline
drop a result whose ``seq`` goes back), and ``pts_s`` continues from the outage's wall time.

What it counts (attributes, and ``stats()`` for telemetry): ``outages`` (connections that
failed after delivering frames), ``reconnects`` (new connections that delivered a frame:
the stream is really back), ``failed_attempts`` (connections that failed before their first
frame), ``outage_s`` (seconds from the last frame before an outage to the first after it,
summed) and ``frames_lost``, an ESTIMATE of the frames the outages cost: the gap between
the last frame before and the first after, each taken at its connection's usual delay, in
frame periods of the stream's own clock (its pts), minus the one period that is no loss;
booked half a second after the stream is back (``sources/outage.py`` says why and how
exact: 20 of 20 outages exactly, against frames that carry their own index). Without pts,
arrival times x the rate measured before the outage.

``last_error`` is the failure of the outage going on now, None while frames flow; once the
stream is back the error moves to ``previous_error``, with ``recovered_at_utc`` (ISO 8601,
UTC) saying when the stream came back.

Errors that retrying cannot fix are raised at once while the stream has never worked:
``ConfigError``, ``SourceNotFoundError``, ``SourceFormatError`` and an RTSP/HTTP 4xx reply
(404 not found, 401/403 refused), never retried forever. By default any failure of the very
first open is raised at once (a wrong URL fails at startup, before anything is bound);
``retry_first_open=True`` retries transient first-open failures too (pipeline started
before the scanner). ``max_attempts`` consecutive failed attempts end the retrying with
the last error; None retries for as long as it takes.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from hepascope.core.errors import (
    ConfigError,
    SourceError,
    SourceFormatError,
    SourceNotFoundError,
)
from hepascope.core.frame import Frame
from hepascope.stream.sources.base import Source
from hepascope.stream.sources.outage import LossEstimator

log = logging.getLogger(__name__)

RATE_WINDOW_S = 2.0  # capture times kept to measure the frame rate before an outage
# A rate measured over less than this (a connection that failed soon after it began, whose
# first frames may come in a burst) is not trusted: the last one measured over longer is.
RATE_MIN_SPAN_S = 0.5
_PERMANENT = (ConfigError, SourceNotFoundError, SourceFormatError)
PROBE_S = 0.05  # how often a server that does not listen is probed during a backoff wait


def is_permanent(e: BaseException) -> bool:
    """Whether retrying cannot help: a bad configuration, a missing or undecodable input, or
    a 4xx reply of the server (not 429 Too Many Requests) anywhere in the cause chain."""
    import av.error

    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, _PERMANENT):
            return True
        if isinstance(seen, av.error.HTTPClientError) and not isinstance(
                seen, av.error.HTTPTooManyRequestsError):
            return True
        seen = seen.__cause__
    return False


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or value == float("inf"):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class Renumber:
    """Continuous numbering over a sequence of inner sources: ``seq`` from 0 up, ``pts_s``
    shifted so it goes on from the last frame by the wall time that passed. Also measures
    the frame rate over the last ``RATE_WINDOW_S`` of capture times."""

    def __init__(self, source_id: str) -> None:
        self.source_id = source_id
        self.seq = 0
        self.last_t_ns: int | None = None
        self._last_pts: float | None = None
        self._pts_shift: float | None = 0.0  # None: to be set by the first frame of a new inner
        self._times: deque[int] = deque()
        self._trusted_rate: float | None = None

    def new_inner(self) -> None:
        """The next frame comes from a fresh inner source (its media time restarts)."""
        self._pts_shift = None

    def rate_hz(self) -> float | None:
        """Frames per second over the last ``RATE_WINDOW_S`` of this inner source; over less
        than ``RATE_MIN_SPAN_S``, the last rate measured over longer if any (None before
        two frames)."""
        span = (self._times[-1] - self._times[0]) / 1e9 if self._times else 0.0
        if span <= 0.0:
            return self._trusted_rate
        rate = (len(self._times) - 1) / span
        if span >= RATE_MIN_SPAN_S:
            self._trusted_rate = rate
        return self._trusted_rate or rate

    def emit(self, frame: Frame) -> Frame:
        pts = frame.pts_s
        if pts is not None:
            if self._pts_shift is None:
                gap = 0.0 if self.last_t_ns is None else (frame.t_capture_ns - self.last_t_ns) / 1e9
                self._pts_shift = (self._last_pts or 0.0) + max(gap, 0.0) - pts \
                    if self._last_pts is not None else 0.0
            pts += self._pts_shift
            self._last_pts = pts
        out = Frame(frame.image, self.seq, frame.t_capture_ns, self.source_id, pts)
        self.seq += 1
        self.last_t_ns = frame.t_capture_ns
        self._times.append(frame.t_capture_ns)
        while self._times[-1] - self._times[0] > RATE_WINDOW_S * 1e9:
            self._times.popleft()
        return out

    def forget_rate(self) -> None:
        """The inner source failed: its capture times end here (the rate measured is kept)."""
        self.rate_hz()
        self._times.clear()


class Reconnecting:
    """A ``Source`` that reopens ``factory()`` with backoff whenever it fails (module
    docstring). ``factory`` builds, not opens, an inner source; it is called once here, so
    a bad configuration raises ``ConfigError`` from the constructor."""

    def __init__(self, factory: Callable[[], Source], *, backoff_initial_s: float = 0.1,
                 backoff_max_s: float = 1.0, max_attempts: int | None = None,
                 jitter: float = 0.25, retry_first_open: bool = False,
                 source_id: str | None = None) -> None:
        self.backoff_initial_s = _positive("backoff_initial_s", backoff_initial_s)
        self.backoff_max_s = _positive("backoff_max_s", backoff_max_s)
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError(f"backoff_max_s ({backoff_max_s}) must be >= backoff_initial_s "
                              f"({backoff_initial_s})")
        if max_attempts is not None and (isinstance(max_attempts, bool) or max_attempts < 1):
            raise ConfigError(f"max_attempts must be >= 1 or None, got {max_attempts!r}")
        if not 0.0 <= jitter < 1.0:
            raise ConfigError(f"jitter must be in [0, 1), got {jitter!r}")
        self._factory = factory
        self.max_attempts = max_attempts
        self.jitter = float(jitter)
        self.retry_first_open = retry_first_open
        self._inner: Source | None = factory()
        self.source_id = source_id or self._inner.source_id
        self._numbers = Renumber(self.source_id)
        self._closed = threading.Event()
        self._opened = False
        self._lock = threading.Lock()
        self._iterating: int | None = None  # thread ident of the iterating thread
        self._rng = random.Random()
        self._ever_delivered = False
        self._consecutive = 0  # failures since the last frame: drives backoff, max_attempts
        self._outage_t_ns: int | None = None  # last frame before the current outage
        self._loss = LossEstimator()
        self.outages = 0
        self.reconnects = 0
        self.failed_attempts = 0
        self.outage_s = 0.0
        self.frames_lost = 0
        self.last_outage_s: float | None = None
        self.last_error: str | None = None  # the current outage's; None while connected
        self.previous_error: str | None = None  # the last one the stream recovered from
        self.recovered_at_utc: str | None = None  # when it did (ISO 8601, UTC)

    # -- counters ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._outage_t_ns is None and self._opened

    def stats(self) -> dict[str, Any]:
        """The counters as one flat map (for telemetry and summaries)."""
        return {"outages": self.outages, "reconnects": self.reconnects,
                "failed_attempts": self.failed_attempts, "outage_s": round(self.outage_s, 3),
                "frames_lost": self.frames_lost, "connected": self.connected,
                "last_error": self.last_error, "previous_error": self.previous_error,
                "recovered_at_utc": self.recovered_at_utc}

    # -- protocol ----------------------------------------------------------------------
    def open(self) -> None:
        """Open the first inner source; its failure is raised (see ``retry_first_open``)."""
        if self._opened:
            return
        if self._closed.is_set():
            raise SourceError(f"{self.source_id}: closed")
        inner = self._inner if self._inner is not None else self._factory()
        self._inner = inner
        try:
            inner.open()
        except SourceError as e:
            self._drop_inner()
            if not self.retry_first_open or is_permanent(e):
                raise
            self._failed(e)
            self._inner = self._reopen(e)
            if self._inner is None:
                raise SourceError(f"{self.source_id}: closed while opening") from e
        self._opened = True

    def __iter__(self) -> Iterator[Frame]:
        self.open()
        self._iterating = threading.get_ident()
        try:
            while not self._closed.is_set():
                inner = self._inner
                assert inner is not None
                try:
                    for frame in inner:
                        yield self._deliver(frame)
                        if self._closed.is_set():
                            return
                    return  # the inner source ended without an error: the stream is over
                except SourceError as e:
                    if self._closed.is_set():
                        return
                    if not self._ever_delivered and is_permanent(e):
                        raise
                    self._drop_inner()
                    self._failed(e)
                    self._inner = self._reopen(e)
                    if self._inner is None:  # closed while waiting
                        return
        finally:
            self._iterating = None
            self._book_loss(self._loss.settle())  # an outage that ended shortly before
            if self._closed.is_set():
                self._drop_inner()

    def close(self) -> None:
        """Stop; cuts a backoff wait short. From another thread than the iterating one it
        only signals: the iterating thread closes the inner source when its read returns
        (closing a demuxer under a running read is not safe)."""
        self._closed.set()
        self._opened = False
        if self._iterating is None or self._iterating == threading.get_ident():
            self._drop_inner()

    def interrupt(self) -> None:
        """Thread-safe: end the iteration at the next read or backoff wait (the pipeline's
        stop calls it, so stopping during an outage does not wait for the server)."""
        self._closed.set()

    def __enter__(self) -> Reconnecting:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------
    def _deliver(self, frame: Frame) -> Frame:
        if self._outage_t_ns is not None:  # first frame after an outage: the stream is back
            gap_s = max(0.0, (frame.t_capture_ns - self._outage_t_ns) / 1e9)
            self.reconnects += 1
            self.outage_s += gap_s
            self.last_outage_s = gap_s
            self._outage_t_ns = None
            log.info("%s: stream back after %.2f s", self.source_id, gap_s)
        if self.last_error is not None:  # frames flow (again): the failure is history
            self.previous_error, self.last_error = self.last_error, None
            self.recovered_at_utc = datetime.now(UTC).isoformat(timespec="milliseconds")
        self._book_loss(self._loss.frame(frame.t_capture_ns, frame.pts_s))
        self._ever_delivered = True
        self._consecutive = 0
        return self._numbers.emit(frame)

    def _book_loss(self, lost: int | None) -> None:
        if lost is None:
            return
        self.frames_lost += lost
        log.info("%s: ~%d frames lost in the last outage (estimated from %s)",
                 self.source_id, lost, "pts" if self._loss.method == "pts" else "arrivals")

    def _failed(self, e: SourceError) -> None:
        """Book a failure: the start of an outage (one warning) or one more failed attempt."""
        self.last_error = str(e)
        self._consecutive += 1
        if self._outage_t_ns is None and self._ever_delivered:
            self.outages += 1
            self._outage_t_ns = self._numbers.last_t_ns or time.monotonic_ns()
            self._book_loss(self._loss.outage(self._numbers.rate_hz()))
            self._numbers.forget_rate()
            log.warning("%s: source failed (%s); reconnecting with backoff %.2f-%.2f s",
                        self.source_id, e, self.backoff_initial_s, self.backoff_max_s)
            return
        self.failed_attempts += 1
        if self.failed_attempts == 1 and not self._ever_delivered:
            log.warning("%s: cannot open (%s); retrying with backoff %.2f-%.2f s",
                        self.source_id, e, self.backoff_initial_s, self.backoff_max_s)
        else:
            log.info("%s: attempt failed: %s", self.source_id, e)

    def _delay(self, attempt: int) -> float:
        base = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** min(attempt, 30))
        return base * (1.0 - self.jitter * self._rng.random())  # jitter only shortens

    def _reopen(self, error: SourceError) -> Source | None:
        """Back off, build and open a fresh inner source; repeat until one opens. None when
        closed meanwhile; the last error once ``max_attempts`` attempts in a row failed."""
        while True:
            if self.max_attempts is not None and self._consecutive > self.max_attempts:
                raise error
            inner = self._factory()
            if not self._wait(self._delay(self._consecutive - 1), inner):
                inner.close()
                return None
            try:
                inner.open()
            except SourceError as e:
                inner.close()
                error = e
                self._failed(e)
                continue
            self._numbers.new_inner()
            return inner

    def _wait(self, delay: float, inner: Source) -> bool:
        """Wait out ``delay``, or less: until ``inner``'s server listens again if it did not
        at the start (module docstring). False when closed meanwhile."""
        probe: Callable[[float], bool] | None = getattr(inner, "reachable", None)
        deadline = time.monotonic() + delay
        if probe is None or probe(min(PROBE_S, delay)):  # up (and failing) or no probe
            return not self._closed.wait(max(0.0, deadline - time.monotonic()))
        while (remaining := deadline - time.monotonic()) > 0:
            if self._closed.wait(min(PROBE_S, remaining)):
                return False
            if probe(PROBE_S):
                return True
        return not self._closed.is_set()

    def _drop_inner(self) -> None:
        with self._lock:
            inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()
