"""From a model's per-frame probabilities to what a result says (issue 16): calibrated,
smoothed within one scene, and ``ok``, ``uncertain`` or ``warming_up``.

Per frame, in this order (``JudgedClassifier.predict``: the live path, in a thread or the
inference process, and deterministic replay alike):

1. Scene cut (``SceneCuts``): the mean absolute difference between 16x16 grey thumbnails
   of the B-mode view of this frame and of the previous frame the model saw above
   ``verdict.scene_cut_threshold`` (a new patient, a new view), a B-mode view darker than
   ``verdict.scene_black_level`` (the probe lifted: no scene, on every such frame), or a
   media time that goes back (a looping file) starts a new scene: the model's window (the
   bimodal CEUS cache, the clip ring) and the smoothing are reset.
2. The model runs. An output that is not probabilities passes through untouched (the
   pipeline makes it a ``model_fault`` result) and stays out of the smoothing.
3. Temperature (``hepascope.temperature``, ``temper``): softmax(log p / T). For a graph that
   gives logits z this is softmax(z / T) exactly, as log-softmax(z) differs from z by a
   constant; for one that gives probabilities it is the same on its log-probabilities.
4. Smoothing (``smooth_series``): the mean of this scene's tempered probabilities within
   ``verdict.smooth_s`` of media time, this frame's included. Media time is taken to the
   microsecond, as a recording keeps it (frames.csv), so a replay of a recording smooths
   over the very frames the live run did; a frame less than 1 ms inside the window's start
   counts as outside it (at 30 fps one second holds 30 frames, never 30 or 31 by rounding).
5. Status: ``warming_up`` while the model's window covers less than
   ``verdict.warmup_fraction`` of its span (``window_fill``), or while there is no scene;
   else ``uncertain`` when the smoothed confidence (largest probability) is below
   ``hepascope.abstain_threshold``; else ``ok``. The pipeline's ``model_fault`` (step 2)
   comes before all three.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from hepascope.core.config import LayoutConfig, VerdictConfig
from hepascope.core.frame import Frame
from hepascope.core.geometry import Rect
from hepascope.core.messages import output_fault
from hepascope.stream.bimodal_streamer import media_time
from hepascope.stream.classifier import Calibration, Classifier

OK, UNCERTAIN, WARMING_UP = "ok", "uncertain", "warming_up"
THUMB = 16  # thumbnail side (px): speckle averages out in a cell, anatomy does not
_TIME_SLACK_S = 1e-3  # a result this close to the smoothing window's start is outside it


def verdict_time(frame: Frame) -> float:
    """The frame's media time to the microsecond: what a recording's index keeps."""
    return round(media_time(frame), 6)


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / temperature) in float64 (``probs`` itself when T is 1)."""
    p = np.asarray(probs, np.float64)
    if temperature == 1.0:
        return p
    with np.errstate(divide="ignore"):  # a probability of 0 stays 0
        z = np.log(p) / temperature
    e = np.exp(z - z.max())
    return np.asarray(e / e.sum())


def _window_mean(times: np.ndarray, probs: np.ndarray, i: int, start: int,
                 span_s: float) -> np.ndarray:
    """Mean of rows start..i whose time is within ``span_s`` before row i's, less the
    slack (row i always)."""
    edge = times[i] - span_s + _TIME_SLACK_S
    lo = start + int(np.searchsorted(times[start:i + 1], edge, side="right"))
    return np.asarray(probs[min(lo, i):i + 1].mean(axis=0))


def smooth_series(times: Sequence[float] | np.ndarray, probs: np.ndarray, span_s: float,
                  scenes: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """The smoothed probabilities of a sequence of results (N, K): row i is the mean of the
    rows j <= i of its scene with ``times[j] > times[i] - span_s + 1 ms`` (row i always;
    times as ``verdict_time`` gives them, in seconds). Times must not go back
    within a scene. The live path computes each of its rows with the same function
    (``Judge``), so an evaluation of recorded results gets the live numbers, bit for bit."""
    t = np.asarray(times, np.float64)
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(t) != len(p):
        raise ValueError(f"need N times and (N, K) probabilities, got {t.shape} and {p.shape}")
    out = np.empty_like(p)
    start = 0
    for i in range(len(p)):
        if i and scenes is not None and scenes[i] != scenes[i - 1]:
            start = i
        elif i > start and t[i] < t[i - 1]:
            raise ValueError(f"time goes back at row {i} within a scene")
        out[i] = _window_mean(t, p, i, start, span_s)
    return out


def thumbnail(view: np.ndarray) -> np.ndarray:
    """A view as a THUMB x THUMB grey float32 image in [0, 1] (area-averaged)."""
    grey = cv2.cvtColor(view, cv2.COLOR_BGR2GRAY) if view.ndim == 3 else view
    small = cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    return np.asarray(small, np.float32) * np.float32(1.0 / 255.0)


class SceneCuts:
    """Finds where a new scene starts in the frames one model sees, from the B-mode view
    alone (cheap: one area resize per frame). ``change`` is the last frame's statistic."""

    def __init__(self, rect: Rect, threshold: float, black_level: float) -> None:
        self.rect, self.threshold, self.black_level = rect, threshold, black_level
        self.change = 0.0  # mean |thumbnail difference| against the previous frame
        self.blank = False  # the last frame's view was near black: no scene
        self._prev: np.ndarray | None = None

    def observe(self, image: np.ndarray) -> bool:
        """Whether ``image`` starts a scene: the first frame, a cut, or a black view."""
        th = thumbnail(self.rect.crop(image))
        prev, self._prev = self._prev, th
        self.blank = float(th.mean()) < self.black_level
        self.change = 0.0 if prev is None else float(np.abs(th - prev).mean())
        return prev is None or self.blank or self.change > self.threshold


class Judge:
    """Steps 3-5 for one model, frame after frame: temperature, smoothing over this
    scene's recent results, status."""

    def __init__(self, config: VerdictConfig, calibration: Calibration) -> None:
        self.config, self.calibration = config, calibration
        self._times: deque[float] = deque()
        self._probs: deque[np.ndarray] = deque()

    def reset(self) -> None:
        """A new scene: forget the results to smooth over."""
        self._times.clear()
        self._probs.clear()

    def judge(self, t: float, probs: np.ndarray, window_fill: float | None,
              blank: bool = False) -> tuple[np.ndarray, str]:
        """(smoothed probabilities, status) of a result at media time ``t``."""
        p = temper(probs, self.calibration.temperature)
        span = self.config.smooth_s
        while self._times and self._times[0] <= t - span + _TIME_SLACK_S:  # not needed again
            self._times.popleft()
            self._probs.popleft()
        self._times.append(t)
        self._probs.append(p)
        times = np.fromiter(self._times, np.float64, len(self._times))
        smoothed = _window_mean(times, np.stack(self._probs), len(times) - 1, 0, span)
        threshold = self.calibration.abstain_threshold
        warmup = self.calibration.warmup_fraction
        if warmup is None:
            warmup = self.config.warmup_fraction
        if blank or (window_fill is not None and window_fill < warmup):
            return smoothed, WARMING_UP
        if threshold is not None and float(smoothed.max()) < threshold:
            return smoothed, UNCERTAIN
        return smoothed, OK


class JudgedClassifier:
    """A classifier whose results are verdicts (see the module docstring): what the
    pipeline and deterministic replay run. ``result_fields`` gives the last result's
    ``status`` (and ``window_fill`` for a window model); ``scene_starts`` counts scenes."""

    def __init__(self, inner: Classifier, config: VerdictConfig, calibration: Calibration,
                 scene_rect: Rect) -> None:
        self.inner = inner
        self.labels, self.model_name = inner.labels, inner.model_name
        self.calibration = calibration
        self.scenes = SceneCuts(scene_rect, config.scene_cut_threshold,
                                config.scene_black_level)
        self.judge = Judge(config, calibration)
        self.scene_starts = 0
        self._t_last: float | None = None
        self._fields: dict[str, Any] = {}

    def new_scene(self) -> None:
        """Reset the model's window (if it has one) and the smoothing."""
        reset = getattr(self.inner, "reset", None)
        if callable(reset):
            reset()
        self.judge.reset()
        self.scene_starts += 1

    def predict(self, frame: Frame) -> tuple[np.ndarray, dict[str, float]]:
        t0 = time.monotonic_ns()
        t = verdict_time(frame)
        went_back = self._t_last is not None and t < self._t_last
        self._t_last = t
        if self.scenes.observe(frame.image) or went_back:
            self.new_scene()
        t1 = time.monotonic_ns()
        probs, stages = self.inner.predict(frame)
        t2 = time.monotonic_ns()
        fill = getattr(self.inner, "window_fill", None)
        self._fields = {} if fill is None else {"window_fill": round(float(fill), 4)}
        values = [float(x) for x in np.asarray(probs, np.float64).ravel()]
        if output_fault(values, len(self.labels)) is not None:
            return probs, stages  # a model_fault result: nothing to smooth or judge
        smoothed, status = self.judge.judge(t, np.asarray(values), fill, self.scenes.blank)
        self._fields["status"] = status
        stages = {**stages, "verdict": (t1 - t0 + time.monotonic_ns() - t2) / 1e6}
        return smoothed, stages

    def result_fields(self) -> dict[str, Any]:
        """The last result's ``status`` and ``window_fill`` (schema fields)."""
        return dict(self._fields)

    def close(self) -> None:
        self.inner.close()


def scene_rect(classifier: Classifier, layout: LayoutConfig) -> Rect:
    """The rectangle scene cuts are judged on: the classifier's own B-mode view where it
    says (``scene_rect``), else the layout's ``bmode`` view, else its first."""
    rect = getattr(classifier, "scene_rect", None)
    if isinstance(rect, Rect):
        return rect
    names = layout.view_names
    return layout.rect("bmode" if "bmode" in names else names[0])


def judged(classifier: Classifier, config: VerdictConfig, calibration: Calibration,
           layout: LayoutConfig) -> JudgedClassifier:
    """``classifier`` whose results are verdicts."""
    return JudgedClassifier(classifier, config, calibration, scene_rect(classifier, layout))
