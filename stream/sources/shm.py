"""Frames of another pipeline's shared-memory ring (``shm:NAME``): a second consumer of a
running grabber (a recorder, a second model, a display) without decoding twice."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from hepascope.stream.frame import Frame
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

    @property
    def drops(self) -> int:
        return 0 if self._reader is None else self._reader.drops

    def _open(self) -> None:
        self._reader = RingReader(self.name, start="latest")

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        return ((f.image, f.pts_s) for f in self)

    def __iter__(self) -> Iterator[Frame]:
        # Overridden rather than _frames: the writer's capture time is kept.
        self.open()
        assert self._reader is not None
        while True:
            frame = self._reader.next(timeout_s=self.poll_s)
            if frame is None:
                if self._reader.writer_closed:
                    return
                continue
            yield self._emit(frame.image, frame.pts_s, frame.t_capture_ns)

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
