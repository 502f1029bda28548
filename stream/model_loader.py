"""Opening a model for the pipeline: a plain ONNX classifier, or a hepascope export (a
bimodal directory of ONNX graphs, or one clip-model graph) whose metadata carries labels,
input spec and preprocessing, so the pipeline needs nothing else. A hepascope model with
missing or inconsistent metadata is refused with one clear ``ModelError``.

The export format (file names, roles, the ``hepascope.*`` metadata keys) is
``core/export_format.py``; ``REQUIRED`` below says which keys each role must carry, and
the optional calibration keys are read from the graph that gives the probabilities (the
head of a bimodal export). ``open_model`` returns
the classifier the pipeline runs: its results are verdicts (stream/verdict.py)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from hepascope.core.config import Config
from hepascope.core.errors import ModelError
from hepascope.core.export_format import (
    FORMAT_VERSION,
    HEAD_FILE,
    INT8_HEAD_FILE,
    MANIFEST_FILE,
    META_INPUTS,
    META_LABELS,
    META_MODEL,
    META_OUTPUT,
    META_PARTS,
    META_PREPROCESS,
    META_ROLE,
    META_VERSION,
    META_WINDOW,
    ROLE_BMODE,
    ROLE_CEUS,
    ROLE_CLIP,
    ROLE_HEAD,
    SINGLE_FILE,
)
from hepascope.core.preprocess import PreprocessSpec, spec_from_dict
from hepascope.engines import Engine, open_engine, resolve_backend
from hepascope.stream.bimodal_streamer import BimodalStreamer, describe_parts
from hepascope.stream.classifier import Classifier, FrameClassifier, read_calibration
from hepascope.stream.clip import ClipStreamer
from hepascope.stream.verdict import judged

log = logging.getLogger(__name__)

REQUIRED = {
    ROLE_HEAD: (META_VERSION, META_MODEL, META_ROLE, META_LABELS,
                META_WINDOW, META_PARTS),
    ROLE_BMODE: (META_VERSION, META_MODEL, META_ROLE, META_LABELS,
                 META_PREPROCESS),
    ROLE_CEUS: (META_VERSION, META_MODEL, META_ROLE, META_LABELS,
                META_PREPROCESS),
    ROLE_CLIP: (META_VERSION, META_MODEL, META_ROLE, META_LABELS,
                META_PREPROCESS, META_INPUTS, META_OUTPUT,
                META_WINDOW),
}


def _check_meta(path: Path, meta: dict[str, str], role: str) -> None:
    for key in REQUIRED[role]:
        if key not in meta:
            raise ModelError(f"{path.name}: missing metadata {key!r}; re-export it with "
                             "'hepascope export'")
    if meta[META_VERSION] != FORMAT_VERSION:
        raise ModelError(f"{path.name}: metadata version {meta['hepascope.version']} is not "
                         f"{FORMAT_VERSION}")
    if meta[META_ROLE] != role:
        raise ModelError(f"{path.name}: is a {meta['hepascope.role']}, expected a {role}")


def _labels(path: Path, meta: dict[str, str]) -> tuple[str, ...]:
    try:
        labels = json.loads(meta[META_LABELS])
    except json.JSONDecodeError as e:
        raise ModelError(f"{path.name}: 'hepascope.labels' is not JSON") from e
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"{path.name}: 'hepascope.labels' must be a list of names")
    return tuple(labels)


def _spec(path: Path, meta: dict[str, str]) -> PreprocessSpec:
    try:
        return spec_from_dict(json.loads(meta[META_PREPROCESS]))
    except (json.JSONDecodeError, ValueError) as e:
        raise ModelError(f"{path.name}: invalid 'hepascope.preprocess' metadata ({e})") from e


def _window(path: Path, meta: dict[str, str]) -> tuple[int, float]:
    try:
        window = json.loads(meta[META_WINDOW])
        return int(window["frames"]), float(window["interval_s"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{path.name}: invalid 'hepascope.window' metadata ({e!r})") from e


def parallel_encoders(backend: str, threads: int | None) -> bool:
    """Whether a bimodal model runs its two encoders at once: on a GPU backend (two
    streams), or on the CPU where two encoders of ``threads`` each fit in the cores
    (ONNX Runtime's default, None, takes them all: no)."""
    if backend in ("torch", "tensorrt"):
        return True
    return threads is not None and 2 * threads <= (os.cpu_count() or 1)


def _open_bimodal(head_path: Path, head: Engine, backend: str,
                  threads: int | None) -> BimodalStreamer:
    _check_meta(head_path, head.metadata, ROLE_HEAD)
    labels = _labels(head_path, head.metadata)
    frames, interval_s = _window(head_path, head.metadata)
    engines: dict[str, Engine] = {}
    specs: dict[str, PreprocessSpec] = {}
    try:
        for role, path in describe_parts(head.metadata, head_path.parent).items():
            engines[role] = open_engine(path, backend, threads=threads)
            _check_meta(path, engines[role].metadata, role)
            if _labels(path, engines[role].metadata) != labels:
                raise ModelError(f"{path.name}: labels differ from {head_path.name}'s")
            specs[role] = _spec(path, engines[role].metadata)
        return BimodalStreamer(engines[ROLE_BMODE], engines[ROLE_CEUS], head, labels=labels,
                               bmode_spec=specs[ROLE_BMODE], ceus_spec=specs[ROLE_CEUS],
                               window=frames, interval_s=interval_s,
                               model_name=head.metadata[META_MODEL],
                               parallel=parallel_encoders(backend, threads))
    except BaseException:  # close what was opened, then let the error through
        for eng in engines.values():
            eng.close()
        raise


def _open_clip(path: Path, engine: Engine, every: int) -> ClipStreamer:
    meta = engine.metadata
    _check_meta(path, meta, ROLE_CLIP)
    labels = _labels(path, meta)
    spec = _spec(path, meta)
    frames, interval_s = _window(path, meta)
    try:
        ((input_name, view),) = json.loads(meta[META_INPUTS]).items()
    except (json.JSONDecodeError, AttributeError, ValueError) as e:
        raise ModelError(f"{path.name}: 'hepascope.inputs' must be JSON {{input: view}} with "
                         f"one entry ({e!r})") from e
    return ClipStreamer(engine, labels=labels, spec=spec, view=str(view),
                        input_name=str(input_name), output_name=meta[META_OUTPUT],
                        window=frames, interval_s=interval_s,
                        model_name=meta[META_MODEL], every=every)


def _model_file(p: Path) -> Path:
    if not p.is_dir():
        return p
    for name in (HEAD_FILE, SINGLE_FILE):
        if (p / name).is_file():
            return p / name
    raise ModelError(f"{p}: no {HEAD_FILE} or {SINGLE_FILE}; not a hepascope export directory")


def precision_entry(directory: Path) -> Path | None:
    """``head.int8.onnx`` of an export directory whose manifest chose INT8 (its
    ``precision`` block: INT8 where faster and as accurate, measured on ONNX Runtime's CPU
    provider), else None: the fp32 graphs. Passing ``head.onnx`` itself forces fp32."""
    try:
        block = json.loads((directory / MANIFEST_FILE).read_text()).get("precision") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(block, dict) or block.get("precision") != "int8":
        return None
    entry = directory / INT8_HEAD_FILE
    if not entry.is_file():
        log.warning("%s: the manifest chose INT8 but %s is missing; running fp32",
                    directory, INT8_HEAD_FILE)
        return None
    return entry


def open_clip_model(path: str | Path, *, backend: str = "onnxruntime", threads: int | None = 1,
                    every: int = 1) -> ClipStreamer:
    """A clip export (its file, or a directory holding ``model.onnx``) as a ``ClipStreamer``
    that runs every ``every``-th frame; anything else is refused. One engine thread by
    default: it runs beside the main model and must not take its cores."""
    p = _model_file(Path(path))
    engine = open_engine(p, resolve_backend(p, backend), threads=threads)
    try:
        role = engine.metadata.get(META_ROLE)
        if role != ROLE_CLIP:
            raise ModelError(f"{p.name}: not a clip model (role {role!r}, expected "
                             f"{ROLE_CLIP!r}); re-export it with the clip exporter")
        return _open_clip(p, engine, every)
    except BaseException:
        engine.close()
        raise


def open_model(path: str | Path, config: Config, *, backend: str = "onnxruntime",
               threads: int | None = None, labels: tuple[str, ...] | None = None,
               verdicts: bool = True) -> Classifier:
    """The classifier for ``path``: an export directory (on ONNX Runtime, its INT8
    configuration where its manifest chose it: ``precision_entry``), its ``head.onnx``, a
    clip export (run on every frame it is given), or any ONNX image classifier (labels from
    metadata, ``labels``, or class0..N). ``backend`` "auto" is decided once, for every graph. Its
    results are verdicts (calibrated, smoothed within a scene, with a status: see
    stream/verdict.py); ``verdicts=False``: the bare model, one frame's probabilities."""
    p = _model_file(Path(path))
    backend = resolve_backend(p, backend)
    if backend == "onnxruntime" and Path(path).is_dir():
        p = precision_entry(Path(path)) or p
        log.info("%s: running %s", path, p.name)
    engine = open_engine(p, backend, threads=threads)
    try:
        calibration = read_calibration(engine.metadata, p.name)
        clf = _open_bare(p, engine, config, backend, threads, labels)
    except BaseException:
        engine.close()
        raise
    return judged(clf, config.verdict, calibration, config.layout) if verdicts else clf


def _host_preprocess(kind: str, mode: str) -> None:
    """A model that preprocesses on the host only, under ``pipeline.gpu_preprocess``
    ``mode``: on refuses it (one ``ModelError``), auto says so."""
    if mode == "on":
        raise ModelError(f"pipeline.gpu_preprocess is on, but a {kind} model preprocesses "
                         "on the host (GPU preprocessing feeds single-frame models)")
    if mode == "auto":
        log.info("preprocess auto -> cpu: a %s model preprocesses on the host", kind)


def _open_bare(p: Path, engine: Engine, config: Config, backend: str, threads: int | None,
               labels: tuple[str, ...] | None) -> Classifier:
    """The classifier of ``engine``'s role. A single-frame model gets
    ``pipeline.gpu_preprocess`` (stream/classifier.py); bimodal and clip models keep their
    host preprocessing (their streamers preprocess each part and window on the host)."""
    role = engine.metadata.get(META_ROLE)
    mode = str(config.pipeline.gpu_preprocess)  # a str: the config normalises YAML's on/off
    if role == ROLE_HEAD:
        _host_preprocess("bimodal", mode)
        return _open_bimodal(p, engine, backend, threads)
    if role == ROLE_CLIP:
        _host_preprocess("clip", mode)
        return _open_clip(p, engine, every=1)
    if role in (ROLE_BMODE, ROLE_CEUS):
        raise ModelError(f"{p.name} is the {role} of a bimodal export; pass its directory")
    if role is None and META_VERSION in engine.metadata:
        raise ModelError(f"{p.name}: missing metadata 'hepascope.role'")
    return FrameClassifier(engine, config, labels=labels, model_name=p.stem,
                           gpu_preprocess=mode)
