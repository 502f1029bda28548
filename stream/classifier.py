"""Binds a classifier engine to the frames: which view feeds which input, at what size,
with which labels, and how outputs become probabilities.

What a model needs is read from its metadata where present (``hepascope.labels``,
``hepascope.output``, ``hepascope.inputs``), else inferred from its input shapes; a model
the frames cannot feed is refused with one clear ``ModelInputError``. Its calibration
(``META_TEMPERATURE``, ``META_ABSTAIN``: JSON numbers in the metadata of the graph that
gives the probabilities, the head of a bimodal export) is read by ``read_calibration``.
``predict`` may preprocess on the GPU, straight into the engine's input buffer
(``GpuFeed``; ``pipeline.gpu_preprocess``)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np

from hepascope.core.config import GPU_PREPROCESS, Config
from hepascope.core.errors import ModelError, ModelInputError
from hepascope.core.export_format import (
    META_ABSTAIN,
    META_INPUTS,
    META_LABELS,
    META_MODEL,
    META_OUTPUT,
    META_PREPROCESS,
    META_TEMPERATURE,
    META_WARMUP,
)
from hepascope.core.frame import Frame
from hepascope.core.geometry import Rect
from hepascope.core.preprocess import PreprocessSpec, preprocess, spec_from_dict
from hepascope.engines.gpu_preprocess import GpuPreprocessor, probe_kernels
from hepascope.engines.interface import DeviceFed, Engine, TensorSpec

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class Calibration:
    """What an exported model says about its own confidence: the temperature that
    calibrates it, and the confidence below which its answer is ``uncertain``."""

    temperature: float = 1.0
    abstain_threshold: float | None = None
    warmup_fraction: float | None = None  # None: the config's verdict.warmup_fraction


def _meta_number(meta: Mapping[str, str], key: str, where: str) -> float | None:
    if key not in meta:
        return None
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise ModelError(f"{where}: metadata {key!r} is not a JSON number") from e
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise ModelError(f"{where}: metadata {key!r} must be a finite number, "
                         f"got {meta[key]!r:.40}")
    return float(value)


def read_calibration(meta: Mapping[str, str], where: str) -> Calibration:
    """The calibration in a model's metadata (``where`` names it in errors); a temperature
    that is not > 0 or a threshold outside [0, 1] is a ``ModelError``."""
    temperature = _meta_number(meta, META_TEMPERATURE, where)
    threshold = _meta_number(meta, META_ABSTAIN, where)
    if temperature is not None and temperature <= 0:
        raise ModelError(f"{where}: metadata {META_TEMPERATURE!r} must be > 0, got {temperature}")
    if threshold is not None and not 0 <= threshold <= 1:
        raise ModelError(f"{where}: metadata {META_ABSTAIN!r} must be in [0, 1], got {threshold}")
    warmup = _meta_number(meta, META_WARMUP, where)
    if warmup is not None and not 0 <= warmup <= 1:
        raise ModelError(f"{where}: metadata {META_WARMUP!r} must be in [0, 1], got {warmup}")
    return Calibration(1.0 if temperature is None else temperature, threshold, warmup)


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max()
    e = np.exp(z)
    return e / e.sum()


def _json_meta(meta: dict[str, str], key: str) -> object | None:
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ModelError(f"model metadata {key!r} is not valid JSON") from e


def _image_input(spec: TensorSpec) -> tuple[int, tuple[int, int] | None]:
    """(channels, static (H, W) or None) of an image input, or ModelInputError."""
    shape = spec.shape
    if len(shape) != 4:
        raise ModelInputError(
            f"model input {spec.describe()} is not an image batch [N,C,H,W]; "
            "hepascope feeds preprocessed frames as [1,C,H,W]")
    n, c, h, w = shape
    if isinstance(n, int) and n != 1:
        raise ModelInputError(
            f"model input {spec.describe()} needs batch {n}; frames come one at a time")
    if c not in (1, 3):
        raise ModelInputError(f"model input {spec.describe()} wants {c} channels; "
                              "ultrasound frames give 1 (grey) or 3 (grey replicated)")
    if spec.dtype != np.float32:
        raise ModelInputError(f"model input {spec.describe()} is not float32")
    hw = (h, w) if isinstance(h, int) and isinstance(w, int) else None
    return int(c), hw


class GpuFeed:
    """A single-frame model's preprocessing on the GPU: one ``GpuPreprocessor`` per engine
    input, in the engine's CUDA context, writing the input's device buffer on the engine's
    stream, so ``infer_device`` needs no copy of the input. Built for a frame shape on the
    first frame (and again on a frame of another shape); the kernels are loaded once here
    (``probe_kernels``), so that a missing GPU path shows when the model is opened."""

    def __init__(self, engine: DeviceFed, inputs: tuple[TensorSpec, ...],
                 specs: dict[str, PreprocessSpec]) -> None:
        if set(specs) != {s.name for s in inputs}:
            raise ValueError(f"specs {sorted(specs)} do not name the inputs")
        self.engine = engine
        self.inputs = {s.name: s for s in inputs}
        self.specs = specs
        self.kernels = probe_kernels(engine.cuda_context)
        self.frame_shape: tuple[int, ...] | None = None
        self._pre: dict[str, GpuPreprocessor] = {}

    def prepare(self, frame_shape: tuple[int, ...]) -> None:
        """Have preprocessors for frames of ``frame_shape`` (``ModelError`` if they cannot
        be built; none are left then)."""
        if frame_shape == self.frame_shape:
            return
        self.close()
        try:
            for name, spec in self.specs.items():
                pre = self._pre[name] = GpuPreprocessor(
                    spec, frame_shape, dtype=self.inputs[name].dtype,
                    context=self.engine.cuda_context)
                want = self.inputs[name].at_batch(1)
                if int(np.prod(want)) != int(np.prod(pre.out_shape)):
                    raise ModelInputError(f"model input {self.inputs[name].describe()}: the "
                                          f"GPU preprocessing writes {pre.out_shape}")
        except BaseException:
            self.close()
            raise
        self.frame_shape = frame_shape

    def queue(self, image: np.ndarray) -> None:
        """Queue ``image``'s preprocessing into the engine's inputs at batch 1 (``prepare``
        first, for its shape)."""
        ptrs = self.engine.device_inputs(1)
        stream = self.engine.device_stream
        for name, pre in self._pre.items():
            pre.run(image, out={self.specs[name].view_names[0]: ptrs[name]}, stream=stream)

    def close(self) -> None:
        """Close every preprocessor (each, even if one fails; the first error is raised)."""
        pres, self._pre, self.frame_shape = self._pre, {}, None
        error: BaseException | None = None
        for pre in pres.values():
            try:
                pre.close()
            except BaseException as e:  # raised below, after the others are closed
                error = error or e
        if error is not None:
            raise error


class Classifier(Protocol):
    """What the pipeline's inference stage runs: one frame in, probabilities out, with the
    time each internal stage took (ms). May keep state across frames (feature caches)."""

    labels: tuple[str, ...]
    model_name: str

    def predict(self, frame: Frame) -> tuple[np.ndarray, dict[str, float]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Prediction:
    probs: np.ndarray  # float64, sums to 1
    labels: tuple[str, ...]

    @property
    def top(self) -> tuple[str, float]:
        i = int(np.argmax(self.probs))
        return self.labels[i], float(self.probs[i])


class FrameClassifier:
    """preprocess -> engine -> probabilities, for one frame. Holds no thread of its own.

    ``gpu_preprocess`` (auto | on | off; the live path passes ``pipeline.gpu_preprocess``,
    a classifier made directly, as eval and the bench do, preprocesses on the host):
    ``predict`` preprocesses on the GPU (``GpuFeed``) where the engine is ``DeviceFed``;
    auto falls back to the host where not, logging why once; on refuses (``ModelError``).
    ``preprocess_device`` says which ran ("cuda" | "cpu"); ``feeds``, ``classify`` and the
    batch path (stream/batch.py) stay on the host."""

    def __init__(self, engine: Engine, config: Config, *, labels: tuple[str, ...] | None = None,
                 model_name: str | None = None, gpu_preprocess: str = "off") -> None:
        if gpu_preprocess not in GPU_PREPROCESS:
            raise ValueError(f"gpu_preprocess must be one of {GPU_PREPROCESS}, "
                             f"got {gpu_preprocess!r}")
        self.engine = engine
        meta = engine.metadata
        views_meta = _json_meta(meta, META_INPUTS)  # {input name: view name}
        view_names = config.layout.view_names
        meta_pre = _json_meta(meta, META_PREPROCESS)
        meta_spec = spec_from_dict(meta_pre) if meta_pre is not None else None
        if meta_spec is not None:
            if len(engine.inputs) != 1:
                raise ModelError("'hepascope.preprocess' metadata needs a single-input model")
            view_names = meta_spec.view_names
        self.bindings: dict[str, str] = {}
        specs: dict[str, PreprocessSpec] = {}
        for spec in engine.inputs:
            channels, hw = _image_input(spec)
            if isinstance(views_meta, dict) and spec.name in views_meta:
                view = str(views_meta[spec.name])
            elif spec.name in view_names:
                view = spec.name
            elif len(engine.inputs) == 1:
                view = view_names[0]
            else:
                raise ModelInputError(f"model input {spec.name!r} names no view of the layout "
                                      f"({', '.join(view_names)})")
            if view not in view_names:
                raise ModelInputError(f"model input {spec.name!r} wants view {view!r}, "
                                      f"which the layout lacks ({', '.join(view_names)})")
            if meta_spec is not None:  # an exported model says how it was trained: obey it
                specs[spec.name] = meta_spec
            else:
                specs[spec.name] = PreprocessSpec(config.layout, config.preprocess,
                                                  hw or config.preprocess.size, channels, (view,))
            self.bindings[spec.name] = view
        self._specs = specs
        if len(engine.outputs) < 1:
            raise ModelError("model has no outputs")
        out = engine.outputs[0]
        n_classes = out.shape[-1] if out.shape else None
        meta_labels = _json_meta(meta, META_LABELS)
        if labels is None and isinstance(meta_labels, list):
            labels = tuple(str(x) for x in meta_labels)
        if labels is None:
            if not isinstance(n_classes, int):
                raise ModelError("model output has no static class count and no labels metadata")
            labels = tuple(f"class{i}" for i in range(n_classes))
            log.warning("model has no 'hepascope.labels' metadata; using %s", ", ".join(labels))
        if isinstance(n_classes, int) and n_classes != len(labels):
            raise ModelError(f"model has {n_classes} outputs but {len(labels)} labels")
        self.labels = labels
        self.output_name = out.name
        self.output_kind = meta.get(META_OUTPUT, "auto")  # probs | logits | auto
        self.model_name = model_name or meta.get(META_MODEL, "model")
        self.gpu_preprocess = gpu_preprocess
        self.preprocess_device = "cpu"
        self._gpu = self._gpu_feed()

    def _gpu_feed(self) -> GpuFeed | None:
        """The GPU path ``gpu_preprocess`` asks for and the engine allows, or None."""
        mode, engine = self.gpu_preprocess, self.engine
        if mode == "off":
            return None
        try:  # before Python 3.12 the check reads the properties: cuda_context may refuse
            fed = isinstance(engine, DeviceFed)
            reason = f"engine {engine.name} has no device inputs"
        except ModelError as e:
            fed, reason = False, str(e).strip().splitlines()[0]
        if fed:
            try:
                feed = GpuFeed(cast(DeviceFed, engine), engine.inputs, self._specs)
            except ModelError as e:
                reason = str(e).strip().splitlines()[0]
            else:
                self.preprocess_device = "cuda"
                log.info("preprocess %s -> cuda: %s engine inputs written on the GPU "
                         "(kernels: %s)", mode, engine.name, feed.kernels)
                return feed
        if mode == "on":
            raise ModelError(f"pipeline.gpu_preprocess is on, but {reason}")
        log.info("preprocess auto -> cpu: %s", reason)
        return None

    def _gpu_ready(self, image: np.ndarray) -> bool:
        """Whether this frame goes the GPU path: its preprocessors built for its shape.
        A failed build is the run's error with on; with auto, logged, then the host."""
        if self._gpu is None:
            return False
        try:
            self._gpu.prepare(tuple(image.shape))
            return True
        except ModelError as e:
            if self.gpu_preprocess == "on":
                raise
            log.warning("preprocess auto -> cpu: no GPU preprocessing for frames of %s (%s)",
                        image.shape, e)
            gpu, self._gpu, self.preprocess_device = self._gpu, None, "cpu"
            gpu.close()
            return False

    @property
    def scene_rect(self) -> Rect:
        """Where in the frame the model's B-mode view (else its first) is: what scene cuts
        are judged on."""
        views = [(self.bindings[name], spec) for name, spec in self._specs.items()]
        view, spec = next(((v, s) for v, s in views if v == "bmode"), views[0])
        return spec.layout.rect(view)

    def feeds(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The engine inputs for one captured frame (preprocessing included)."""
        out: dict[str, np.ndarray] = {}
        for name, spec in self._specs.items():
            (arr,) = preprocess(image, spec).values()
            out[name] = arr[None]
        return out

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        raw = np.asarray(outputs[self.output_name], dtype=np.float64).reshape(-1)
        if raw.size != len(self.labels):
            raise ModelError(f"model output has {raw.size} values for {len(self.labels)} labels")
        if self.output_kind == "probs":
            return raw / raw.sum()
        looks_like_probs = raw.min() >= 0 and abs(raw.sum() - 1.0) < 1e-3
        if self.output_kind == "auto" and looks_like_probs:
            return raw / raw.sum()
        return softmax(raw)

    def classify(self, image: np.ndarray) -> Prediction:
        return Prediction(self.probabilities(self.engine.infer(self.feeds(image))), self.labels)

    def predict(self, frame: Frame) -> tuple[np.ndarray, dict[str, float]]:
        """One frame's probabilities and stage times (ms). On the GPU path "preprocess" is
        the time to queue the kernels, "infer" the rest (the kernels run in it)."""
        t0 = time.monotonic_ns()
        if self._gpu is not None and self._gpu_ready(frame.image):
            self._gpu.queue(frame.image)
            t1 = time.monotonic_ns()
            outputs = self._gpu.engine.infer_device()
        else:
            feeds = self.feeds(frame.image)
            t1 = time.monotonic_ns()
            outputs = self.engine.infer(feeds)
        probs = self.probabilities(outputs)
        t2 = time.monotonic_ns()
        return probs, {"preprocess": (t1 - t0) / 1e6, "infer": (t2 - t1) / 1e6}

    def close(self) -> None:
        """Close the GPU preprocessors (their buffers live in the engine's context), then
        the engine, also when the first fails."""
        gpu, self._gpu = self._gpu, None
        try:
            if gpu is not None:
                gpu.close()
        finally:
            self.engine.close()
