"""Deterministic replay: a recording run through the model in lockstep with a virtual
clock, giving the same result stream, byte for byte, every time on the same machine.

What makes it deterministic, and what each field then means:
- Lockstep: every decodable recorded frame is inferred, in recorded order (no newest-frame-
  wins dropping: with a virtual clock there is no wall time to fall behind).
- Times: ``seq``, ``t_capture_ns`` and ``pts_s`` come from ``frames.csv``. A
  ``VirtualClock`` is set to each frame's recorded capture time and stands still while the
  frame is preprocessed, inferred and turned into a message, so ``t_publish_ns`` equals
  ``t_capture_ns`` and every ``latency_ms`` stage (as measured by that clock) is 0: the
  stream says what the model said about which frame, not how fast (``ReplayReport.wall_s``
  has the real duration, outside the stream).
- Engine: ONNX Runtime on the CPU with one intra-op thread (one thread sums in one order),
  one inter-op thread, sequential execution (ORT's default, which ``OrtTuning`` keeps) and
  its fixed graph optimisation level ("all"). Bit-identity holds for one machine and one
  ORT version: another CPU may run other kernels (AVX2 vs AVX-512) and round differently.
- Verdicts: the model is opened as the live path opens it (``open_model``), so scene cuts,
  temperature, smoothing and abstention (stream/verdict.py) run here as they run live, on
  media time (the recorded pts), with the same functions: the same statuses and smoothed
  probabilities, and nothing in them depends on the wall clock.
- Output: JSON lines with sorted keys and compact separators (floats as Python's shortest
  round-trip repr), hashed with SHA-256 as they are written.
A recording whose process was killed replays too: its decodable frames, as far as they go.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hepascope.core.config import Config, load_config
from hepascope.core.errors import DataError, ModelError
from hepascope.core.frame import Frame
from hepascope.core.messages import RunStamp
from hepascope.stream.answer import AnswerTally
from hepascope.stream.classifier import Classifier
from hepascope.stream.model_loader import open_model
from hepascope.stream.record import (
    RESULTS_NAME,
    VIDEO_NAME,
    FrameRow,
    read_index,
    read_results,
    read_session,
)
from hepascope.stream.results import result_message
from hepascope.stream.sources.file import FileSource

_MS = 1e-6  # ns -> ms
ENGINE = "onnxruntime"
THREADS = 1


class VirtualClock:
    """A clock that moves only when told to, and never backwards."""

    def __init__(self, start_ns: int = 0) -> None:
        if start_ns < 0:
            raise ValueError(f"start_ns must be >= 0, got {start_ns}")
        self._now = int(start_ns)

    def now_ns(self) -> int:
        return self._now

    def advance_to(self, t_ns: int) -> None:
        if t_ns < self._now:
            raise DataError(f"virtual clock cannot go back from {self._now} to {t_ns} ns")
        self._now = int(t_ns)


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a deterministic replay wrote and how much of the recording it could replay."""

    results: Path
    sha256: str
    count: int           # result maps written
    frames_indexed: int  # rows of frames.csv
    frames_decoded: int  # frames decoded from frames.mkv (all inferred)
    complete: bool       # the recorder closed cleanly (False: killed, replayed what decodes)
    wall_s: float        # real time the replay took (not part of the stream)
    answers: tuple[dict[str, Any], ...] = ()  # the recording's answer (stream/answer.py)


def recorded_frames(directory: str | Path, source_id: str, *,
                    check_pts: bool = True) -> Iterator[Frame]:
    """Each decodable frame of a recording, in order, stamped with its recorded ``seq``,
    capture time and pts. ``DataError`` when the video has a frame the index lacks, or
    (``check_pts``: recordings of version 2 on) their timestamps disagree."""
    d = Path(directory)
    rows, _ = read_index(d)
    if not rows:
        raise DataError(f"{d}: frames.csv indexes no frame")
    t0 = rows[0].t_capture_ns
    expected_ms = -1
    with FileSource(d / VIDEO_NAME, max_rate=True, source_id=source_id) as src:
        for i, decoded in enumerate(src):
            if i >= len(rows):
                raise DataError(f"{d}: {VIDEO_NAME} has more frames than frames.csv ({i}+)")
            row = rows[i]
            # the recorder's pts rule: capture time since the first frame, strictly rising
            expected_ms = max((row.t_capture_ns - t0) // 1_000_000, expected_ms + 1)
            pts_ms = None if decoded.pts_s is None else decoded.pts_s * 1000
            if check_pts and pts_ms is not None and abs(pts_ms - expected_ms) > 1.0:
                raise DataError(f"{d}: frame {i} is at {decoded.pts_s:.3f} s in {VIDEO_NAME} "
                                f"but frames.csv puts it at {expected_ms / 1000:.3f} s")
            yield _stamped(decoded, row)


def _stamped(decoded: Frame, row: FrameRow) -> Frame:
    return Frame(decoded.image, row.seq, row.t_capture_ns, decoded.source_id, row.pts_s)


def recorded_stamp(directory: Path) -> RunStamp:
    """The run stamp of a deterministic replay, from the recorded run's first result: its
    ``run_id`` and UTC offset, so the replayed lines line up with the recorded ones (the
    same recording, the same stamp: the stream stays bit-identical). A recording without
    results gets the id ``deterministic-replay`` and offset 0."""
    recorded = read_results(directory)[0] if (directory / RESULTS_NAME).exists() else []
    for r in recorded:
        run_id, utc, mono = r.get("run_id"), r.get("t_capture_utc_ns"), r.get("t_capture_ns")
        if isinstance(run_id, str) and isinstance(utc, int) and isinstance(mono, int):
            return RunStamp(run_id, utc - mono)
    return RunStamp("deterministic-replay", 0)


def lockstep_message(model: Classifier, frame: Frame, clock: VirtualClock,
                     stamp: RunStamp) -> dict[str, Any]:
    """The pipeline's result map for ``frame``, every time and latency from ``clock``."""
    clock.advance_to(frame.t_capture_ns)
    t_read = clock.now_ns()
    probs, stages = model.predict(frame)
    spent = (clock.now_ns() - t_read) * _MS  # the virtual clock stood still: 0
    msg = result_message(model, frame, t_read, (probs, dict.fromkeys(stages, spent)))
    msg.pop("_t_infer_ns")  # wall clock: replaced below
    now = clock.now_ns()
    msg["t_publish_ns"] = now
    lat = msg["latency_ms"]
    lat["queue"] = (t_read - frame.t_capture_ns) * _MS
    lat["publish"] = (now - t_read) * _MS
    lat["total"] = (now - frame.t_capture_ns) * _MS
    stamp.stamp(msg)
    return msg


def encode_line(msg: dict[str, Any]) -> bytes:
    """One result map as a canonical JSON line (sorted keys, no spaces, no NaN)."""
    return (json.dumps(msg, sort_keys=True, separators=(",", ":"), allow_nan=False)
            + "\n").encode()


def open_deterministic(model: Path, config: Config,
                       labels: tuple[str, ...] | None = None) -> Classifier:
    """``model`` on ONNX Runtime, one thread, its results verdicts as live: see the module
    docstring."""
    return open_model(model, config, backend=ENGINE, threads=THREADS, labels=labels)


def replay_deterministic(directory: str | Path, out: str | Path, *, model: Path | None = None,
                         config: Config | None = None,
                         labels: tuple[str, ...] | None = None) -> ReplayReport:
    """Replay the recording in ``directory`` in lockstep; write the result stream to
    ``out`` (atomically) and return its SHA-256, how much was replayed and the
    recording's answer, tallied from the very maps written."""
    t_start = time.monotonic()
    d, out = Path(directory), Path(out)
    meta = read_session(d)
    model = model or (Path(meta["model"]) if meta.get("model") else None)
    if model is None:
        raise ModelError(f"{d}: recording names no model; pass one")
    cfg = config or load_config(None)
    source_id = str(meta.get("source_id") or f"replay:{d.name}")
    version = int(meta.get("version", 1))
    digest, count, decoded = hashlib.sha256(), 0, 0
    indexed = len(read_index(d)[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    classifier = open_deterministic(model, cfg, labels)
    tally = AnswerTally()
    try:
        clock, stamp = VirtualClock(), recorded_stamp(d)
        with tmp.open("wb") as f:
            for frame in recorded_frames(d, source_id, check_pts=version >= 2):
                decoded += 1
                msg = lockstep_message(classifier, frame, clock, stamp)
                line = encode_line(msg)
                tally.add(msg)
                f.write(line)
                digest.update(line)
                count += 1
        os.replace(tmp, out)
    finally:
        classifier.close()
        tmp.unlink(missing_ok=True)
    return ReplayReport(out, digest.hexdigest(), count, indexed, decoded,
                        bool(meta.get("complete", "frames" in meta)),
                        time.monotonic() - t_start,
                        tuple(tally.answers([classifier.model_name])))
