"""H.264 MP4 writing with PyAV, shared by the phantom's sessions and the overlay."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np


class Mp4Writer:
    """H.264 (libx264, yuv420p) MP4 writer: frame ``i`` gets pts ``i`` in a time base of
    ``1 / fps``, so the file's timestamps give the frame rate."""

    def __init__(self, path: str | Path, fps: float, width: int, height: int, crf: int = 20,
                 preset: str = "veryfast") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rate = Fraction(fps).limit_denominator(1001)
        self._c: Any = av.open(str(self.path), mode="w")
        self._s: Any = self._c.add_stream("libx264", rate=self.rate)
        # yuv420p needs even sizes: odd ones lose their last row / column
        self._s.width, self._s.height, self._s.pix_fmt = width // 2 * 2, height // 2 * 2, "yuv420p"
        self._s.options = {"crf": str(crf), "preset": preset}
        self._s.codec_context.time_base = 1 / self.rate
        self.count = 0

    def write(self, bgr: np.ndarray) -> None:
        bgr = bgr[: self._s.height, : self._s.width]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24")
        frame.pts = self.count
        frame.time_base = 1 / self.rate
        for pkt in self._s.encode(frame):
            self._c.mux(pkt)
        self.count += 1

    def close(self) -> None:
        if self._c is not None:
            for pkt in self._s.encode():
                self._c.mux(pkt)
            self._c.close()
            self._c = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
