"""The TensorRT path: ``hepascope build`` (train/engine_build/build.py, cli.py), the engine
(engines/tensorrt.py) and its CUDA layer (engines/cuda.py).

What needs no GPU runs everywhere, for real: the CLI's refusals, the static checks that
run before TensorRT is imported, SimAM's scopes in a real export, the calibration batches,
the one-line errors when TensorRT or pycuda is missing. What needs pycuda and a GPU, or
TensorRT, runs where they are and is skipped, with the reason, elsewhere."""

from __future__ import annotations

import argparse
import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support.models import make_classifier
from support.tensorrt_env import tensorrt_skip_reason

from hepascope.core.errors import ModelError
from hepascope.engines.cuda import CudaError, check, status_error
from hepascope.engines.plan import sidecar_path
from hepascope.engines.tensorrt import TrtEngine, plan_for
from hepascope.train.engine_build.build import CalibrationBatches, build_plan, simam_scopes
from hepascope.train.engine_build.cli import add_subcommand


def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def gpu_ready() -> bool:
    if not importable("pycuda.driver"):
        return False
    from hepascope.engines.cuda import CudaContext

    try:
        CudaContext().close()
    except ModelError:
        return False
    return True


HAVE_TRT = importable("tensorrt")
HAVE_PYCUDA = importable("pycuda.driver")
TRT_SKIP = tensorrt_skip_reason()  # not importable, or not TensorRT 10
needs_trt = pytest.mark.skipif(TRT_SKIP is not None, reason=TRT_SKIP or "")
needs_gpu = pytest.mark.skipif(not gpu_ready(), reason="needs pycuda and a CUDA GPU")
without_trt = pytest.mark.skipif(HAVE_TRT, reason="checks the refusal without TensorRT")


def build_cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hepascope")
    add_subcommand(parser.add_subparsers(dest="command", required=True))
    return parser


def make_qdq(path: Path) -> Path:
    """Quantize -> Dequantize (int8, zero point 0) -> Relu: an explicitly quantised graph."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("Relu", ["dq"], ["y"])]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def export_resnet(path: Path, attn: str, *, named_simam: bool = False) -> Path:
    """A two-stage ResNet with ``attn`` ("simam" or "coord") in its blocks, softmax on top,
    exported as hepascope does (opset 17, dynamic batch), with labels in its metadata."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from hepascope.train.models.layers import CoordAttention, SimAM
    from hepascope.train.models.resnet import ResNet

    torch.manual_seed(0)
    net = ResNet((1, 1), num_classes=3, width=8,
                 attn_layer=SimAM if attn == "simam" else CoordAttention)

    class Probs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.simam = SimAM()  # a module path naming SimAM, outside any "attn"

        def forward(self, x: Any) -> Any:
            x = self.simam(x) if named_simam else x
            return torch.softmax(self.net(x), dim=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Probs().eval(), (torch.randn(1, 1, 32, 32),), str(path),
                          dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["probs"],
                          dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}})
    m = onnx.load(str(path))
    helper.set_model_props(m, {"hepascope.labels": json.dumps(["a", "b", "c"])})
    onnx.save(m, str(path))
    return path


# ------------------------------------------------------------------ everywhere


@without_trt
def test_build_without_tensorrt_is_one_error(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "model.onnx")
    args = build_cli().parse_args(["build", str(model), "--fp16"])
    with pytest.raises(ModelError) as e:
        args.func(args)
    assert str(e.value).startswith("TensorRT engine unavailable: tensorrt is not importable")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "model.plan").exists()


@without_trt
def test_hepascope_build_exits_2_without_tensorrt(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from hepascope import cli

    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "build" not in subs.choices:
        pytest.skip("hepascope.cli does not register the build command yet")
    model = make_classifier(tmp_path / "model.onnx")
    assert cli.main(["build", str(model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("hepascope: error: TensorRT engine unavailable")


@pytest.mark.parametrize(("argv", "says"), [
    (["--fp16", "--int8"], "not allowed with argument"),
    (["--max-batch", "0"], "must be > 0"),
    (["--workspace-mb", "x"], "not a number"),
    (["--int8"], "--int8 needs --calib DATA"),
])
def test_build_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               argv: list[str], says: str) -> None:
    model = make_classifier(tmp_path / "model.onnx")
    with pytest.raises(SystemExit) as e:
        args = build_cli().parse_args(["build", str(model), *argv])
        args.func(args)
    assert e.value.code == 2
    assert says in capsys.readouterr().err


@without_trt
def test_int8_qdq_model_needs_no_calib(tmp_path: Path) -> None:
    """A QDQ model passes ``--int8`` without ``--calib`` (it carries its scales); here it
    then stops at the missing TensorRT, not at argparse."""
    args = build_cli().parse_args(["build", str(make_qdq(tmp_path / "q.onnx")), "--int8"])
    with pytest.raises(ModelError, match="TensorRT engine unavailable"):
        args.func(args)


def test_unsupported_graph_refused_before_tensorrt(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["y"])], "uniq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "u.onnx"))
    with pytest.raises(ModelError, match=r"u.onnx: TensorRT cannot import it without a "
                       r"plugin: Unique: not supported"):
        build_plan(tmp_path / "u.onnx")
    with pytest.raises(ModelError, match="--fp16 or --int8, not both"):
        build_plan(tmp_path / "u.onnx", fp16=True, int8=True)


@without_trt
def test_engine_without_tensorrt_says_why(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"^TensorRT engine unavailable: tensorrt is not "):
        TrtEngine(make_classifier(tmp_path / "model.onnx"))


def test_plan_beside_the_model(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "model.onnx")
    with pytest.raises(ModelError, match=r"model.onnx: no TensorRT plan model.plan beside "
                       r"it; build one with 'hepascope build .*model.onnx'"):
        plan_for(model)
    (tmp_path / "model.plan").write_bytes(b"engine")
    assert plan_for(model) == (tmp_path / "model.plan", model)
    assert plan_for(tmp_path / "model.plan") == (tmp_path / "model.plan", model)
    model.unlink()
    assert plan_for(tmp_path / "model.plan") == (tmp_path / "model.plan", None)
    with pytest.raises(ModelError, match="no such TensorRT plan"):
        plan_for(tmp_path / "other.plan")


def test_simam_scopes_in_real_exports(tmp_path: Path) -> None:
    """torch names SimAM's nodes by module path (".../attn/Pow"); coordinate attention,
    also at "attn", has convolutions and is not SimAM."""
    simam = simam_scopes(onnx.load(str(export_resnet(tmp_path / "s.onnx", "simam"))))
    assert simam == ["/net/stages/stages.0/stages.0.0/attn/",
                     "/net/stages/stages.1/stages.1.0/attn/"]
    coord = onnx.load(str(export_resnet(tmp_path / "c.onnx", "coord")))
    assert any("/attn/" in n.name for n in coord.graph.node)
    assert simam_scopes(coord) == []
    named = onnx.load(str(export_resnet(tmp_path / "n.onnx", "coord", named_simam=True)))
    assert simam_scopes(named) == ["/simam/"]


def test_calibration_batches_group_feeds_in_order() -> None:
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.normal(size=(1, 1, 8, 8)).astype(np.float32),
              "aux": np.full((1, 3), i, np.float64)} for i in range(10)]
    batches = CalibrationBatches(feeds, 4, ["image", "aux"])
    assert len(batches) == 2 and batches.shape("image") == (4, 1, 8, 8)
    first, second = batches.next(), batches.next()
    assert first is not None and second is not None and batches.next() is None
    np.testing.assert_array_equal(first["image"], np.concatenate([f["image"] for f in feeds[:4]]))
    assert second["aux"][:, 0].tolist() == [4, 5, 6, 7]  # the last two left out: no full batch
    assert first["aux"].dtype == np.float32 and first["image"].flags.c_contiguous
    with pytest.raises(ModelError, match="at least 4 samples, got 3"):
        CalibrationBatches(feeds[:3], 4, ["image", "aux"])
    with pytest.raises(ModelError, match=r"sample 0 has inputs \['aux', 'image'\]"):
        CalibrationBatches(feeds, 4, ["image"])
    with pytest.raises(ModelError, match="not a batch of 1"):
        CalibrationBatches([{"image": np.zeros((2, 1, 8, 8))}], 1, ["image"])


def test_check_and_status_errors() -> None:
    assert check("cuNothing", lambda a, b: a + b, 2, 3) == 5
    err = status_error("cuGraphLaunch", 400)
    assert isinstance(err, CudaError) and isinstance(err, ModelError)
    assert str(err).startswith("cuGraphLaunch failed: ") and "400" in str(err)


@pytest.mark.skipif(HAVE_PYCUDA, reason="checks the refusal without pycuda")
def test_cuda_without_pycuda_says_why() -> None:
    from hepascope.engines.cuda import CudaContext

    with pytest.raises(ModelError, match=r"^CUDA unavailable: pycuda not importable"):
        CudaContext()


# ------------------------------------------------------------------ pycuda and a GPU


@pytest.mark.gpu
@needs_gpu
def test_device_buffers_round_trip_prefix_and_close() -> None:
    from hepascope.engines.cuda import BufferSpec, CudaContext, DeviceBuffers

    ctx = CudaContext()
    try:
        with DeviceBuffers([BufferSpec("a", (4, 3), np.dtype(np.float32))], ctx) as buf:
            assert buf.host("a").shape == (4, 3) and buf.device_ptr("a") > 0
            buf.host("a")[:] = np.arange(12, dtype=np.float32).reshape(4, 3)
            buf.to_device("a")
            buf.host("a")[:] = -1
            buf.to_host("a", 6)  # the first two rows only
            buf.synchronize()
            np.testing.assert_array_equal(buf.view("a", (2, 3)), [[0, 1, 2], [3, 4, 5]])
            assert (buf.host("a")[2:] == -1).all()
            with pytest.raises(ModelError, match="holds 12 elements"):
                buf.to_device("a", 13)
        buf.close()  # idempotent
        with pytest.raises(CudaError, match="after close"):
            buf.host("a")
    finally:
        ctx.close()


@pytest.mark.gpu
@needs_gpu
def test_cuda_errors_are_typed() -> None:
    from hepascope.engines.cuda import CudaContext, driver

    ctx = CudaContext()
    try:
        with ctx, pytest.raises(CudaError, match=r"^cuMemAlloc failed: .*out of memory"):
            check("cuMemAlloc", driver().mem_alloc, 1 << 50)
        assert "CUDA_ERROR_INVALID_HANDLE" in str(status_error("cuGraphLaunch", 400))
    finally:
        ctx.close()


@pytest.mark.gpu
@needs_gpu
def test_cuda_graph_replays_with_new_contents() -> None:
    """Capture copy in -> device-to-device -> copy out once; each launch moves what the
    pinned input holds at launch time. A capture that fails leaves the stream usable."""
    from hepascope.engines.cuda import BufferSpec, CudaContext, CudaGraph, DeviceBuffers, driver

    drv = driver()
    ctx = CudaContext()
    f4 = np.dtype(np.float32)
    buf = DeviceBuffers([BufferSpec("a", (256,), f4), BufferSpec("b", (256,), f4)], ctx)
    try:
        def record() -> None:
            buf.to_device("a")
            drv.memcpy_dtod_async(buf.device_ptr("b"), buf.device_ptr("a"), 1024, buf.stream)
            buf.to_host("b")

        with ctx:
            graph = CudaGraph(buf.stream_handle, record)
            for value in (1.5, -7.0):
                buf.host("a")[:] = value
                graph.launch()
                buf.synchronize()
                assert (buf.host("b") == value).all()
            graph.close()

            def bad() -> None:
                buf.to_device("a")
                raise RuntimeError("recording failed")

            with pytest.raises(RuntimeError, match="recording failed"):
                CudaGraph(buf.stream_handle, bad)
        buf.host("a")[:] = 3.0
        buf.to_device("a")
        buf.host("a")[:] = 0.0
        buf.to_host("a")
        buf.synchronize()
        assert (buf.host("a") == 3.0).all()
    finally:
        buf.close()
        ctx.close()


# ------------------------------------------------------------------ TensorRT


@pytest.fixture
def simam_model(tmp_path: Path) -> Path:
    return export_resnet(tmp_path / "model.onnx", "simam")


def ort_probs(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"image": x})[0])


@pytest.mark.gpu
@needs_gpu
@needs_trt
def test_fp16_plan_matches_onnxruntime(simam_model: Path) -> None:
    """fp16 with SimAM pinned to fp32, batch 1..4: probabilities within 1e-2 of ONNX
    Runtime's fp32 at batch 1 and 3; a second build reuses the timing cache."""
    plan = build_plan(simam_model, fp16=True, max_batch=4)
    side = json.loads(sidecar_path(plan).read_text())
    assert side["precision"] == "fp16" and side["max_batch"] == 4
    assert side["fp32_layers"] and all("/attn/" in n for n in side["fp32_layers"])
    assert (plan.parent / "timing.cache").stat().st_size > 0
    engine = TrtEngine(simam_model)
    try:
        assert engine.metadata["hepascope.labels"] == '["a", "b", "c"]'
        rng = np.random.default_rng(0)
        for batch in (1, 3):
            x = rng.normal(size=(batch, 1, 32, 32)).astype(np.float32)
            got = engine.infer({"image": x})["probs"]
            np.testing.assert_allclose(got, ort_probs(simam_model, x), atol=1e-2)
    finally:
        engine.close()
    engine.close()  # idempotent
    build_plan(simam_model, fp16=True, max_batch=4)


@pytest.mark.gpu
@needs_gpu
@needs_trt
def test_cuda_graph_on_and_off_identical(simam_model: Path) -> None:
    build_plan(simam_model, max_batch=2)
    x = np.random.default_rng(1).normal(size=(2, 1, 32, 32)).astype(np.float32)
    outs = []
    for graph in (False, True):
        engine = TrtEngine(simam_model.with_suffix(".plan"), cuda_graph=graph)
        try:
            for batch in (2, 1, 2):  # a graph per batch size, replayed
                outs.append(engine.infer({"image": x[:batch]})["probs"].copy())
        finally:
            engine.close()
    for plain, graphed in zip(outs[:3], outs[3:], strict=True):
        np.testing.assert_array_equal(plain, graphed)


@pytest.mark.gpu
@needs_gpu
@needs_trt
def test_int8_calibration_cache_reused(simam_model: Path) -> None:
    rng = np.random.default_rng(2)
    feeds = [{"image": rng.normal(size=(1, 1, 32, 32)).astype(np.float32)} for _ in range(24)]
    plan = build_plan(simam_model, int8=True, calib=feeds, max_batch=2)
    caches = list(plan.parent.glob("model.*.calib"))
    assert len(caches) == 1 and caches[0].stat().st_size > 0
    before = caches[0].read_bytes()
    build_plan(simam_model, int8=True, calib=None, max_batch=2)  # no data: the cache serves
    assert caches[0].read_bytes() == before
    assert json.loads(sidecar_path(plan).read_text())["precision"] == "int8"
    engine = TrtEngine(plan)
    try:
        probs = engine.infer({"image": feeds[0]["image"]})["probs"]
        assert probs.shape == (1, 3) and abs(float(probs.sum()) - 1) < 2e-2
    finally:
        engine.close()


@pytest.mark.gpu
@needs_gpu
@needs_trt
def test_plan_refused_when_sidecar_gpu_or_model_differs(simam_model: Path) -> None:
    plan = build_plan(simam_model)
    side = json.loads(sidecar_path(plan).read_text())
    side["gpu_name"] = "NVIDIA Imaginary GPU"
    sidecar_path(plan).write_text(json.dumps(side))
    with pytest.raises(ModelError, match=r"model.plan was built with TensorRT .* for NVIDIA "
                       r"Imaginary GPU \(sm_\d+\); this is .*: rebuild with"):
        TrtEngine(plan)
    build_plan(simam_model)
    m = onnx.load(str(simam_model))
    helper.set_model_props(m, {"hepascope.labels": json.dumps(["x", "y", "z"])})
    onnx.save(m, str(simam_model))
    with pytest.raises(ModelError, match=r"built from another model\.onnx"):
        TrtEngine(simam_model)
