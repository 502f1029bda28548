"""Real ONNX models that go wrong on frames the test controls, and the videos that
trigger them: a frame's mean brightness above a threshold makes the model's output NaN
(``make_tripwire(kind="nan")``) or sends it into a Loop of 10**15 iterations, a model
that never answers (``kind="hang"``). Dark frames get an ordinary classification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from support.media import write_video

LABELS = ("normal", "cyst", "hcc")
DARK, BRIGHT = 40, 200  # grey levels; preprocessed to about -1.4 and +1.1
# the model's own preprocessing (metadata): the whole frame, no sector, no filters, so a
# frame's grey level reaches the model as a known number
PREPROCESS = {"views": {"full": "full"}, "sector": None, "gaussian_sigma": 0.0,
              "clahe_clip": 0.0, "clahe_tiles": 8, "mean": 0.5, "std": 0.25,
              "size": [32, 32], "channels": 1, "use_views": ["full"]}


def _const(name: str, value: Any, dtype: Any = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _hang_nodes(inits: list[onnx.TensorProto]) -> tuple[list[onnx.NodeProto], str]:
    """trips = int64(relu(mean - 0) * 1e15); Loop(trips) { v += 1 } -> v * 0."""
    inits += [_const("big", 1e15), _const("v0", 0.0), _const("true", True, np.bool_)]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Constant", [], ["one"], value=_const("one_v", 1.0)),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])])
    nodes = [helper.make_node("Relu", ["mean"], ["over"]),
             helper.make_node("Mul", ["over", "big"], ["tripsf"]),
             helper.make_node("Cast", ["tripsf"], ["trips"], to=TensorProto.INT64),
             helper.make_node("Loop", ["trips", "true", "v0"], ["v"], body=body),
             helper.make_node("Mul", ["v", "zero"], ["poison"])]
    return nodes, "poison"


def make_tripwire(path: Path, kind: str) -> Path:
    """GlobalAveragePool -> Gemm -> (+ poison) -> Softmax, where poison is 0 on a dark frame
    and, on a bright one, NaN (``nan``: sqrt(-mean) * 0) or never computed (``hang``)."""
    rng = np.random.default_rng(0)
    inits = [_const("W", rng.normal(0, 1, (1, len(LABELS)))),
             _const("b", rng.normal(0, 0.1, (len(LABELS),))), _const("zero", 0.0)]
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["feat"]),
             helper.make_node("Gemm", ["feat", "W", "b"], ["logits"]),
             helper.make_node("ReduceMean", ["x"], ["mean"], keepdims=0)]
    if kind == "nan":
        nodes += [helper.make_node("Neg", ["mean"], ["neg"]),
                  helper.make_node("Sqrt", ["neg"], ["root"]),  # NaN where mean > 0
                  helper.make_node("Mul", ["root", "zero"], ["poison"])]
        poison = "poison"
    elif kind == "hang":
        more, poison = _hang_nodes(inits)
        nodes += more
    else:
        raise ValueError(f"kind must be nan or hang, got {kind!r}")
    nodes += [helper.make_node("Add", ["logits", poison], ["raw"]),
              helper.make_node("Softmax", ["raw"], ["probs"], axis=1)]
    graph = helper.make_graph(
        nodes, f"tripwire-{kind}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, len(LABELS)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"hepascope.labels": json.dumps(list(LABELS)),
                                   "hepascope.preprocess": json.dumps(PREPROCESS)})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_levels(path: Path, levels: list[int], fps: int = 30,
                 size: tuple[int, int] = (96, 128)) -> Path:
    """An H.264 video whose i-th frame is grey level ``levels[i]`` with light speckle."""
    rng = np.random.default_rng(1)

    def level(i: int, h: int, w: int) -> np.ndarray:
        return np.clip(levels[i] + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)

    return write_video(path, frames=len(levels), fps=fps, size=size, pattern=level)
