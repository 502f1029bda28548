"""A PLUS-like OpenIGTLink image server for the end-to-end test: pyigtl's own server
streaming a recorded clip (decoded with PyAV, looped) as IMAGE messages at FPS, RGB, each
stamped with the wall time it was sent. Run as a process so the test can SIGKILL it.

Prints ``listening <unix time>`` once bound and ``connected <unix time>`` when its first
client connects (one line each, flushed), for the test to time the reconnect.

    python igtl_image_server.py CLIP.mp4 PORT [DEVICE] [FPS]
"""

from __future__ import annotations

import sys
import time

import av
import numpy as np
import pyigtl


def frames(path: str) -> list[np.ndarray]:
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24")[None] for f in c.decode(video=0)]


def main() -> None:
    clip, port = sys.argv[1], int(sys.argv[2])
    device = sys.argv[3] if len(sys.argv) > 3 else "Image"
    fps = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    images = frames(clip)
    server = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
    print(f"listening {time.time():.6f}", flush=True)
    announced, i, t_next = False, 0, time.monotonic()
    while True:
        t_next += 1.0 / fps
        time.sleep(max(0.0, t_next - time.monotonic()))
        if not server.is_connected():
            continue
        if not announced:
            print(f"connected {time.time():.6f}", flush=True)
            announced = True
        if len(server.outgoing_messages) > 2:  # a client that lags: drop, as a scanner would
            continue
        msg = pyigtl.ImageMessage(images[i % len(images)], timestamp=time.time(),
                                  device_name=device)
        server.send_message(msg, wait=False)
        i += 1


if __name__ == "__main__":
    main()
