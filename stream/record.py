"""Session recording: the frames as received (lossless H.264 RGB in Matroska, which stays
readable up to the last complete cluster if the process dies), each frame's capture
timestamp, and every published result. ``hepascope replay DIR`` feeds it back.

Layout of a recording directory:
    session.json   what was recorded (source, model, frame size, versions)
    frames.mkv     video; pts = capture time since the first frame, in microseconds,
                   so replaying by the file's timestamps reproduces the original pacing
    frames.csv     index, seq, t_capture_ns, source pts_s
    results.jsonl  one published result map per line
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from hepascope.stream.errors import SourceError
from hepascope.stream.frame import Frame
from hepascope.stream.ring import RingReader

log = logging.getLogger(__name__)

VIDEO_NAME = "frames.mkv"
TIME_BASE = Fraction(1, 1_000_000)


class VideoRecorder:
    """Appends frames to ``frames.mkv`` + ``frames.csv``. Not thread-safe; one writer."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._container: Any = None
        self._stream: Any = None
        self._csv_file = (directory / "frames.csv").open("w", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(["index", "seq", "t_capture_ns", "pts_s"])
        self._t0: int | None = None
        self._last_pts = -1
        self.frames = 0

    def _start(self, frame: Frame) -> None:
        self._container = av.open(str(self.dir / VIDEO_NAME), mode="w", format="matroska")
        # libx264rgb at qp 0 is lossless in BGR: replay sees the very pixels that were
        # captured (deterministic replay), at ~2 ms a 768x384 frame on one core.
        s = self._container.add_stream("libx264rgb", rate=30,
                                       options={"preset": "ultrafast", "qp": "0"})
        s.width, s.height, s.pix_fmt = frame.width, frame.height, "bgr24"
        s.time_base = TIME_BASE
        self._stream = s
        self._t0 = frame.t_capture_ns

    def write(self, frame: Frame) -> None:
        if self._container is None:
            self._start(frame)
        if (frame.height, frame.width) != (self._stream.height, self._stream.width):
            raise SourceError(f"frame size changed mid-recording to {frame.width}x{frame.height}")
        assert self._t0 is not None
        pts = max((frame.t_capture_ns - self._t0) // 1000, self._last_pts + 1)
        self._last_pts = pts
        vf = av.VideoFrame.from_ndarray(frame.bgr(), format="bgr24")
        vf.pts, vf.time_base = pts, TIME_BASE
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self._csv.writerow([self.frames, frame.seq, frame.t_capture_ns,
                            "" if frame.pts_s is None else f"{frame.pts_s:.6f}"])
        self.frames += 1

    def close(self) -> None:
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
        self._csv_file.close()


class SessionRecorder:
    """Records a running pipeline: attaches to its frame ring as one more reader (so it
    never slows capture; frames it misses are counted in ``dropped``) and logs results."""

    def __init__(self, directory: str | Path, meta: dict[str, Any]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._meta = {"version": 1, "created_unix": time.time(), **meta}
        (self.dir / "session.json").write_text(json.dumps(self._meta, indent=2))
        self._results = (self.dir / "results.jsonl").open("w")
        self._video = VideoRecorder(self.dir)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.dropped = 0

    def attach(self, ring_name: str) -> None:
        """Start recording frames from the ring (called when the pipeline creates it)."""
        self._thread = threading.Thread(target=self._run, args=(ring_name,),
                                        name="hepascope-record", daemon=True)
        self._thread.start()

    def _run(self, ring_name: str) -> None:
        try:
            with RingReader(ring_name, start="oldest") as reader:
                while True:
                    frame = reader.next(timeout_s=0.05)
                    if frame is not None:
                        self._video.write(frame)
                    elif self._stop.is_set():
                        break
                self.dropped = reader.drops
        except BaseException as e:  # surfaced by close(): never swallowed
            self._error = e

    def on_result(self, msg: dict[str, Any]) -> None:
        self._results.write(json.dumps(msg, separators=(",", ":")) + "\n")
        self._results.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._video.close()
        self._results.close()
        meta = {**self._meta, "frames": self._video.frames, "record_dropped": self.dropped}
        (self.dir / "session.json").write_text(json.dumps(meta, indent=2))
        if self._error is not None:
            raise self._error


def read_session(directory: str | Path) -> dict[str, Any]:
    """A recording's ``session.json``, or ``SourceError`` when DIR is not a recording."""
    d = Path(directory)
    meta_path = d / "session.json"
    if not meta_path.is_file() or not (d / VIDEO_NAME).is_file():
        raise SourceError(f"{d}: not a hepascope recording (needs session.json and {VIDEO_NAME})")
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    return meta


def frame_times(directory: str | Path) -> np.ndarray:
    """Recorded capture times (ns) by frame index."""
    with (Path(directory) / "frames.csv").open() as f:
        rows = list(csv.DictReader(f))
    return np.array([int(r["t_capture_ns"]) for r in rows], dtype=np.int64)
