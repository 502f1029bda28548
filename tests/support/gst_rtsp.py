"""GStreamer's gst-rtsp-server (``gst_rtsp_server.py`` under Debian's system Python) as a
child process to kill and restart like ``RtspServer``; ``missing()`` says why it cannot
run here (the tests skip with that reason)."""

from __future__ import annotations

import functools
import subprocess
import time
from pathlib import Path

from hepascope.stream.rtsp_proc import RtspServer

SYSTEM_PYTHON = "/usr/bin/python3"  # python3-gi is Debian's, not a PyPI package
SCRIPT = Path(__file__).with_name("gst_rtsp_server.py")
APT = ("apt-get install -y gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp "
       "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad "
       "gstreamer1.0-plugins-ugly python3-gi")


@functools.cache
def missing() -> str | None:
    """None when the GStreamer server can run here, else the reason, one line."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"no {SYSTEM_PYTHON} (GStreamer's Python bindings are Debian's); {APT}"
    try:
        proc = subprocess.run([SYSTEM_PYTHON, str(SCRIPT), "--check"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"GStreamer check failed: {e}"
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return f"GStreamer RTSP server unavailable: {why}; {APT}"
    return None


class GstRtspServer(RtspServer):
    """A live camera-like stream (frames carry their index since ``epoch``, kept across
    restarts) from gst-rtsp-server on 127.0.0.1."""

    def __init__(self, *, port: int = 0, fps: int = 30, gop: int = 15,
                 epoch: float | None = None, max_lifetime: float = 120.0) -> None:
        super().__init__(SCRIPT, port=port, live=True, max_lifetime=max_lifetime,
                         epoch=time.monotonic() if epoch is None else epoch)
        self.fps, self.gop = fps, gop

    def command(self) -> list[str]:
        return [SYSTEM_PYTHON, str(SCRIPT), "--port", str(self.port), "--path", self.path,
                "--fps", str(self.fps), "--gop", str(self.gop), "--epoch", repr(self.epoch),
                "--max-lifetime", str(self.max_lifetime)]
