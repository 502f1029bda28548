"""Demo sessions: a sequence of segments (one patient each), as a frame iterator, an
H.264 MP4 with a ground-truth sidecar, and the live source's frame generator.

Segment ``k`` of a session covers frames ``[k * n, (k + 1) * n)`` with
``n = round(segment_s * fps)``. Lesion classes cycle in a seeded-shuffled order (every
class once per cycle, no immediate repeat across cycles), so a 60 s session with 10 s
segments shows each class once. Each segment has its own CEUS clock that starts at a random
``t0`` in [5, 60] s and runs 3-4x faster than real time, so one segment shows phase changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.geometry import (
    PHANTOM_BMODE,
    PHANTOM_CEUS,
    PHANTOM_SCREEN_H,
    PHANTOM_SCREEN_W,
    PHANTOM_SECTOR,
)
from hepascope.core.video import Mp4Writer
from hepascope.phantom.patient import LESION_CLASSES, make_case
from hepascope.phantom.render import Phantom

SIDECAR_VERSION = 1


@dataclass(frozen=True)
class Segment:
    """One patient of a session."""

    index: int
    start_frame: int
    n_frames: int
    case_seed: int
    label: str
    fatty_grade: int
    patient_id: str
    ceus_t0_s: float
    ceus_speed: float


def _raw_order(seed: int, cycle: int) -> list[int]:
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, 0xC1C, cycle]))
    return [int(x) for x in rng.permutation(len(LESION_CLASSES))]


def _cycle_order(seed: int, cycle: int) -> list[int]:
    """Class order of one cycle; the first class differs from the previous cycle's last
    (the swap touches positions 0 and 1 only, so the previous last is its raw last)."""
    order = _raw_order(seed, cycle)
    if cycle > 0 and order[0] == _raw_order(seed, cycle - 1)[-1]:
        order[0], order[1] = order[1], order[0]
    return order


def segment_frames(fps: float, segment_s: float) -> int:
    """Frames per segment."""
    n = round(segment_s * fps)
    if n <= 0:
        raise ValueError(f"segment of {segment_s} s at {fps} fps has no frames")
    return n


def plan_segment(seed: int, k: int, fps: float = 30.0, segment_s: float = 10.0) -> Segment:
    """Parameters of segment ``k`` (deterministic in seed, k, fps, segment_s)."""
    n = segment_frames(fps, segment_s)
    label = LESION_CLASSES[_cycle_order(seed, k // len(LESION_CLASSES))[k % len(LESION_CLASSES)]]
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, 0x5E6, k])
    rng = np.random.default_rng(ss)
    case_seed = int(ss.generate_state(1)[0])
    pid = f"s{seed}-{k:04d}"
    case = make_case(case_seed, lesion=label, patient_id=pid)
    return Segment(k, k * n, n, case_seed, label, case.fatty_grade, pid,
                   float(rng.uniform(5.0, 60.0)), float(rng.uniform(3.0, 4.0)))


def iter_session(seed: int, fps: float = 30.0, segment_s: float = 10.0,
                 n_frames: int | None = None) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """(frame, truth) for frames 0.. of a session; infinite when ``n_frames`` is None.
    ``truth`` is the sidecar's per-frame record plus ``segment``."""
    i, k = 0, 0
    while n_frames is None or i < n_frames:
        seg = plan_segment(seed, k, fps, segment_s)
        case = make_case(seg.case_seed, lesion=seg.label, patient_id=seg.patient_id)
        ph = Phantom(case, fps=fps, ceus_t0_s=seg.ceus_t0_s, ceus_speed=seg.ceus_speed)
        for j in range(seg.n_frames):
            if n_frames is not None and i >= n_frames:
                return
            frame, truth = ph.render(j)
            truth["index"], truth["pts_s"], truth["segment"] = i, i / fps, k
            yield frame, truth
            i += 1
        k += 1


def layout() -> dict[str, Any]:
    """Screen layout record of the sidecar."""
    return {"bmode": [PHANTOM_BMODE.x, PHANTOM_BMODE.y, PHANTOM_BMODE.w, PHANTOM_BMODE.h],
            "ceus": [PHANTOM_CEUS.x, PHANTOM_CEUS.y, PHANTOM_CEUS.w, PHANTOM_CEUS.h],
            "sector": {"apex_x": PHANTOM_SECTOR.apex_x, "apex_y": PHANTOM_SECTOR.apex_y,
                       "r_min": PHANTOM_SECTOR.r_min, "r_max": PHANTOM_SECTOR.r_max,
                       "half_angle_deg": PHANTOM_SECTOR.half_angle_deg}}


def sidecar_path(path: str | Path) -> Path:
    """``x.mp4`` -> ``x.truth.json``."""
    return Path(path).with_suffix(".truth.json")


def write_session(path: str | Path, *, seed: int, seconds: float, fps: float = 30.0,
                  segment_s: float = 10.0, progress: Callable[[int, int], None] | None = None
                  ) -> Path:
    """Write a dual-view session MP4 and its ``.truth.json`` sidecar; returns ``path``.
    ``progress(frames_done, frames_total)`` after each frame (rendering takes minutes)."""
    path = Path(path)
    n = round(seconds * fps)
    if n <= 0:
        raise ValueError(f"{seconds} s at {fps} fps is no frames")
    frames: list[dict[str, Any]] = []
    with Mp4Writer(path, fps, PHANTOM_SCREEN_W, PHANTOM_SCREEN_H) as w:
        for img, truth in iter_session(seed, fps, segment_s, n):
            w.write(img)
            frames.append(truth)
            if progress is not None:
                progress(len(frames), n)
    n_seg = (n + segment_frames(fps, segment_s) - 1) // segment_frames(fps, segment_s)
    segments = []
    for k in range(n_seg):
        seg = asdict(plan_segment(seed, k, fps, segment_s))
        seg["n_frames"] = min(seg["n_frames"], n - seg["start_frame"])
        segments.append(seg)
    side = {"version": SIDECAR_VERSION, "seed": seed, "fps": fps, "labels": list(LESION_CLASSES),
            "width": PHANTOM_SCREEN_W, "height": PHANTOM_SCREEN_H, "layout": layout(),
            "segment_s": segment_s, "segments": segments, "frames": frames}
    sidecar_path(path).write_text(json.dumps(side, separators=(",", ":")))
    return path


def print_progress(name: str, every: float = 0.1, min_s: float = 2.0
                   ) -> Callable[[int, int], None]:
    """A ``write_session`` progress that prints one line on stderr per ``every`` of the
    frames, at most one per ``min_s`` seconds, and the last (from a worker process too:
    whole lines, so parallel workers interleave cleanly)."""
    import sys
    import time

    t0 = time.monotonic()
    state = {"next": every, "t": t0}

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and (done / total < state["next"] or now - state["t"] < min_s):
            return
        state["next"], state["t"] = done / total + every, now
        print(f"phantom {name}: {done}/{total} frames ({100 * done / total:.0f}%, "
              f"{time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)

    return report

