"""One single-frame classifier shared by several streams: the frames of a step (the newest
of each stream) go through the engine as one batch, and each stream keeps its own verdict
state (scene cuts, smoothing, status: stream/verdict.py), since a stream's history must
never leak into another's.

``BatchClassifier.predict_batch`` stacks each frame's engine inputs on the batch axis, runs
the engine once and splits the outputs row by row; a graph whose batch axis is static runs
the same frames one at a time (same results, no batching gain). Only a single-frame
classifier batches: a window model (the bimodal export, a clip model) keeps a per-stream
cache inside its streamer, so it is refused here and stays one pipeline per stream."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hepascope.core.config import Config
from hepascope.core.errors import ModelError
from hepascope.core.frame import Frame
from hepascope.core.geometry import Rect
from hepascope.stream.classifier import Classifier, FrameClassifier, read_calibration
from hepascope.stream.model_loader import open_model
from hepascope.stream.verdict import JudgedClassifier, judged

Output = tuple[np.ndarray, dict[str, float]]  # probabilities, stage times (ms)


class _Row:
    """The inner classifier of one stream's verdicts: it hands back the row of the batch
    computed for that stream's frame (``put`` just before the verdict asks)."""

    def __init__(self, labels: tuple[str, ...], model_name: str, scene_rect: Rect) -> None:
        self.labels, self.model_name = labels, model_name
        self.scene_rect = scene_rect  # scene cuts on the model's own B-mode view
        self._out: Output | None = None

    def put(self, out: Output) -> None:
        self._out = out

    def predict(self, frame: Frame) -> Output:
        if self._out is None:
            raise RuntimeError("no batch row was put for this frame")
        out, self._out = self._out, None
        return out

    def close(self) -> None:
        """Nothing to close: the engine belongs to the batch classifier."""


def batch_axis_free(clf: FrameClassifier) -> bool:
    """Whether every input of ``clf``'s graph takes any batch size."""
    return all(bool(s.shape) and s.shape[0] is None for s in clf.engine.inputs)


class BatchClassifier:
    """A ``FrameClassifier`` run on a batch of frames from ``streams`` streams, with one
    ``JudgedClassifier`` per stream (``verdicts=False``: bare probabilities, as
    ``open_model(verdicts=False)``)."""

    def __init__(self, clf: FrameClassifier, streams: int, config: Config,
                 verdicts: bool = True) -> None:
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.clf, self.streams = clf, streams
        self.labels, self.model_name = clf.labels, clf.model_name
        self.batchable = batch_axis_free(clf)
        self._rows = [_Row(clf.labels, clf.model_name, clf.scene_rect)
                      for _ in range(streams)]
        self.judges: list[JudgedClassifier] | None = None
        if verdicts:
            cal = read_calibration(clf.engine.metadata, clf.model_name)
            self.judges = [judged(r, config.verdict, cal, config.layout) for r in self._rows]
        self.batches = 0
        self.batched_frames = 0

    def stream_model(self, i: int) -> JudgedClassifier | BatchClassifier:
        """What stream ``i``'s result messages are built from (its verdict's fields)."""
        return self if self.judges is None else self.judges[i]

    def infer(self, frames: list[Frame]) -> list[Output]:
        """Bare probabilities of each frame (one engine run when the graph batches)."""
        t0 = time.monotonic_ns()
        feeds = [self.clf.feeds(f.image) for f in frames]
        t1 = time.monotonic_ns()
        if self.batchable and len(frames) > 1:
            stacked = {k: np.concatenate([fd[k] for fd in feeds]) for k in feeds[0]}
            out = self.clf.engine.infer(stacked)
            probs = [self.clf.probabilities({k: v[i:i + 1] for k, v in out.items()})
                     for i in range(len(frames))]
        else:
            probs = [self.clf.probabilities(self.clf.engine.infer(fd)) for fd in feeds]
        t2 = time.monotonic_ns()
        self.batches += 1
        self.batched_frames += len(frames)
        # each frame waited for the whole batch: that is its latency, not a share of it
        stages = {"preprocess": (t1 - t0) / 1e6, "infer": (t2 - t1) / 1e6}
        return [(p, dict(stages)) for p in probs]

    def predict_batch(self, frames: list[Frame], streams: list[int]) -> list[Output]:
        """The result of each frame, ``frames[k]`` from stream ``streams[k]``: the batch's
        probabilities, then (with verdicts) that stream's verdict on them."""
        if len(frames) != len(streams) or len(set(streams)) != len(streams):
            raise ValueError("one frame per stream, each stream at most once per batch")
        outs = self.infer(frames)
        return [self.verdict(i, f, out) for f, i, out in zip(frames, streams, outs, strict=True)]

    def verdict(self, i: int, frame: Frame, out: Output) -> Output:
        """Stream ``i``'s verdict on ``out``, the batch's output for ``frame`` (the bare
        output without verdicts). A stream's frames must come in capture order; build each
        one's result message before the next verdict (its status is the latest one's)."""
        if self.judges is None:
            return out
        self._rows[i].put(out)
        return self.judges[i].predict(frame)

    def close(self) -> None:
        self.clf.close()


def open_batched(path: str | Path, config: Config, batch: int, *, backend: str = "onnxruntime",
                 threads: int | None = None, labels: tuple[str, ...] | None = None,
                 ) -> tuple[Classifier | BatchClassifier, int]:
    """One stream's main model and the frames it takes per engine run: a
    ``BatchClassifier`` of one stream and ``batch`` where the model batches (a single-frame
    graph with a free batch axis), else the classifier ``open_model`` gives and 1 (a window
    model's cache takes frames one by one; a static batch axis gains nothing)."""
    if batch > 1:
        clf = open_model(path, config, backend=backend, threads=threads, labels=labels,
                         verdicts=False)
        if isinstance(clf, FrameClassifier) and batch_axis_free(clf):
            return BatchClassifier(clf, 1, config), batch
        clf.close()
    return open_model(path, config, backend=backend, threads=threads, labels=labels), 1


def open_batch_model(path: str | Path, config: Config, streams: int, *,
                     backend: str = "onnxruntime", threads: int | None = None,
                     labels: tuple[str, ...] | None = None,
                     verdicts: bool = True) -> BatchClassifier:
    """``path``'s single-frame classifier shared by ``streams`` streams; a window model
    (bimodal, clip) is a ``ModelError``: its cache is per stream, run one pipeline each."""
    clf = open_model(path, config, backend=backend, threads=threads, labels=labels,
                     verdicts=False)
    if not isinstance(clf, FrameClassifier):
        clf.close()
        raise ModelError(f"{Path(path).name}: a window model ({type(clf).__name__}) cannot be "
                         "batched across streams; run one pipeline per stream")
    return BatchClassifier(clf, streams, config, verdicts)
