"""The one small Protocol every frame source meets, and a base class that gives the
context-manager plumbing and frame numbering so each source file holds only its own logic.

A source is opened, iterated for ``Frame`` records (a generator, like PyAV's
``demux()``/``decode()``), and closed. Iteration ends when the source is exhausted; errors
are typed ``SourceError`` subclasses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import Protocol, runtime_checkable

import numpy as np

from hepascope.core.frame import Frame


@runtime_checkable
class Source(Protocol):
    """open, iterate, close; also a context manager."""

    source_id: str

    def open(self) -> None: ...

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Source: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class SourceBase:
    """Shared plumbing: ``with src:`` opens and closes; ``_emit`` stamps frames.

    Subclasses implement ``_open``, ``_frames`` (a generator of (image, pts_s)) and
    ``_close``. ``frames_out`` counts frames handed on.
    """

    source_id: str

    def __init__(self, source_id: str) -> None:
        if not source_id:
            raise ValueError("source_id must be non-empty")
        self.source_id = source_id
        self._opened = False
        self._seq = 0
        self.frames_out = 0

    @property
    def unpaced(self) -> bool:
        """Whether frames come as fast as they can be made (a file replayed with
        ``max_rate``): the pipeline then decodes only as fast as the model takes frames."""
        pacer = getattr(self, "pacer", None)
        return isinstance(pacer, Pacer) and pacer.speed is None

    # -- subclass hooks -------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # -- protocol ----------------------------------------------------------
    def open(self) -> None:
        if not self._opened:
            self._open()
            self._opened = True

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._close()

    def __iter__(self) -> Iterator[Frame]:
        self.open()
        for image, pts_s in self._frames():
            yield self._emit(image, pts_s)

    def _emit(self, image: np.ndarray, pts_s: float | None,
              t_capture_ns: int | None = None) -> Frame:
        """Stamp the next frame; capture time is now unless the source knows better."""
        t = time.monotonic_ns() if t_capture_ns is None else t_capture_ns
        frame = Frame(image, self._seq, t, self.source_id, pts_s)
        self._seq += 1
        self.frames_out += 1
        return frame

    def __enter__(self) -> SourceBase:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Pacer:
    """Sleeps so that media time ``pts_s`` is reached at wall time ``speed`` times slower or
    faster; ``speed=None`` means as fast as possible. Restart with ``reset()`` (on loop)."""

    def __init__(self, speed: float | None = 1.0) -> None:
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._t0_wall: float | None = None
        self._t0_media = 0.0

    def reset(self) -> None:
        self._t0_wall = None

    def wait(self, pts_s: float) -> None:
        if self.speed is None:
            return
        now = time.monotonic()
        if self._t0_wall is None:
            self._t0_wall, self._t0_media = now, pts_s
            return
        due = self._t0_wall + (pts_s - self._t0_media) / self.speed
        delay = due - now
        if delay > 0:
            time.sleep(delay)
