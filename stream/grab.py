"""The capture end of the pipeline: the grabber thread's loop and the frame ring it writes,
created at the first frame and renewed (a new generation) when the frames change size or
pixel format; and the source's health as telemetry reports it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from hepascope.core.frame import Frame
from hepascope.stream.ring_owner import sweep_stale
from hepascope.stream.ring_writer import RingWriter
from hepascope.stream.sources.base import Source
from hepascope.stream.stats import RunStats

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


def grab_loop(source: Source, ring: LazyRing, stats: RunStats, stop: threading.Event) -> None:
    with source:
        for frame in source:
            ring.write(frame)
            stats.frames_in += 1
            stats.last_seq_in = frame.seq
            stats.rate_in.tick(frame.t_capture_ns)
            if stop.is_set():
                break


def source_health(source: Source, ring: LazyRing) -> dict[str, Any]:
    """``source_health``: how often the frames changed size or format (every source), and
    a reconnecting or watchdog-guarded source's counters (outages, reconnects, frames lost;
    stalls, replacements; a ``shm:`` source's writer)."""
    stats = getattr(source, "stats", None)
    return {"source_health": {**(stats() if callable(stats) else {}),
                              "geometry_changes": ring.geometry_changes}}
