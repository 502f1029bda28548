"""A third-party RTSP server for the reconnect tests: GStreamer's gst-rtsp-server, run
under Debian's system Python (``/usr/bin/python3`` with python3-gi), never the venv's.

    /usr/bin/python3 gst_rtsp_server.py --port N [--epoch T] [--width W --height H]
    /usr/bin/python3 gst_rtsp_server.py --check   # exit 3 + one line if something is missing

It acts like a camera: one shared live stream (``appsrc ! x264enc ! rtph264pay``), H.264
with a keyframe every ``--gop`` frames, each frame showing its index since ``--epoch`` (a
CLOCK_MONOTONIC time, the same in every process of the machine) as 16 black/white blocks
across the top. The frame shown at monotonic time t is ``round((t - epoch) * fps)``, so a
server killed and restarted with the same epoch goes on with the same timeline, as a
camera's clock does, and a client can count exactly which frames it never got.

Prints ``READY rtsp://127.0.0.1:PORT/PATH`` once it listens; exits on SIGTERM/SIGINT,
after ``--max-lifetime`` seconds, or when its parent goes away.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

NEEDED = ("appsrc", "x264enc", "h264parse", "rtph264pay")
BITS = 16  # index bits drawn across the top of the frame
BAND = 32  # rows of the index band
WHITE, BLACK = 235, 16  # video-range luma


def load() -> tuple[object, object, object]:
    """(Gst, GstRtspServer, GLib), or SystemExit(3) with one line naming what is missing."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as e:
        print(f"missing: {e} (python3-gi, gir1.2-gst-rtsp-server-1.0)", file=sys.stderr)
        raise SystemExit(3) from e
    Gst.init(None)
    missing = [n for n in NEEDED if Gst.ElementFactory.find(n) is None]
    if missing:
        print(f"missing GStreamer elements: {', '.join(missing)} (gstreamer1.0-plugins-"
              "good/-bad/-ugly/-base)", file=sys.stderr)
        raise SystemExit(3)
    return Gst, GstRtspServer, GLib


class Camera:
    """Frames for one media: the index band over a moving ramp, in I420, paced on the
    monotonic clock from ``epoch``."""

    def __init__(self, gst: object, width: int, height: int, fps: int, epoch: float) -> None:
        self.gst, self.w, self.h, self.fps, self.epoch = gst, width, height, fps, epoch
        self.next_k: int | None = None
        ramp = bytes((x * 2) % 220 + 16 for x in range(2 * width))
        self.ramp = ramp
        self.chroma = bytes([128]) * (2 * (width // 2) * (height // 2))
        self.block = width // BITS

    def image(self, k: int) -> bytes:
        idx = k % (1 << BITS)
        row = b"".join(bytes([WHITE if (idx >> b) & 1 else BLACK]) * self.block
                       for b in range(BITS))
        row += bytes([BLACK]) * (self.w - len(row))
        s = (4 * k) % self.w
        body = self.ramp[s:s + self.w] * (self.h - BAND)
        return row * BAND + body + self.chroma

    def need_data(self, src: object, _length: int) -> None:
        """Push the frame due next (waiting for its time); skip to now if late."""
        now = time.monotonic()
        k_now = round((now - self.epoch) * self.fps)
        k = k_now if self.next_k is None or self.next_k < k_now else self.next_k
        due = self.epoch + k / self.fps
        if due > now:
            time.sleep(due - now)
        gst = self.gst
        buf = gst.Buffer.new_wrapped(self.image(k))  # type: ignore[attr-defined]
        buf.duration = gst.SECOND // self.fps  # type: ignore[attr-defined]
        self.next_k = k + 1
        src.emit("push-buffer", buf)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--path", default="live")
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--gop", type=int, default=15)
    ap.add_argument("--epoch", type=float, help="monotonic time of frame 0 (default: now)")
    ap.add_argument("--max-lifetime", type=float, default=120.0)
    ap.add_argument("--check", action="store_true", help="only check the packages")
    a = ap.parse_args(argv)
    gst, rtsp, glib = load()
    if a.check:
        print("ok", gst.version_string())  # type: ignore[attr-defined]
        return 0
    epoch = time.monotonic() if a.epoch is None else a.epoch
    caps = f"video/x-raw,format=I420,width={a.width},height={a.height},framerate={a.fps}/1"
    launch = (f"( appsrc name=src is-live=true do-timestamp=true format=time caps={caps} "
              f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={a.gop} "
              "bframes=0 threads=1 ! video/x-h264,profile=constrained-baseline "
              "! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )")
    factory = rtsp.RTSPMediaFactory()  # type: ignore[attr-defined]
    factory.set_launch(launch)
    factory.set_shared(True)  # one live stream for every client, as a camera has

    def configure(_factory: object, media: object) -> None:
        src = media.get_element().get_by_name_recurse_up("src")  # type: ignore[attr-defined]
        src.connect("need-data", Camera(gst, a.width, a.height, a.fps, epoch).need_data)

    factory.connect("media-configure", configure)
    server = rtsp.RTSPServer()  # type: ignore[attr-defined]
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    server.get_mount_points().add_factory(f"/{a.path.strip('/')}", factory)
    loop = glib.MainLoop()  # type: ignore[attr-defined]
    if not server.attach(None):
        print(f"cannot listen on port {a.port}", file=sys.stderr)
        return 2
    deadline = time.monotonic() + a.max_lifetime
    parent = os.getppid()

    def watch() -> bool:
        if time.monotonic() > deadline or os.getppid() != parent:
            loop.quit()
            return False
        return True

    glib.timeout_add(200, watch)  # type: ignore[attr-defined]
    for sig in (signal.SIGTERM, signal.SIGINT):
        glib.unix_signal_add(glib.PRIORITY_DEFAULT, sig, loop.quit)  # type: ignore[attr-defined]
    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}/{a.path.strip('/')}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
