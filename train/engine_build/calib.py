"""Calibration and evaluation frames for a hepascope export: the model's inputs, made by the
preprocessing its metadata names (``hepascope.preprocess`` / ``hepascope.inputs``), so INT8
ranges are measured on exactly what the model sees in training and in the operating room.

Data is an ``ArraySet`` (.npz + .json, ``train/datasets/arrays.py``: already preprocessed;
its spec must equal the model's) or a dataset ``hepascope train --data`` accepts (class
folders or a CSV manifest; each frame is run through ``preprocess_view`` with the model's
spec). Roles: ``image`` and ``bmode_encoder`` (one B-mode frame), ``ceus_encoder`` (one
CEUS frame: the newest of each ArraySet window) and ``clip`` (a CEUS window; ArraySets
only). Reading folders uses train's torch-free readers,
imported only then: calibration is a build step, never on the inference box's live path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import ConfigError, DataError, ModelError
from hepascope.core.export_format import (
    META_INPUTS,
    META_LABELS,
    META_PREPROCESS,
    META_ROLE,
    ROLE_BMODE,
    ROLE_CEUS,
)
from hepascope.core.preprocess import PreprocessSpec, preprocess_view, spec_from_dict
from hepascope.engines.interface import TensorSpec

ARRAYS_VERSION = 1  # train/datasets/arrays.py's format version this reader understands
FRAME_ROLES = ("image", ROLE_BMODE, ROLE_CEUS)  # one frame (1, C, H, W) per sample
CLIP_ROLE = "clip"  # a window (1, C, T, h, w)


@dataclass(frozen=True)
class ModelInput:
    """What a single-input hepascope graph reads: its input, role, view and spec."""

    spec: TensorSpec
    role: str
    view: str
    preprocess: PreprocessSpec
    labels: tuple[str, ...]


@dataclass
class Samples:
    """Preprocessed inputs of one model, one batch-1 feed per sample, and their labels
    (indices into ``classes``, the data's class names) and patient ids."""

    feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray
    classes: tuple[str, ...]
    groups: np.ndarray


def model_input(model: str | Path) -> ModelInput:
    """Read the input, role and preprocessing of a hepascope export (``ModelError`` if the
    graph is not one: no metadata, several inputs, a head)."""
    import onnxruntime as ort

    from hepascope.engines.onnxruntime import tensor_spec

    p = Path(model)
    if not p.is_file():
        raise ModelError(f"{p}: no such model file")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own unrelated exception classes
        raise ModelError(f"{p}: not a loadable ONNX model ({type(e).__name__})") from e
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    ins = [tensor_spec(a) for a in sess.get_inputs()]
    role = meta.get(META_ROLE)
    if role not in (*FRAME_ROLES, CLIP_ROLE) or META_PREPROCESS not in meta:
        raise ModelError(f"{p.name}: role {role!r} with no usable preprocessing metadata; "
                         f"calibration needs a hepascope export of role "
                         f"{', '.join((*FRAME_ROLES, CLIP_ROLE))}")
    if len(ins) != 1:
        raise ModelError(f"{p.name}: {len(ins)} inputs; calibration feeds one")
    try:
        views = json.loads(meta.get(META_INPUTS, "{}"))
        labels = tuple(str(x) for x in json.loads(meta[META_LABELS]))
        spec = spec_from_dict(json.loads(meta[META_PREPROCESS]))
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as e:
        raise ModelError(f"{p.name}: invalid hepascope metadata ({e})") from e
    default_view = "ceus" if role in (ROLE_CEUS, CLIP_ROLE) else "bmode"
    view = str(views.get(ins[0].name, default_view)) if isinstance(views, dict) else default_view
    return ModelInput(ins[0], str(role), view, spec, labels)


def _check_shape(inp: ModelInput, x: np.ndarray, where: str) -> None:
    want = inp.spec.shape
    if len(want) != x.ndim or any(isinstance(d, int) and d != n
                                  for d, n in zip(want[1:], x.shape[1:], strict=True)):
        raise DataError(f"{where}: samples of shape {x.shape[1:]}, the model's input is "
                        f"{inp.spec.describe()}")


def _pick(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Up to ``limit`` sample indices drawn without replacement (all, in order, if None)."""
    if n == 0:
        raise DataError("the data set has no samples")
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _from_arrays(inp: ModelInput, path: Path, limit: int | None, seed: int) -> Samples:
    from hepascope.train.datasets.arrays import load_pair

    arrays, meta = load_pair(path, ARRAYS_VERSION, "array set")
    try:
        classes = tuple(str(c) for c in meta["classes"])
        groups = np.array(meta["groups"], dtype=str)
        theirs = spec_from_dict(meta["preprocess"][inp.view])
    except (KeyError, TypeError, ConfigError) as e:
        raise DataError(f"{path}: no {inp.view!r} view preprocessing in the array set "
                        f"({e!r})") from e
    if theirs.to_dict() != inp.preprocess.to_dict():
        diff = sorted(k for k, v in theirs.to_dict().items()
                      if inp.preprocess.to_dict().get(k) != v)
        raise DataError(f"{path}: preprocessed with another spec than the model's "
                        f"(differs in {', '.join(diff)}); rebuild it at the model's settings")
    arr = arrays.get("bmode" if inp.view == "bmode" else "ceus")
    if arr is None:
        raise DataError(f"{path}: the array set has no {inp.view!r} samples")
    labels = arrays["labels"]
    if inp.role == CLIP_ROLE:  # (N, T, C, h, w) -> (N, C, T, h, w)
        rows, frames = _pick(len(arr), limit, seed), arr.transpose(0, 2, 1, 3, 4)
    elif arr.ndim == 5:  # one CEUS frame per sample: the newest of its window
        rows, frames = _pick(len(arr), limit, seed), arr[:, -1]
    else:
        rows, frames = _pick(len(arr), limit, seed), arr
    _check_shape(inp, frames, str(path))
    name = inp.spec.name
    feeds = [{name: np.ascontiguousarray(frames[i][None], np.float32)} for i in rows]
    return Samples(feeds, labels[rows], classes, groups[rows])


def _read_item(item: Any, rng: np.random.Generator) -> np.ndarray:
    """One frame of an index item: the image, or a random frame of a clip."""
    from hepascope.train.datasets.io import clip_length, media_kind, read_frames, read_image

    if media_kind(item.path) == "image":
        return read_image(item.path)
    lo, hi = item.frames if item.frames is not None else (0, clip_length(item.path))
    return read_frames(item.path, [int(rng.integers(lo, max(lo + 1, hi)))])[0]


def _from_folder(inp: ModelInput, path: Path, limit: int | None, seed: int) -> Samples:
    from hepascope.train.datasets.index import index_from

    if inp.role == CLIP_ROLE:
        raise DataError(f"{path}: clip models calibrate from an ArraySet (.npz) of their "
                        "windows; class folders give single frames")
    index = index_from(path)
    rows = _pick(len(index), limit, seed)
    rng = np.random.default_rng(seed)
    feeds: list[dict[str, np.ndarray]] = []
    for i in rows:
        frame = _read_item(index.items[int(i)], rng)
        try:
            x = preprocess_view(frame, inp.preprocess, inp.view)[None]
        except (ConfigError, ValueError) as e:  # the layout does not fit this file
            raise DataError(f"{index.items[int(i)].path}: {e}") from e
        _check_shape(inp, x, str(index.items[int(i)].path))
        feeds.append({inp.spec.name: x.astype(np.float32, copy=False)})
    return Samples(feeds, index.labels[rows], index.classes, index.groups[rows])


def load_samples(model: str | Path, data: str | Path, *, limit: int | None = None,
                 seed: int = 0) -> Samples:
    """Up to ``limit`` (all if None; a random draw by ``seed`` otherwise) preprocessed
    samples of ``data`` as ``model``'s batch-1 feeds, with their labels."""
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    inp = model_input(model)
    p = Path(data)
    if p.suffix.lower() in (".npz", ".json"):
        return _from_arrays(inp, p, limit, seed)
    if not p.exists():
        raise DataError(f"{p}: no such data (an ArraySet .npz, class folders or a .csv)")
    return _from_folder(inp, p, limit, seed)


def calibration_feeds(model: str | Path, data: str | Path, *, limit: int = 256,
                      seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Batch-1 feeds ``{input name: float32 (1, ...)}`` of up to ``limit`` samples of
    ``data`` drawn by ``seed``, preprocessed as ``model``'s metadata says."""
    return load_samples(model, data, limit=limit, seed=seed).feeds
