"""The static TensorRT 10 op check: our exported graphs pass it, graphs with an op the
parser lacks (listed "N", unknown or of a custom domain), an opset past the range or a
violated restriction are reported; the CLI's exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support.models import make_classifier

from hepascope.train.engine_build.trt_ops import (
    SUPPORTED,
    UNSUPPORTED,
    check_trt_ops,
    graph_ops,
    main,
)

# Every registered model's exported graphs pass this check in test_models.py (where each is
# exported anyway); here, the check itself on graphs made to fail it.


def _graph(path: Path, nodes: list[onnx.NodeProto], *, opset: int = 17,
           inits: tuple[onnx.TensorProto, ...] = (), extra_opsets: tuple[str, ...] = ()) -> Path:
    """x (1, 1, 8, 8) -> nodes -> y, saved at ``path`` without the ONNX checker (a custom
    op would fail it)."""
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_unsupported_custom_and_unknown_ops_are_reported(tmp_path: Path) -> None:
    assert "Unique" in UNSUPPORTED and "Unique" not in SUPPORTED
    path = _graph(tmp_path / "bad.onnx", [
        helper.make_node("Flatten", ["x"], ["f"], name="flat"),
        helper.make_node("Unique", ["f"], ["u"], name="uniq"),
        helper.make_node("MyNorm", ["u"], ["n"], name="mine", domain="com.example"),
        helper.make_node("NotAnOnnxOp", ["n"], ["y"], name="odd")],
        extra_opsets=("com.example",))
    assert graph_ops(path) == {"Flatten", "Unique", "com.example:MyNorm", "NotAnOnnxOp"}
    problems = check_trt_ops(path)
    assert len(problems) == 3, problems
    text = "\n".join(problems)
    assert "Unique: not supported by the TensorRT 10 ONNX parser (listed N)" in text
    assert "'uniq'" in text
    assert "com.example:MyNorm: custom-domain op, needs a TensorRT plugin" in text
    assert "NotAnOnnxOp: not in the TensorRT ONNX operator matrix" in text


def test_opset_outside_range_is_reported(tmp_path: Path) -> None:
    path = _graph(tmp_path / "o21.onnx", [helper.make_node("Relu", ["x"], ["y"])], opset=21)
    assert check_trt_ops(path) == ["opset 21 is outside the range TensorRT 9..20 reads"]
    assert check_trt_ops(path, opset_range=(9, 22)) == []  # TensorRT 10.6's range
    with pytest.raises(ValueError, match="opset_range"):
        check_trt_ops(path, opset_range=(20, 9))


def test_restrictions_from_attributes(tmp_path: Path) -> None:
    axes = numpy_helper.from_array(np.array([2, 3], "int64"), "axes")
    path = _graph(tmp_path / "r.onnx", [
        helper.make_node("Shape", ["x"], ["sz"]),
        helper.make_node("MaxPool", ["x"], ["p", "idx"], kernel_shape=[2], name="pool1d"),
        helper.make_node("AveragePool", ["p"], ["a"], kernel_shape=[2, 2], dilations=[2, 2],
                         name="dil"),
        helper.make_node("Resize", ["a", "", "", "sz"], ["r"], mode="cubic", name="cubic"),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("ReduceMean", ["r", "s"], ["m"], name="dyn_axes"),
        helper.make_node("ReduceMax", ["m", "axes"], ["y"], name="const_axes")],
        opset=18, inits=(axes,))
    problems = check_trt_ops(path)
    assert problems == [
        "node 'pool1d' (MaxPool): MaxPool is 1D: only 2D or 3D pooling",
        "node 'pool1d' (MaxPool): MaxPool Indices output is unsupported",
        "node 'dil' (AveragePool): AveragePool dilations [2, 2]: must be empty or all ones",
        "node 'cubic' (Resize): Resize mode 'cubic' is unsupported (nearest, linear only)",
        "node 'dyn_axes' (ReduceMean): ReduceMean axes must be an initializer or Constant, "
        "not computed"], problems
    # the same ops within their restrictions: clean
    ok = _graph(tmp_path / "ok.onnx", [
        helper.make_node("Shape", ["x"], ["sz"]),
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2]),
        helper.make_node("Resize", ["p", "", "", "sz"], ["r"], mode="linear"),
        helper.make_node("ReduceMax", ["r", "axes"], ["y"])], opset=18, inits=(axes,))
    assert check_trt_ops(ok) == []


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = make_classifier(tmp_path / "good.onnx")
    bad = _graph(tmp_path / "bad.onnx", [helper.make_node("Unique", ["x"], ["y"])])
    assert main([str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{good}: OK (") and "Gemm" in out
    assert main([str(good), str(bad), str(tmp_path / "missing.onnx")]) == 1
    out = capsys.readouterr().out
    assert f"{bad}: 1 problem(s)\n  Unique: not supported" in out
    assert "missing.onnx: no such model file" in out
    # the module entry point, as documented
    run = subprocess.run([sys.executable, "-m", "hepascope.train.engine_build.trt_ops", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "Unique" in run.stdout
    run = subprocess.run([sys.executable, "-m", "hepascope.train.engine_build.trt_ops", str(good)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "OK" in run.stdout


def test_engines_import_stays_light() -> None:
    code = ("import sys, hepascope.train.engine_build.trt_ops; "
            "print('onnx' in sys.modules, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert run.stdout.split() == ["False", "False"], run.stderr
