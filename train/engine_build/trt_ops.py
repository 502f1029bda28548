"""Static check that an ONNX graph needs no TensorRT plugin: every op is on the TensorRT 10
ONNX parser's operator support matrix, within its opset range and its stated restrictions.

    python -m hepascope.train.engine_build.trt_ops FILE.onnx [...]  # OK or the problems; exit 1

Source: repository onnx/onnx-tensorrt, file docs/operators.md at commit 0137504e2b25 (the
TensorRT 10.6 release: "TensorRT 10.6 supports operators in the inclusive range of opset 9
to opset 22"), transcribed on 2026-11-23. The 10.0 matrix opens with "TensorRT 10.0
supports operators in the inclusive range of opset 9 to opset 20", hence the default
``opset_range=(9, 20)``: any TensorRT 10.x parses it. Ops the changelog (docs/Changelog.md)
says were added after 10.0 are reported with the release they need, for the same reason.
TensorRT itself is not needed (nor imported): only ``onnx``, loaded lazily so that
``import hepascope.engines`` stays light. What it cannot see (shapes, data types, values
computed at run time) the parser may still refuse; a clean check means no op needs a plugin.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepascope.core.errors import HepascopeError, ModelError, guard_main

if TYPE_CHECKING:
    import onnx

TRT_VERSION = "10.6"
OPSET_RANGE = (9, 20)  # TensorRT 10.0's range; 10.6 reads up to 22
DEFAULT_DOMAINS = ("", "ai.onnx")


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# "Y" rows of the matrix: every op the parser imports natively (all of them, not only ours)
SUPPORTED: frozenset[str] = _names("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv
ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum
Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual
Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN RoiAlign Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND
Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth
Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze
Upsample Where Xor
""")

# "N" rows: listed, and not supported without a plugin
UNSUPPORTED: frozenset[str] = _names("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im
CenterCropPad Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear
ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial
NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv
QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase
SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
""")

# supported, but only from a later 10.x release than 10.0 (docs/Changelog.md)
ADDED_IN: dict[str, str] = {"DeformConv": "10.1", "BlackmanWindow": "10.4",
                            "HammingWindow": "10.4", "HannWindow": "10.4", "STFT": "10.5"}

_RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                  "align_corners"}
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
_POOLS = {"AveragePool", "MaxPool", "LpPool"}
_REDUCES = {op for op in SUPPORTED if op.startswith("Reduce")}


def _load(model_or_path: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    p = Path(model_or_path)
    if not p.is_file():
        raise ModelError(f"{p}: no such model file")
    try:  # weights are not needed: leave external data on disk
        return onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises its own unrelated classes
        raise ModelError(f"{p}: not an ONNX model ({type(e).__name__}: {e})") from e


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If branches, Loop and Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for g in _graphs(model.graph):
        yield from g.node


def _op_name(node: onnx.NodeProto) -> str:
    """The op type, qualified ``domain:Op`` when not of the default ONNX domain."""
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}:{node.op_type}"


def graph_ops(model_or_path: onnx.ModelProto | str | Path) -> set[str]:
    """Op types used by the main graph and its subgraphs; an op of another domain than the
    default ONNX one (a custom op) comes as ``domain:Op``."""
    return {_op_name(n) for n in _nodes(_load(model_or_path))}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Constants:
    """Names of tensors known at build time (initializers and Constant outputs, of any
    graph: subgraphs see their parents' names), with their values where cheap to read."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        self.values: dict[str, Any] = {}
        for g in _graphs(model.graph):
            for init in g.initializer:
                self.values[init.name] = init
            for node in g.node:
                if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
                    value = _attrs(node).get("value")
                    for out in node.output:
                        self.values[out] = value
        self._to_array = numpy_helper.to_array

    def known(self, name: str) -> bool:
        return name in self.values

    def array(self, name: str) -> Any:
        """The value as an array, or None when unknown or stored outside the file."""
        t = self.values.get(name)
        if t is None or t.data_location == 1:  # onnx.TensorProto.EXTERNAL
            return None
        return self._to_array(t)


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _restrictions(node: onnx.NodeProto, consts: _Constants) -> Iterator[str]:
    """The matrix's restrictions on ``node`` that its attributes and constant inputs show.
    Restrictions on shapes, ranks of tensors or run-time values (GridSample's 4D input,
    EyeLike's static input, If branch ranks, Loop output lengths, Resize ``axes`` against
    the input rank) cannot be known here and are not checked."""
    op, at = node.op_type, _attrs(node)
    if op in _POOLS:
        if len(at.get("kernel_shape", [])) not in (2, 3):
            yield f"{op} is {len(at.get('kernel_shape', []))}D: only 2D or 3D pooling"
        if any(d != 1 for d in at.get("dilations", [])):
            yield f"{op} dilations {list(at['dilations'])}: must be empty or all ones"
        if op == "MaxPool" and _input_used(node.output, 1):
            yield "MaxPool Indices output is unsupported"
    elif op == "Resize":
        coord = _text(at.get("coordinate_transformation_mode", "half_pixel"))
        mode = _text(at.get("mode", "nearest"))
        nearest = _text(at.get("nearest_mode", "round_prefer_floor"))
        if coord not in _RESIZE_COORDS:
            yield f"Resize coordinate_transformation_mode {coord!r} is unsupported"
        if mode not in _RESIZE_MODES:
            yield f"Resize mode {mode!r} is unsupported (nearest, linear only)"
        if mode == "nearest" and nearest not in _RESIZE_NEAREST:
            yield f"Resize nearest_mode {nearest!r} is unsupported"
        if at.get("antialias", 0):
            yield "Resize antialiasing is unsupported"
        if _text(at.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
            yield "Resize keep_aspect_ratio_policy must be 'stretch'"
    elif op in _REDUCES or op in ("Squeeze", "Unsqueeze", "CumSum", "OneHot"):
        # axes (depth for OneHot) come as an input from opset 13/18 on: build-time constant
        idx = 2 if op == "OneHot" else 1
        name = _input(node, idx)
        if name and not consts.known(name):
            what = "depth" if op == "OneHot" else "axis" if op == "CumSum" else "axes"
            yield f"{op} {what} must be an initializer or Constant, not computed"
    elif op == "Constant":
        bad = sorted({"sparse_value", "value_string", "value_strings"} & set(at))
        if bad:
            yield f"Constant attribute {bad[0]} is unsupported"
    elif op == "Dropout":
        yield from _dropout(node, consts)
    elif op in ("QuantizeLinear", "DequantizeLinear"):
        zp = consts.array(_input(node, 2)) if _input(node, 2) else None
        if zp is not None and bool((zp != 0).any()):
            yield f"{op} zero point must be 0"
    elif op == "TopK" and at.get("sorted", 1) != 1:
        yield "TopK sorted must be 1"
    elif op == "ScatterND" and _text(at.get("reduction", "none")) != "none":
        yield "ScatterND reduction is unsupported"
    elif op == "LSTM" and (at.get("input_forget", 0) or at.get("layout", 0)):
        yield "LSTM input_forget and layout must be 0"
    elif op == "LayerNormalization" and any(_input_used(node.output, i) for i in (1, 2)):
        yield "LayerNormalization: only the first output Y is supported"


def _input_used(names: Sequence[str], i: int) -> bool:
    return len(names) > i and bool(names[i])


def _dropout(node: onnx.NodeProto, consts: _Constants) -> Iterator[str]:
    name = _input(node, 2)
    if not name:
        return
    value = consts.array(name)
    if not consts.known(name):
        yield "Dropout is_training must be an initializer"
    elif value is not None and bool(value.any()):
        yield "Dropout is_training must be False"


def _opset_problems(model: onnx.ModelProto, lo: int, hi: int) -> list[str]:
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        return ["no opset import for the default ONNX domain"]
    return [f"opset {v} is outside the range TensorRT {lo}..{hi} reads" for v in versions
            if not lo <= v <= hi]


def check_trt_ops(path: onnx.ModelProto | str | Path, *,
                  opset_range: tuple[int, int] = OPSET_RANGE) -> list[str]:
    """Human-readable problems that would keep the TensorRT 10 ONNX parser from importing
    the model at ``path`` without a plugin: an op of a custom domain, an op listed "N" or
    absent from the matrix, one added after TensorRT 10.0, an opset outside
    ``opset_range``, a violated restriction. An empty list means none was found."""
    lo, hi = opset_range
    if lo > hi:
        raise ValueError(f"opset_range must be (low, high), got {opset_range}")
    model = _load(path)
    problems = _opset_problems(model, lo, hi)
    consts = _Constants(model)
    seen: dict[str, list[str]] = {}
    for node in _nodes(model):
        op = _op_name(node)
        seen.setdefault(op, []).append(node.name or "<unnamed>")
        if op in SUPPORTED:
            problems += [f"node {node.name or '<unnamed>'!r} ({op}): {r}"
                         for r in _restrictions(node, consts)]
    for op, names in sorted(seen.items()):
        where = f"{len(names)} node(s), e.g. {names[0]!r}"
        if ":" in op:
            problems.append(f"{op}: custom-domain op, needs a TensorRT plugin ({where})")
        elif op in UNSUPPORTED:
            problems.append(f"{op}: not supported by the TensorRT {TRT_VERSION.split('.')[0]} "
                            f"ONNX parser (listed N), needs a plugin ({where})")
        elif op not in SUPPORTED:
            problems.append(f"{op}: not in the TensorRT ONNX operator matrix ({where})")
        elif op in ADDED_IN:
            problems.append(f"{op}: supported only from TensorRT {ADDED_IN[op]} ({where})")
    return problems


@guard_main
def main(argv: Sequence[str] | None = None) -> int:
    """Check each file; print OK (with its op types) or its problems. 1 if any has one."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hepascope.train.engine_build.trt_ops",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE.onnx")
    parser.add_argument("--opset-max", type=int, default=OPSET_RANGE[1],
                        help=f"highest opset accepted (default {OPSET_RANGE[1]}: TensorRT 10.0)")
    args = parser.parse_args(argv)
    failed = False
    for path in args.files:
        try:
            model = _load(path)  # once: a VGG-16 graph is 0.5 GB
            problems = check_trt_ops(model, opset_range=(OPSET_RANGE[0], args.opset_max))
            ops = sorted(graph_ops(model))
        except HepascopeError as e:
            problems = [str(e)]
        if problems:
            failed = True
            print(f"{path}: {len(problems)} problem(s)")
            for p in problems:
                print(f"  {p}")
        else:
            print(f"{path}: OK ({len(ops)} op types: {', '.join(ops)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
