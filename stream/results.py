"""The result message: one function (``result_message``) builds it from a model's output on
a frame, for the main model (``main_step``, in this process or the inference child), the
side models (``side_step``) and the deterministic replay. The publish loop adds the run's
id and the publish and UTC times."""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from hepascope.core.frame import Frame
from hepascope.core.messages import MODEL_FAULT, SCHEMA_VERSION, output_fault
from hepascope.stream.classifier import Classifier

MS = 1e-6  # ns -> ms


class Named(Protocol):
    """What a result message is built from: the model's name and class labels (a main
    model, a side model, one stream's verdict of a batched model)."""

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def model_name(self) -> str: ...


class SideModel(Protocol):
    """A model run beside the main one on its own cadence (``ClipStreamer``): ``step`` sees
    every frame its thread takes and returns probabilities and stage times (ms) only for
    the frames it ran on. A ``result_fields()`` method, if any, adds optional result fields
    (and may give the result's ``status``)."""

    labels: tuple[str, ...]
    model_name: str

    def step(self, frame: Frame) -> tuple[np.ndarray, dict[str, float]] | None: ...

    def close(self) -> None: ...


def main_step(classifier: Classifier, frame: Frame, t_read: int) -> dict[str, Any]:
    """The main model's step: its result for ``frame`` (a model fault if the output is
    not a probability distribution)."""
    return result_message(classifier, frame, t_read, classifier.predict(frame))


class SequenceModel(Protocol):
    """One stream's batching model (``stream.batch.BatchClassifier``) as the main step
    sees it: bare outputs of frames in one engine run, then the stream's verdicts in
    order, and what result messages are built from."""

    def infer(self, frames: list[Frame]) -> list[tuple[np.ndarray, dict[str, float]]]: ...

    def verdict(self, i: int, frame: Frame, out: tuple[np.ndarray, dict[str, float]]
                ) -> tuple[np.ndarray, dict[str, float]]: ...

    def stream_model(self, i: int) -> Named: ...


def main_batch_step(model: SequenceModel, frames: list[Frame], t_read: int
                    ) -> list[dict[str, Any]]:
    """The main model's step on frames of one stream in capture order (an unpaced source):
    one engine run, then each frame's verdict and its result message, in order."""
    named = model.stream_model(0)
    return [result_message(named, f, t_read, model.verdict(0, f, out))
            for f, out in zip(frames, model.infer(frames), strict=True)]


def side_step(model: SideModel, frame: Frame, t_read: int) -> dict[str, Any] | None:
    out = model.step(frame)
    return None if out is None else result_message(model, frame, t_read, out)


def result_message(model: Named, frame: Frame, t_read: int,
                   out: tuple[np.ndarray, dict[str, float]]) -> dict[str, Any]:
    """The result map of ``model``'s output on ``frame``: its top class and the status the
    model gives in ``result_fields()`` (``ok`` if none: a verdict is ``uncertain`` or
    ``warming_up``, stream/verdict.py), or, for an output that is not probabilities (NaN,
    Inf, out of range, wrong count), status ``model_fault`` with no probabilities, no class
    and the reason. The publish loop adds the run's id and the publish and UTC times."""
    probs, stages = out
    t_inf = time.monotonic_ns()
    values = [float(p) for p in np.asarray(probs, dtype=np.float64).ravel()]
    fault = output_fault(values, len(model.labels))
    fields_of = getattr(model, "result_fields", None)  # optional schema fields, status
    fields: dict[str, Any] = dict(fields_of()) if callable(fields_of) else {}
    status = fields.pop("status", "ok")
    msg: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "stream": frame.source_id,
        "seq": int(frame.seq),
        "model": model.model_name,
        "labels": list(model.labels),
        "status": status if fault is None else MODEL_FAULT,
        "probs": values if fault is None else [],
        "t_capture_ns": frame.t_capture_ns,
        "pts_s": frame.pts_s,
        "latency_ms": {"queue": (t_read - frame.t_capture_ns) * MS, **stages},
        "_t_infer_ns": t_inf,
    }
    if fault is None:
        msg["top"] = model.labels[int(np.argmax(values))]
    else:
        msg["fault"] = fault
    msg.update(fields)  # window_fill
    return msg
