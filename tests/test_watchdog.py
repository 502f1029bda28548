"""The capture watchdog against reads that really hang: ``CaptureSource`` (OpenCV
VideoCapture, FFmpeg backend) reading an MPEG-TS stream from a FIFO whose writer stops
writing but keeps its end open, so ``cv2.VideoCapture.read()`` blocks in the kernel's
read(2), as a capture card's driver does when it wedges."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest
from support.media import frame_pattern, matches_pattern

from hepascope.core.errors import ConfigError, SourceNotFoundError, SourceTimeoutError
from hepascope.stream.sources import SourceOptions, open_source
from hepascope.stream.sources.capture import CaptureSource
from hepascope.stream.sources.watchdog import Watchdog

H, W, N = 120, 160, 60


@pytest.fixture(scope="module")
def ts_stream(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """60 pattern frames of H.264 in MPEG-TS (a format FFmpeg reads from a pipe)."""
    path = tmp_path_factory.mktemp("watchdog") / "clip.ts"
    with av.open(str(path), "w", format="mpegts") as c:
        s = c.add_stream("libx264", rate=30, options={"preset": "ultrafast",
                                                      "tune": "zerolatency", "g": "10"})
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(N):
            vf = av.VideoFrame.from_ndarray(frame_pattern(i, H, W), format="bgr24")
            vf.pts, vf.time_base = i, Fraction(1, 30)
            c.mux(s.encode(vf))
        c.mux(s.encode())
    return path.read_bytes()


class Feeds:
    """One FIFO per grabber: its writer writes the first half of the stream, then keeps the
    FIFO open without writing, so the grabber's read blocks until ``release()``."""

    def __init__(self, tmp: Path, data: bytes, fraction: float = 0.5) -> None:
        self.tmp, self.data, self.cut = tmp, data, int(len(data) * fraction)
        self.paths: list[Path] = []
        self.writers: list[threading.Thread] = []
        self.released = threading.Event()

    def factory(self) -> CaptureSource:
        path = self.tmp / f"feed{len(self.paths)}"
        os.mkfifo(path)
        self.paths.append(path)
        t = threading.Thread(target=self._write, args=(path,), daemon=True)
        t.start()
        self.writers.append(t)
        return CaptureSource(str(path), backend="ffmpeg", source_id="cam:fifo")

    def _write(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY)  # blocks until the grabber opens its end
        try:
            os.write(fd, self.data[:self.cut])
            self.released.wait(60)
        finally:
            os.close(fd)  # the blocked reader sees end of file and returns

    def release(self) -> None:
        self.released.set()
        for path in self.paths:  # a writer still waiting for a reader: give it one
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        for t in self.writers:
            t.join(10)


@pytest.mark.timeout(60)
def test_hung_reads_are_detected_and_the_grabber_replaced(tmp_path: Path,
                                                         ts_stream: bytes) -> None:
    feeds = Feeds(tmp_path, ts_stream)
    wd = Watchdog(feeds.factory, stall_s=0.5, open_timeout_s=5.0)
    cycles = 3
    per_gen: list[int] = [0]
    seqs: list[int] = []
    print()
    try:
        with wd:
            for frame in wd:
                if wd.replacements == len(per_gen):  # first frame of a new grabber
                    print(f"hang {len(per_gen)}: detected {wd.last_detect_s:.3f} s after the "
                          f"last frame (stall_s {wd.stall_s}); replacement's first frame "
                          f"{wd.last_replace_s:.3f} s after detection; "
                          f"{wd.hung} grabber thread(s) still blocked in read()")
                    per_gen.append(0)
                assert matches_pattern(frame.image, per_gen[-1]), (len(per_gen), per_gen[-1])
                per_gen[-1] += 1
                seqs.append(frame.seq)
                if len(per_gen) > cycles and per_gen[-1] >= 5:
                    break
            hung_before_release = wd.hung
    finally:
        feeds.release()
    print(f"frames per grabber {per_gen}; {wd.stats()}")
    assert wd.stalls == wd.replacements == wd.abandoned == cycles
    assert hung_before_release == cycles  # the abandoned threads really were blocked
    assert seqs == list(range(len(seqs)))  # seq goes on across replacements
    assert all(n >= 5 for n in per_gen)
    deadline = time.monotonic() + 10  # released: the blocked reads return, threads end
    while wd.hung and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wd.hung == 0


@pytest.mark.timeout(30)
def test_gives_up_when_too_many_grabbers_hang(tmp_path: Path, ts_stream: bytes) -> None:
    feeds = Feeds(tmp_path, ts_stream)
    wd = Watchdog(feeds.factory, stall_s=0.3, max_hung=2)
    try:
        with pytest.raises(SourceTimeoutError, match="2 grabbers hung"), wd:
            for _ in wd:
                pass
    finally:
        feeds.release()
    assert wd.stalls == 2 and wd.replacements == 1


@pytest.mark.timeout(30)
def test_an_open_that_hangs_times_out(tmp_path: Path) -> None:
    fifo = tmp_path / "nobody-writes"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: none does
    wd = Watchdog(lambda: CaptureSource(str(fifo), backend="ffmpeg"), open_timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(SourceTimeoutError, match="did not open"):
        wd.open()
    print(f"\nhung open -> SourceTimeoutError after {time.monotonic() - t0:.3f} s")
    assert wd.hung == 1
    os.close(os.open(fifo, os.O_WRONLY))  # unblock it: the thread ends
    deadline = time.monotonic() + 10
    while wd.hung and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wd.hung == 0


def test_errors_and_the_end_pass_through(video30: Path) -> None:
    with pytest.raises(SourceNotFoundError):
        Watchdog(lambda: CaptureSource("/dev/video-none")).open()
    wd = Watchdog(lambda: CaptureSource(str(video30), backend="ffmpeg"), stall_s=5.0)
    with wd:
        frames = list(wd)
    assert [f.seq for f in frames] == list(range(90)) and wd.stalls == 0
    assert matches_pattern(frames[42].image, 42)


def test_arguments_and_wiring() -> None:
    for kwargs in ({"stall_s": 0}, {"stall_s": -1.0}, {"open_timeout_s": float("nan")},
                   {"max_hung": 0}, {"stall_s": True}):
        with pytest.raises(ConfigError):
            Watchdog(lambda: CaptureSource(0), **kwargs)  # type: ignore[arg-type]
    wd = open_source("v4l2:/dev/video7", SourceOptions(watchdog_s=1.5))
    assert isinstance(wd, Watchdog) and wd.stall_s == 1.5 and wd.source_id == "v4l2:/dev/video7"
    assert isinstance(open_source("cam:3", SourceOptions(watchdog_s=None)), CaptureSource)
