"""The thin record that travels from a source through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured image.

    ``image`` is HxW (grey) or HxWx3 (BGR, OpenCV order) uint8; ``seq`` counts frames of
    one source from 0; ``t_capture_ns`` is ``time.monotonic_ns()`` when the frame left the
    grabber, the zero of every latency; ``pts_s`` is the media time where the source has
    one (files, RTSP), else None.
    """

    image: np.ndarray
    seq: int
    t_capture_ns: int
    source_id: str
    pts_s: float | None = None

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray):
            raise TypeError(f"Frame.image must be a numpy array, got {type(img).__name__}")
        if img.dtype != np.uint8:
            raise ValueError(f"Frame.image must be uint8, got {img.dtype}")
        if img.ndim == 3:
            if img.shape[2] != 3:
                raise ValueError(f"Frame.image must have 3 channels (BGR), got {img.shape[2]}")
        elif img.ndim != 2:
            raise ValueError(f"Frame.image must be HxW or HxWx3, got shape {img.shape}")
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError(f"Frame.image is empty: shape {img.shape}")
        if isinstance(self.seq, bool) or not isinstance(self.seq, (int, np.integer)):
            raise TypeError(f"Frame.seq must be an int, got {type(self.seq).__name__}")
        if self.seq < 0:
            raise ValueError(f"Frame.seq must be >= 0, got {self.seq}")
        if self.t_capture_ns < 0:
            raise ValueError(f"Frame.t_capture_ns must be >= 0, got {self.t_capture_ns}")
        if not isinstance(self.source_id, str) or not self.source_id:
            raise ValueError("Frame.source_id must be a non-empty string")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def bgr(self) -> np.ndarray:
        """The image as HxWx3 BGR (grey frames are replicated, not copied twice)."""
        if self.image.ndim == 3:
            return self.image
        return np.repeat(self.image[:, :, None], 3, axis=2)
