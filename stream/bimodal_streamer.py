"""The fused bimodal model, streamed: per-frame encoders whose CEUS features are cached,
and a fusion head over a window of them.

Each new frame costs one B-mode encoder pass and one CEUS encoder pass; the head then reads
the newest B-mode feature and T cached CEUS features chosen a fixed media-time interval
apart (nearest cached frame to each target time, so dropped frames cost accuracy only
slightly, never a stall). Until a full window exists the oldest feature is repeated, and
``window_fill`` says how much of the window's span the cache covers. ``reset`` (a scene
cut, found by stream/verdict.py) empties the cache, as does a timeline that goes back."""

from __future__ import annotations

import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import ModelError, ModelInputError
from hepascope.core.export_format import META_PARTS, ROLE_BMODE, ROLE_CEUS, ROLE_HEAD
from hepascope.core.frame import Frame
from hepascope.core.geometry import Rect
from hepascope.core.preprocess import PreprocessSpec, preprocess_view
from hepascope.engines.interface import Engine


def media_time(frame: Frame) -> float:
    """The frame's media time (s): it keeps windows right under --max-rate replay; live
    sources without timestamps fall back to the capture clock."""
    return frame.pts_s if frame.pts_s is not None else frame.t_capture_ns / 1e9


_TIME_SLACK_S = 1e-3  # a cache spanning the window to within this counts as full


class BimodalStreamer:
    """``predict(frame)`` for a bimodal export: three engines chained, one feature cache."""

    def __init__(self, bmode: Engine, ceus: Engine, head: Engine, *, labels: tuple[str, ...],
                 bmode_spec: PreprocessSpec, ceus_spec: PreprocessSpec, window: int,
                 interval_s: float, model_name: str, parallel: bool = False) -> None:
        """``parallel``: the CEUS encoder runs in a thread of its own while this one runs
        the B-mode encoder (engines release the GIL while they compute), so the two
        overlap on two cores or two GPU streams; the results are the same."""
        if window < 1 or interval_s <= 0:
            raise ModelError(f"invalid window {window} x {interval_s} s")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ceus-encoder") \
            if parallel else None
        self.engines = {ROLE_BMODE: bmode, ROLE_CEUS: ceus, ROLE_HEAD: head}
        self.labels, self.model_name = labels, model_name
        self.window, self.interval_s = window, interval_s
        self._bmode_in = _single_input(bmode, bmode_spec)
        self._ceus_in = _single_input(ceus, ceus_spec)
        self._specs = (bmode_spec, ceus_spec)
        names = [s.name for s in head.inputs]
        if sorted(names) != ["bmode_feat", "ceus_feats"]:
            raise ModelInputError(f"head inputs are {names}; expected bmode_feat, ceus_feats")
        span = (window - 1) * interval_s
        self._keep_s = span + max(1.0, interval_s)
        self._cache: deque[tuple[float, np.ndarray]] = deque()

    def reset(self) -> None:
        """Forget the cached CEUS features (a new scene starts a new window)."""
        self._cache.clear()

    @property
    def window_fill(self) -> float:
        """The share (0-1) of the window's span that the cached features cover: 0 after a
        reset, 1 once the oldest target time has a frame of its own."""
        if not self._cache:
            return 0.0
        span = (self.window - 1) * self.interval_s
        if span <= 0:
            return 1.0
        covered = self._cache[-1][0] - self._cache[0][0]
        return 1.0 if covered + _TIME_SLACK_S >= span else covered / span

    @property
    def scene_rect(self) -> Rect:
        """Where the B-mode view is in the frame: what scene cuts are judged on."""
        bspec = self._specs[0]
        return bspec.layout.rect(bspec.view_names[0])

    def window_features(self, t_now: float) -> np.ndarray:
        """(1, T, C) CEUS features at t_now - (T-1-j) * interval, oldest first."""
        times = np.fromiter((t for t, _ in self._cache), float, len(self._cache))
        feats = []
        for j in range(self.window):
            target = t_now - (self.window - 1 - j) * self.interval_s
            feats.append(self._cache[int(np.argmin(np.abs(times - target)))][1])
        return np.stack(feats, axis=1)

    def predict(self, frame: Frame) -> tuple[np.ndarray, dict[str, float]]:
        bspec, cspec = self._specs
        t0 = time.monotonic_ns()
        xb = preprocess_view(frame.image, bspec, bspec.view_names[0])[None]
        xc = preprocess_view(frame.image, cspec, cspec.view_names[0])[None]
        t1 = time.monotonic_ns()
        if self._pool is not None:
            job = self._pool.submit(self._encode_ceus, xc)
            fb = self.engines[ROLE_BMODE].infer({self._bmode_in: xb})["bmode_feat"].copy()
            fc = job.result()
        else:
            fb = self.engines[ROLE_BMODE].infer({self._bmode_in: xb})["bmode_feat"].copy()
            fc = self._encode_ceus(xc)
        t2 = time.monotonic_ns()
        t = media_time(frame)
        while self._cache and (self._cache[-1][0] >= t or t - self._cache[0][0] > self._keep_s):
            # a timeline that jumps back (a looping file) starts a new window
            if self._cache[-1][0] >= t:
                self._cache.clear()
            else:
                self._cache.popleft()
        self._cache.append((t, fc))
        out = self.engines[ROLE_HEAD].infer(
            {"bmode_feat": fb, "ceus_feats": self.window_features(t)})
        probs = np.asarray(out["probs"], np.float64).reshape(-1)
        t3 = time.monotonic_ns()
        return probs / probs.sum(), {"preprocess": (t1 - t0) / 1e6,
                                     "encode": (t2 - t1) / 1e6, "fuse": (t3 - t2) / 1e6,
                                     "infer": (t3 - t1) / 1e6}

    def _encode_ceus(self, xc: np.ndarray) -> np.ndarray:
        return np.array(self.engines[ROLE_CEUS].infer({self._ceus_in: xc})["ceus_feat"])

    @property
    def parallel(self) -> bool:
        return self._pool is not None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for e in self.engines.values():
            e.close()


def _single_input(engine: Engine, spec: PreprocessSpec) -> str:
    if len(engine.inputs) != 1:
        raise ModelInputError(f"an encoder must have one input, got {len(engine.inputs)}")
    inp = engine.inputs[0]
    h, w = spec.size
    want = (spec.channels, h, w)
    if len(inp.shape) != 4 or tuple(inp.shape[1:]) != want:
        raise ModelInputError(f"encoder input {inp.describe()} does not match its "
                              f"preprocessing ({spec.channels}x{h}x{w})")
    return inp.name


def describe_parts(head_meta: dict[str, str], directory: Path) -> dict[str, Path]:
    """Paths of the two encoder graphs a head's metadata names."""
    try:
        parts: Any = json.loads(head_meta[META_PARTS])
        return {role: directory / str(parts[role]) for role in (ROLE_BMODE, ROLE_CEUS)}
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise ModelError(f"head metadata 'hepascope.parts' is missing or invalid ({e!r})") from e
