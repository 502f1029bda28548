"""A 3D-CNN over a sliding window of CEUS frames ([S3]: T=30 frames of 64x64, one every
2 s), streamed beside the per-frame model.

The window: a frame is kept when its media time is at least ``interval_s`` after the last
kept one, so only those frames are preprocessed (the CEUS view alone); the last T kept
frames live in a preallocated ``(1, C, T, h, w)`` ring. A run copies them, oldest first,
into a second preallocated array, the engine's input: nothing is allocated per frame but
the kept frame's preprocessing. Until T frames are held the oldest is repeated (as
``BimodalStreamer`` does); ``window_fill`` (held / T) goes out with every result so clients
can tell a partial window. A media timeline that jumps back (a looping file) starts anew.

Two entry points. ``predict`` (the ``Classifier`` protocol) adds the frame and runs the
model, so a clip export also works as the main model. ``step`` is what the pipeline's side
thread calls for every frame it takes: it adds the frame and runs the model only on every
``every``-th frame, returning None otherwise (no result is published for those)."""

from __future__ import annotations

import time

import numpy as np

from hepascope.core.errors import ModelError, ModelInputError
from hepascope.core.frame import Frame
from hepascope.core.preprocess import PreprocessSpec, preprocess_view
from hepascope.engines.interface import Engine
from hepascope.stream.bimodal_streamer import media_time

# Media times within this of the interval count as a full interval: 60 frames at 30 fps
# are 2 s apart even when their float timestamps differ by 1e-15 less.
_TIME_SLACK_S = 1e-3


class ClipStreamer:
    """Sliding-window clip classifier over one view; one thread uses it at a time."""

    def __init__(self, engine: Engine, *, labels: tuple[str, ...], spec: PreprocessSpec,
                 view: str, input_name: str, output_name: str, window: int, interval_s: float,
                 model_name: str, every: int = 1) -> None:
        if window < 1 or not interval_s > 0:
            raise ModelError(f"invalid clip window {window} x {interval_s} s")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if view not in spec.view_names:
            raise ModelError(f"clip input view {view!r} is not among its preprocessing's views "
                             f"({', '.join(spec.view_names)})")
        self.engine, self.labels, self.model_name = engine, labels, model_name
        self.spec, self.view, self.every = spec, view, every
        self.window, self.interval_s = window, interval_s
        self._input = _check_input(engine, input_name, spec, window)
        self._output = _check_output(engine, output_name, labels)
        h, w = spec.size
        self._ring = np.zeros((1, spec.channels, window, h, w), np.float32)
        self._feed = np.zeros_like(self._ring)
        self.runs = 0  # engine runs since construction (for telemetry and tests)
        self.reset()

    @property
    def held(self) -> int:
        """Frames in the window (at most T)."""
        return self._held

    @property
    def window_fill(self) -> float:
        """Held / T: 1.0 once the window is full, less while the oldest is repeated."""
        return self._held / self.window

    def reset(self) -> None:
        """Forget the window and the schedule (a new session, a timeline that went back)."""
        self._held, self._head = 0, 0
        self._t_kept: float | None = None
        self._t_seen: float | None = None
        self._last_run_seq: int | None = None

    def observe(self, frame: Frame) -> bool:
        """Add ``frame`` to the window if a slot is due; True if it was kept."""
        t = media_time(frame)
        if self._t_seen is not None and t < self._t_seen:
            self.reset()
        self._t_seen = t
        if self._t_kept is not None and t - self._t_kept < self.interval_s - _TIME_SLACK_S:
            return False
        self._ring[0, :, self._head] = preprocess_view(frame.image, self.spec, self.view)
        self._head = (self._head + 1) % self.window
        self._held = min(self._held + 1, self.window)
        self._t_kept = t
        return True

    def due(self, frame: Frame) -> bool:
        """Whether the model runs on ``frame``: the first after a reset, then every
        ``every``-th by sequence number (frames the caller never saw count too, so a busy
        thread keeps the cadence in source frames)."""
        last = self._last_run_seq
        return last is None or frame.seq < last or frame.seq - last >= self.every

    def clip(self) -> np.ndarray:
        """The engine input for the current window, oldest first, padded by repeating the
        oldest held frame; a view of a reused buffer (valid until the next call)."""
        n, t = self._held, self.window
        if n == 0:
            raise ModelError("the clip window is empty: observe a frame first")
        if n < t:  # slots 0..n-1 were filled since the reset, in order
            self._feed[:, :, : t - n] = self._ring[:, :, :1]
            self._feed[:, :, t - n :] = self._ring[:, :, :n]
        else:  # full ring: the oldest is at the write head
            k = self._head
            self._feed[:, :, : t - k] = self._ring[:, :, k:]
            self._feed[:, :, t - k :] = self._ring[:, :, :k]
        return self._feed

    def run(self, frame: Frame) -> np.ndarray:
        """Probabilities of the current window (float64, sums to 1); ``frame`` is the newest
        seen, for the schedule."""
        out = self.engine.infer({self._input: self.clip()})[self._output]
        raw = np.asarray(out, np.float64).reshape(-1)
        if raw.size != len(self.labels):
            raise ModelError(f"clip model output has {raw.size} values for "
                             f"{len(self.labels)} labels")
        self._last_run_seq = frame.seq
        self.runs += 1
        return raw / raw.sum()

    def step(self, frame: Frame) -> tuple[np.ndarray, dict[str, float]] | None:
        """Observe ``frame``; run the model if it is due, else return None."""
        t0 = time.monotonic_ns()
        self.observe(frame)
        if not self.due(frame):
            return None
        t1 = time.monotonic_ns()
        probs = self.run(frame)
        t2 = time.monotonic_ns()
        return probs, {"preprocess": (t1 - t0) / 1e6, "infer": (t2 - t1) / 1e6}

    def predict(self, frame: Frame) -> tuple[np.ndarray, dict[str, float]]:
        """The ``Classifier`` protocol: observe ``frame`` and run, whatever ``every`` says."""
        t0 = time.monotonic_ns()
        self.observe(frame)
        t1 = time.monotonic_ns()
        probs = self.run(frame)
        t2 = time.monotonic_ns()
        return probs, {"preprocess": (t1 - t0) / 1e6, "infer": (t2 - t1) / 1e6}

    def result_fields(self) -> dict[str, float]:
        """Extra fields of the result just computed (schema: optional ``window_fill``)."""
        return {"window_fill": round(self.window_fill, 4)}

    def close(self) -> None:
        self.engine.close()


def _check_input(engine: Engine, name: str, spec: PreprocessSpec, window: int) -> str:
    if len(engine.inputs) != 1 or engine.inputs[0].name != name:
        raise ModelInputError(f"a clip model has one input {name!r}, got "
                              f"{[s.describe() for s in engine.inputs]}")
    inp = engine.inputs[0]
    h, w = spec.size
    want = (1, spec.channels, window, h, w)
    if len(inp.shape) != 5 or inp.dtype != np.float32:
        raise ModelInputError(f"clip input {inp.describe()} is not a float32 clip batch "
                              f"[N,C,T,H,W]; expected {want}")
    if any(isinstance(d, int) and d != x for d, x in zip(inp.shape, want, strict=True)):
        raise ModelInputError(f"clip input {inp.describe()} does not match its window and "
                              f"preprocessing {want}")
    return name


def _check_output(engine: Engine, name: str, labels: tuple[str, ...]) -> str:
    out = next((s for s in engine.outputs if s.name == name), None)
    if out is None:
        raise ModelError(f"clip model has no output {name!r} "
                         f"({', '.join(s.name for s in engine.outputs)})")
    n = out.shape[-1] if out.shape else None
    if isinstance(n, int) and n != len(labels):
        raise ModelError(f"clip model output {out.describe()} has {n} classes but "
                         f"{len(labels)} labels")
    return name
