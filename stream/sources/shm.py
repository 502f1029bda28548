"""Frames of another pipeline's shared-memory ring (``shm:NAME``): a second consumer of a
running grabber (a recorder, a second model, a display) without decoding twice.

The ring's new generations (the writer's frames changed size) are followed. A writer that
dies without closing the ring (SIGKILL, a crash) is noticed at the next poll without a
frame, from its pid and start time in the ring's header: ``source_health`` then says
``writer_alive: false`` and iteration ends with ``SourceWriterGoneError``."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from hepascope.core.errors import SourceWriterGoneError
from hepascope.core.frame import Frame
from hepascope.stream.ring import RingReader
from hepascope.stream.sources.base import SourceBase


class RingSource(SourceBase):
    """Every frame written to ring ``name`` after opening; ends when the writer closes.

    Frames keep the writer's capture time (latency stays measured from the real capture),
    and are renumbered from 0 for this source; frames lost to overruns are in ``drops``.
    """

    def __init__(self, name: str, *, poll_s: float = 0.1, source_id: str | None = None) -> None:
        if not name:
            raise ValueError("ring name must be non-empty")
        if poll_s <= 0:
            raise ValueError("poll_s must be > 0")
        super().__init__(source_id or f"shm:{name}")
        self.name = name
        self.poll_s = poll_s
        self._reader: RingReader | None = None
        self._writer_alive = True

    @property
    def drops(self) -> int:
        return 0 if self._reader is None else self._reader.drops

    def stats(self) -> dict[str, object]:
        """``source_health``: whether the ring's writer lives, frames lost to overruns, and
        the ring generation being read."""
        r = self._reader
        return {"writer_alive": self._writer_alive, "drops": self.drops,
                "generation": 0 if r is None or r.closed else r.generation}

    def _open(self) -> None:
        self._reader = RingReader(self.name, start="latest")

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        return ((f.image, f.pts_s) for f in self)

    def __iter__(self) -> Iterator[Frame]:
        # Overridden rather than _frames: the writer's capture time is kept.
        self.open()
        assert self._reader is not None
        reader = self._reader
        while True:
            frame = reader.next(timeout_s=self.poll_s)
            if frame is None:
                if reader.writer_closed:
                    return
                if not reader.writer_alive:
                    self._writer_alive = False
                    pid = reader.writer_pid
                    raise SourceWriterGoneError(
                        f"{self.source_id}: the ring's writer (pid {pid}) died without closing "
                        "it; no more frames will come")
                continue
            yield self._emit(frame.image, frame.pts_s, frame.t_capture_ns)

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
