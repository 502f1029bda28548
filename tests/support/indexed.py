"""Frames that carry their own index, so a test can count exactly which frames a stream
lost: 16 black/white blocks across the top (bit b set = white block b), drawn like
``gst_rtsp_server.py`` draws them, over a moving ramp; and an H.264 file of such frames
for ``hepascope.stream.rtsp_serve``."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS, BAND = 16, 32  # as in gst_rtsp_server.py
WHITE, BLACK = 235, 16
WIDTH, HEIGHT = 768, 384  # the default layout's dual view: results go through unchanged


def draw(k: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """BGR frame ``k``: its index mod 2**16 as blocks, a ramp shifted by ``k`` below."""
    img = np.empty((height, width, 3), np.uint8)
    ramp = (np.arange(2 * width) * 2) % 220 + 16
    s = (4 * k) % width
    img[BAND:] = ramp[s:s + width, None].astype(np.uint8)
    img[:BAND] = BLACK
    block = width // BITS
    for b in range(BITS):
        if (k >> b) & 1:
            img[:BAND, b * block:(b + 1) * block] = WHITE
    return img


def read(img: np.ndarray) -> int | None:
    """The index drawn in ``img``; None where a block is neither clearly white nor black
    (a frame that is not one of ours, or damaged)."""
    block = img.shape[1] // BITS
    index = 0
    for b in range(BITS):
        centre = float(img[6:BAND - 6, b * block + 6:(b + 1) * block - 6].mean())
        if centre > 170:
            index |= 1 << b
        elif centre > 80:
            return None
    return index


def write_clip(path: Path, frames: int, *, fps: int = 30, gop: int = 15) -> Path:
    """An H.264 MP4 of frames 0 .. ``frames``-1, a keyframe every ``gop``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={
            "preset": "ultrafast", "tune": "zerolatency", "crf": "30", "g": str(gop),
            "keyint_min": str(gop), "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for k in range(frames):
            vf = av.VideoFrame.from_ndarray(draw(k), format="bgr24")
            vf.pts, vf.time_base = k, Fraction(1, fps)
            out.mux(stream.encode(vf))
        out.mux(stream.encode())
    return path
