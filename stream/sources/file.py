"""Replay of a recorded video file through PyAV, paced by the file's own timestamps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.stream.errors import SourceNotFoundError
from hepascope.stream.sources._pyav import decode_bgr, open_container, video_stream
from hepascope.stream.sources.base import Pacer, SourceBase


class FileSource(SourceBase):
    """Frames of a video file in presentation order.

    ``speed`` scales the file's timestamps (2.0 plays twice as fast); ``max_rate`` ignores
    them and decodes as fast as possible; ``loop`` starts again at the end.
    """

    def __init__(self, path: str | Path, *, speed: float = 1.0, max_rate: bool = False,
                 loop: bool = False, source_id: str | None = None) -> None:
        self.path = Path(path)
        super().__init__(source_id or f"file:{self.path.name}")
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.pacer = Pacer(None if max_rate else speed)
        self.loop = loop
        self._container: Any = None
        self._stream: Any = None
        self.fps: float | None = None

    def _open(self) -> None:
        if not self.path.is_file():
            raise SourceNotFoundError(f"{self.path}: no such file")
        self._container = open_container(str(self.path))
        self._stream = video_stream(self._container, str(self.path))
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else None

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        index = 0
        while True:
            for image, pts in decode_bgr(self._container, self._stream, str(self.path)):
                if pts is None:  # no timestamps: fall back to the nominal rate
                    pts = index / (self.fps or 30.0)
                self.pacer.wait(pts)
                index += 1
                yield image, pts
            if not self.loop or index == 0:
                return
            self._container.seek(0)
            self.pacer.reset()

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
