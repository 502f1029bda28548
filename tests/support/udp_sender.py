"""A live MPEG-TS/H.264 sender over UDP, as an encoder would push it: FFmpeg's own mpegts
muxer and udp protocol (through PyAV), in its own process so that a test can SIGKILL it.

    python tests/support/udp_sender.py PORT [SECONDS] [FPS]

Frame k shows a bright bar at x = 4k mod (w - 8) on a dark ground and is sent at
t0 + k / FPS; a keyframe every 10 frames (a receiver joining mid-stream starts quickly)."""

from __future__ import annotations

import sys
import time
from fractions import Fraction

import av
import numpy as np

W, H, GOP = 160, 96, 10


def frame(k: int) -> np.ndarray:
    img = np.full((H, W, 3), 30, np.uint8)
    x = (4 * k) % (W - 8)
    img[H // 4: 3 * H // 4, x: x + 8] = 230
    return img


def send(port: int, seconds: float, fps: float) -> None:
    url = f"udp://127.0.0.1:{port}?pkt_size=1316"
    with av.open(url, mode="w", format="mpegts") as out:
        s = out.add_stream("libx264", rate=Fraction(round(fps)))
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(GOP),
                     "bf": "0"}
        t0 = time.monotonic()
        for k in range(round(seconds * fps)):
            delay = t0 + k / fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            vf = av.VideoFrame.from_ndarray(frame(k), format="bgr24")
            vf.pts = k
            for packet in s.encode(vf):
                out.mux(packet)
            if k == 0:
                print("sending", flush=True)  # the test times the reconnect from here
        for packet in s.encode():
            out.mux(packet)


if __name__ == "__main__":
    send(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 3600.0,
         float(sys.argv[3]) if len(sys.argv) > 3 else 30.0)
