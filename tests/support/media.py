"""Videos the tests make for themselves with PyAV."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def frame_pattern(i: int, h: int, w: int) -> np.ndarray:
    """A BGR frame whose content encodes ``i`` (a bright bar moving right) on speckle."""
    rng = np.random.default_rng(i)
    img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
    x = (i * 7) % max(w - 16, 1)
    img[h // 4 : 3 * h // 4, x : x + 16] = 220
    return img


def bar_position(img: np.ndarray) -> int:
    """Left edge of the bright bar ``frame_pattern`` draws (survives lossy coding)."""
    h = img.shape[0]
    cols = img[h // 4 : 3 * h // 4].astype(np.float32).mean(axis=(0, 2))
    run = np.convolve(cols, np.ones(16) / 16, mode="valid")
    return int(np.argmax(run))


def matches_pattern(img: np.ndarray, i: int) -> bool:
    """Whether ``img`` is (a lossy copy of) ``frame_pattern(i)``."""
    return abs(bar_position(img) - (i * 7) % max(img.shape[1] - 16, 1)) <= 2


def write_video(path: Path, *, frames: int = 30, fps: int = 30, size: tuple[int, int] = (384, 768),
                codec: str = "libx264", gop: int | None = None, preset: str = "ultrafast",
                pattern: Callable[[int, int, int], np.ndarray] = frame_pattern) -> Path:
    """A video (yuv420p) of ``frames`` frames ``pattern(i, h, w)`` (BGR) at ``fps``; size is
    (H, W); the container follows the suffix (.mp4, .mkv, .avi, .ts); a key frame every
    ``gop`` frames where given (the encoder's default otherwise)."""
    h, w = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream(codec, rate=fps, options={"preset": preset} if codec == "libx264" else {})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if gop is not None:
            s.gop_size = gop
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(pattern(i, h, w), format="bgr24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path
