"""Capture card (or any V4L2 / camera device) through OpenCV's VideoCapture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hepascope.core.errors import SourceError, SourceNotFoundError
from hepascope.stream.sources.base import SourceBase

# V4L2 for capture cards on Linux; FFMPEG lets the same code path read a file, which is how
# the tests exercise it on machines without a device.
_BACKENDS = {"v4l2": cv2.CAP_V4L2, "any": cv2.CAP_ANY, "ffmpeg": cv2.CAP_FFMPEG}


class CaptureSource(SourceBase):
    """Frames from a device path (``/dev/video0``) or index (``0``).

    ``width``/``height``/``fps`` are requests; the driver may pick the nearest mode, and the
    granted mode is in ``granted`` after open.
    """

    def __init__(self, device: str | int, *, width: int | None = None, height: int | None = None,
                 fps: float | None = None, backend: str = "v4l2",
                 source_id: str | None = None) -> None:
        super().__init__(source_id or f"cam:{device}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {sorted(_BACKENDS)}, got {backend!r}")
        for label, v in (("width", width), ("height", height), ("fps", fps)):
            if v is not None and v <= 0:
                raise ValueError(f"{label} must be > 0, got {v}")
        if isinstance(device, int) and device < 0:
            raise ValueError(f"device index must be >= 0, got {device}")
        self.device = device
        self.backend = backend
        self.request = (width, height, fps)
        self.granted: tuple[int, int, float] | None = None
        self._cap: Any = None

    def _open(self) -> None:
        if isinstance(self.device, str) and not Path(self.device).exists():
            raise SourceNotFoundError(f"{self.device}: no such device")
        cap = cv2.VideoCapture(self.device, _BACKENDS[self.backend])
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.device}: cannot open capture device ({self.backend})")
        width, height, fps = self.request
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if fps:
            cap.set(cv2.CAP_PROP_FPS, fps)
        # One buffered frame: a capture card must deliver the newest image, not a backlog.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.granted = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                        int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), float(cap.get(cv2.CAP_PROP_FPS)))
        self._cap = cap

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        while True:
            ok, image = self._cap.read()
            if not ok:
                return  # device unplugged or end of a file: the stream is over
            if image.ndim == 3 and image.shape[2] == 4:
                image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
            yield np.ascontiguousarray(image), None

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
