"""Session recording: the frames as received (lossless H.264 RGB in Matroska), each frame's
capture timestamp, and every published result. ``hepascope replay DIR`` feeds it back.

Crash-safe by construction, for a process that dies at any instant (SIGKILL, the OOM
killer, a segfault): the encoder has no frame delay (zerolatency: no lookahead, no
B-frames; one thread), the muxer closes a Matroska cluster at least every ``CLUSTER_MS``
and ``flush_packets`` hands every written cluster to the OS at once, the index and results
are flushed line by line, and ``session.json`` is replaced atomically.
What the kernel holds in its page cache survives the death of the process, so no fsync is
done: only a crash of the machine itself could lose more (the OS flushes within ~30 s).
A killed recording loses at most the open cluster (``CLUSTER_MS`` of frames) plus what the
recorder had not yet taken from the ring; everything before replays, bit-exact.

Layout of a recording directory:
    session.json   what was recorded (source, model, engine, versions); ``complete`` is
                   false until the recorder closed cleanly (then ``frames`` is added)
    frames.mkv     video; pts = capture time since the first frame, in ms (Matroska's tick),
                   so replaying by the file's timestamps reproduces the original pacing
    frames.csv     index, seq, t_capture_ns, pts_s: one row per frame, written before the
                   frame is encoded (so the index is never shorter than the decodable video)
    results.jsonl  one published result map per line
A killed recording may end in a torn line (no newline) in frames.csv or results.jsonl: the
readers here skip it; a malformed line anywhere else is a ``DataError``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from hepascope.core.errors import DataError, SourceError
from hepascope.core.frame import Frame
from hepascope.stream.ring import RingReader

log = logging.getLogger(__name__)

VIDEO_NAME = "frames.mkv"
INDEX_NAME = "frames.csv"
RESULTS_NAME = "results.jsonl"
SESSION_NAME = "session.json"
# 2: exact ms pts (1 before snapped them to a 30 fps grid), ``complete``, flushed index
RECORDING_VERSION = 2
INDEX_HEADER = ("index", "seq", "t_capture_ns", "pts_s")
TIME_BASE = Fraction(1, 1000)  # Matroska's own tick (TimestampScale 1 ms)
CLUSTER_MS = 100  # a cluster (the unit a crash can lose) spans at most this much video
# libx264rgb at qp 0 is lossless in BGR: replay sees the very pixels that were captured
# (deterministic replay), ~6 ms a 768x384 frame on one core. zerolatency = no lookahead,
# no B-frames, no frame threads: each frame's packet comes out of encode() at once.
ENCODER_OPTIONS = {"preset": "ultrafast", "qp": "0", "tune": "zerolatency", "threads": "1"}
# flush_packets: the AVIO buffer is flushed after each packet, so a closed cluster reaches
# the OS at once instead of waiting in a 32 KiB buffer.
MUXER_OPTIONS = {"cluster_time_limit": str(CLUSTER_MS), "flush_packets": "1"}


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace``: a
    reader (or a crash) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


class VideoRecorder:
    """Appends frames to ``frames.mkv`` + ``frames.csv``. Not thread-safe; one writer."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._container: Any = None
        self._stream: Any = None
        self._csv_file = (directory / INDEX_NAME).open("w", newline="")
        self._csv = csv.writer(self._csv_file, lineterminator="\n")
        self._csv.writerow(INDEX_HEADER)
        self._csv_file.flush()
        self._t0: int | None = None
        self._last_pts = -1
        self.frames = 0

    def _start(self, frame: Frame) -> None:
        self._container = av.open(str(self.dir / VIDEO_NAME), mode="w", format="matroska",
                                  container_options=MUXER_OPTIONS)
        s = self._container.add_stream("libx264rgb", rate=30, options=ENCODER_OPTIONS)
        s.width, s.height, s.pix_fmt = frame.width, frame.height, "bgr24"
        # the encoder's clock too: at its default 1/rate, times snap to a 30 fps grid (and
        # two frames in one 1/30 s slot would collide)
        s.time_base = s.codec_context.time_base = TIME_BASE
        self._stream = s
        self._t0 = frame.t_capture_ns

    def write(self, frame: Frame) -> None:
        if self._container is None:
            self._start(frame)
        if (frame.height, frame.width) != (self._stream.height, self._stream.width):
            raise SourceError(f"frame size changed mid-recording to {frame.width}x{frame.height}")
        assert self._t0 is not None
        # strictly increasing ms: two frames in one ms must not share a timestamp
        pts = max((frame.t_capture_ns - self._t0) // 1_000_000, self._last_pts + 1)
        self._last_pts = pts
        # the index row first: a crash between the two leaves the index one row longer than
        # the video (a frame not replayed), never a decodable frame without its capture time
        self._csv.writerow([self.frames, frame.seq, frame.t_capture_ns,
                            "" if frame.pts_s is None else f"{frame.pts_s:.6f}"])
        self._csv_file.flush()
        vf = av.VideoFrame.from_ndarray(frame.bgr(), format="bgr24")
        vf.pts, vf.time_base = pts, TIME_BASE
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
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
        self._meta = {"version": RECORDING_VERSION, "created_unix": time.time(), **meta,
                      "complete": False, "cluster_ms": CLUSTER_MS}
        # written first and atomically: a recording killed at any later instant replays
        write_json_atomic(self.dir / SESSION_NAME, self._meta)
        self._results = (self.dir / RESULTS_NAME).open("w")
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
        # one write per line, flushed: a kill leaves at most a torn last line
        self._results.write(json.dumps(msg, separators=(",", ":")) + "\n")
        self._results.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._video.close()
        self._results.close()
        meta = {**self._meta, "complete": True, "frames": self._video.frames,
                "record_dropped": self.dropped}
        write_json_atomic(self.dir / SESSION_NAME, meta)
        if self._error is not None:
            raise self._error


def read_session(directory: str | Path) -> dict[str, Any]:
    """A recording's ``session.json``, or ``SourceError`` when DIR is not a recording."""
    d = Path(directory)
    meta_path = d / SESSION_NAME
    if not meta_path.is_file() or not (d / VIDEO_NAME).is_file():
        raise SourceError(f"{d}: not a hepascope recording (needs {SESSION_NAME} and "
                          f"{VIDEO_NAME})")
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:  # written atomically: only a foreign file gets here
        raise SourceError(f"{meta_path}: not valid JSON ({e})") from e
    return meta


def _complete_lines(path: Path) -> tuple[list[str], bool]:
    """The newline-terminated lines of ``path`` and whether a torn last line was dropped.
    A line without its newline was being written when the writer died: even when it
    parses, a number in it may be cut short, so it never counts."""
    text = path.read_text()
    lines = text.split("\n")
    torn = lines.pop() != ""  # after the last newline: "" when the file ends cleanly
    return [ln.rstrip("\r") for ln in lines], torn


@dataclass(frozen=True, slots=True)
class FrameRow:
    """One row of ``frames.csv``: the ``index``-th recorded frame."""

    index: int
    seq: int
    t_capture_ns: int
    pts_s: float | None


def read_index(directory: str | Path) -> tuple[list[FrameRow], bool]:
    """``frames.csv`` as rows, and whether a torn last row was skipped; ``DataError`` on a
    malformed row elsewhere."""
    path = Path(directory) / INDEX_NAME
    lines, torn = _complete_lines(path)
    rows: list[FrameRow] = []
    for n, rec in enumerate(csv.reader(lines[1:]), start=2):
        try:
            index, seq, t_ns, pts = rec
            rows.append(FrameRow(int(index), int(seq), int(t_ns), float(pts) if pts else None))
        except ValueError as e:
            raise DataError(f"{path}:{n}: malformed row {rec!r} ({e})") from e
        if rows[-1].index != len(rows) - 1:
            raise DataError(f"{path}:{n}: index {rows[-1].index}, expected {len(rows) - 1}")
    if torn:
        log.info("%s: skipped a torn last row (the recorder was killed)", path)
    return rows, torn


def frame_times(directory: str | Path) -> np.ndarray:
    """Recorded capture times (ns) by frame index."""
    rows, _ = read_index(directory)
    return np.array([r.t_capture_ns for r in rows], dtype=np.int64)


def read_results(directory: str | Path) -> tuple[list[dict[str, Any]], bool]:
    """``results.jsonl`` as maps, and whether a torn last line was skipped; ``DataError``
    on a line elsewhere that is not a JSON map."""
    path = Path(directory) / RESULTS_NAME
    lines, torn = _complete_lines(path)
    out: list[dict[str, Any]] = []
    for n, line in enumerate(lines, start=1):
        try:
            msg = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not JSON ({e})") from e
        if not isinstance(msg, dict):
            raise DataError(f"{path}:{n}: not a JSON map")
        out.append(msg)
    return out, torn
