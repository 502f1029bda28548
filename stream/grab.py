"""The capture end of the pipeline: the grabber thread's loop and the frame ring it writes,
created at the first frame and renewed (a new generation) when the frames change size or
pixel format; the backpressure that keeps an unpaced source from decoding frames no model
will take; and the source's health as telemetry reports it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from hepascope.core.frame import Frame
from hepascope.stream.ring_owner import sweep_stale
from hepascope.stream.ring_writer import RingWriter
from hepascope.stream.sources.base import Source
from hepascope.stream.stats import ModelTally, RunStats

log = logging.getLogger(__name__)


class LazyRing:
    """The frame ring, created at the first frame (its slots are sized to that frame). A
    frame of another size or pixel format (a scanner switching depth or preset) starts a
    new generation of the ring sized for it, which every reader follows by itself (the
    inference child, the recorder, the overlay): counted in ``geometry_changes``. Creating
    the first generation also removes rings that dead runs left in /dev/shm."""

    def __init__(self, name: str, slots: int, on_ring: Callable[[str], None] | None) -> None:
        self.name, self.slots, self._on_ring = name, slots, on_ring
        self.ready = threading.Event()
        self.geometry_changes = 0
        self._shape: tuple[int, ...] | None = None
        self._writer: RingWriter | None = None
        self._closed = False
        self._lock = threading.Lock()  # close() runs in the publish thread, write() in grab

    def write(self, frame: Frame) -> None:
        created = False
        with self._lock:
            if self._closed:  # the run is over: a last frame in flight is let go
                return
            shape = frame.image.shape
            if self._writer is None:
                sweep_stale()
                self._writer = RingWriter(self.name, slots=self.slots,
                                          slot_bytes=frame.image.nbytes)
                created = True
            elif shape != self._shape:
                self._regenerate(frame)
            self._shape = shape
        if created:
            self.ready.set()
            if self._on_ring is not None:  # before the first write: a recorder misses nothing
                self._on_ring(self.name)
        with self._lock:
            if self._writer is not None:
                self._writer.write(frame)

    def _regenerate(self, frame: Frame) -> None:
        assert self._writer is not None and self._shape is not None
        self.geometry_changes += 1
        self._writer.new_generation(frame.image.nbytes)
        log.info("frames changed from %s to %s at frame %d: ring %s generation %d",
                 _geometry(self._shape), _geometry(frame.image.shape), frame.seq, self.name,
                 self._writer.generation)

    def close(self) -> None:
        with self._lock:
            writer, self._writer, self._closed = self._writer, None, True
        if writer is not None:
            writer.close()


def _geometry(shape: tuple[int, ...]) -> str:
    """``640x480 BGR`` / ``640x480 grey``: a frame's size and pixel format for the log."""
    return f"{shape[1]}x{shape[0]} {'grey' if len(shape) == 2 else 'BGR'}"


class Backpressure:
    """An unpaced source (a file replayed as fast as it decodes) is decoded only as fast as
    the main model takes frames: after writing frame n the grabber waits, before decoding
    the next, until the model has seen frame n - ``slack`` (0: taken, for a model in a
    thread; 1: answered, for a child process, which reports only results), so decoding
    overlaps inference without stealing the cores it needs for frames that would be
    dropped. A model that does not move for ``timeout_s`` lets the grabber go on (a hung
    model never stops capture): counted in ``timeouts``."""

    def __init__(self, tally: ModelTally, slack: int, timeout_s: float = 5.0) -> None:
        if slack < 0 or timeout_s <= 0:
            raise ValueError(f"slack must be >= 0 and timeout_s > 0, got {slack}, {timeout_s}")
        self.tally, self.slack, self.timeout_s = tally, slack, timeout_s
        self.waits = 0     # frames after which the grabber had to wait
        self.timeouts = 0  # waits given up on

    def wait(self, seq: int, stop: threading.Event) -> None:
        """Block until the model has seen frame ``seq - slack``, ``stop``, or the timeout."""
        want, tally = seq - self.slack, self.tally
        deadline = time.monotonic() + self.timeout_s
        with tally.seen:
            if tally.last_seq_seen >= want:
                return
            self.waits += 1
            while tally.last_seq_seen < want and not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    self.timeouts += 1
                    return
                tally.seen.wait(min(left, 0.05))

    def report(self) -> dict[str, int]:
        return {"backpressure_waits": self.waits, "backpressure_timeouts": self.timeouts}


def grab_loop(source: Source, ring: LazyRing, stats: RunStats, stop: threading.Event,
              pace: Backpressure | None = None) -> None:
    """Write each frame of ``source`` to ``ring`` until it ends or ``stop``; with ``pace``
    (an unpaced source), decode the next frame only when the model has taken this one."""
    with source:
        for frame in source:
            ring.write(frame)
            stats.frames_in += 1
            stats.last_seq_in = frame.seq
            stats.rate_in.tick(frame.t_capture_ns)
            if stop.is_set():
                break
            if pace is not None:
                pace.wait(frame.seq, stop)


def source_health(source: Source, ring: LazyRing) -> dict[str, Any]:
    """``source_health``: how often the frames changed size or format (every source), and
    a reconnecting or watchdog-guarded source's counters (outages, reconnects, frames lost;
    stalls, replacements; a ``shm:`` source's writer)."""
    stats = getattr(source, "stats", None)
    return {"source_health": {**(stats() if callable(stats) else {}),
                              "geometry_changes": ring.geometry_changes}}
