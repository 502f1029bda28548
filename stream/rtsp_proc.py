"""``RtspServer``: an RTSP server (``python -m hepascope.stream.rtsp_serve``, or another
one through ``command()``) as a child process that a test or the soak can kill (SIGKILL),
stall (SIGSTOP) and restart on the same port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["RtspServer"]


class RtspServer:
    """Starts ``python -m hepascope.stream.rtsp_serve`` as a child process and waits for
    its READY line.

    ``url`` is the stream URL; ``kill()`` sends SIGKILL, ``stall()``/``resume()`` send
    SIGSTOP/SIGCONT, ``restart()`` starts it again on the same port. Also a context
    manager.
    """

    def __init__(self, file: str | Path, *, port: int = 0, path: str = "live",
                 loop: bool = False, live: bool = False, mute: bool = False,
                 max_lifetime: float = 120.0, ready_timeout: float = 15.0,
                 epoch: float | None = None) -> None:
        self.file = Path(file)
        self.port = port
        self.path = path
        self.loop = loop
        self.live = live
        self.mute = mute
        self.epoch = epoch
        self.max_lifetime = max_lifetime
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def command(self) -> list[str]:
        """The server's command line (a subclass may run another server the same way)."""
        cmd = [sys.executable, "-m", "hepascope.stream.rtsp_serve", str(self.file),
               "--port", str(self.port), "--path", self.path,
               "--max-lifetime", str(self.max_lifetime)]
        if self.loop:
            cmd.append("--loop")
        if self.live:
            cmd.append("--live")
        if self.mute:
            cmd.append("--mute")
        if self.epoch is not None:
            cmd += ["--epoch", repr(self.epoch)]
        return cmd

    def start(self) -> RtspServer:
        """Start (again: on the same port as before) and wait for READY."""
        self.stop()
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, text=True)
        out = self.proc.stdout
        assert out is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(out.readline()), daemon=True)
        reader.start()
        reader.join(self.ready_timeout)
        if not line or not line[0].startswith("READY "):
            self.stop()
            raise RuntimeError(f"RTSP test server did not start: {line!r}")
        self.url = line[0].split()[1]
        self.port = int(self.url.rsplit(":", 1)[1].split("/", 1)[0])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: the connections drop at once, as when a camera loses power."""
        self._signal(signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self.proc is None:
            return
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def stall(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self) -> RtspServer:
        self.stop()
        return self.start()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal(signal.SIGCONT)  # a stalled server cannot act on SIGTERM
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
        self._reap()

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
