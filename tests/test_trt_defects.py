"""The TensorRT build and CUDA runtime paths where they meet TensorRT and pycuda: the
timing cache, the INT8 calibration cache, the CUDA context's push/pop balance, the GPU
preprocessor's release of what it made, and which TensorRT the TensorRT tests run on.

Everything runs without TensorRT or a GPU: ``support.fake_gpu`` stands in for the
``tensorrt`` and ``pycuda.driver`` modules (see its doc for what it models and from
where); the code under test is hepascope's own, unchanged."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from support import fake_gpu
from support.models import make_classifier

from hepascope.core.config import load_config
from hepascope.core.errors import ModelError
from hepascope.core.preprocess import PreprocessSpec
from hepascope.engines.cuda import BufferSpec, CudaContext, CudaError, DeviceBuffers
from hepascope.engines.gpu_preprocess import GpuPreprocessor
from hepascope.train.engine_build.build import build_plan


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> fake_gpu.FakeGpu:
    return fake_gpu.install(monkeypatch, tmp_path)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_classifier(tmp_path / "model.onnx", input_name="image",
                           shape=("n", 1, 8, 8), labels=("a", "b", "c"))


# ----------------------------------------------------------------- 1. the timing cache


def test_timing_cache_tensorrt_cannot_make_is_one_model_error(
        fake: fake_gpu.FakeGpu, model: Path) -> None:
    fake.trt.timing_cache = lambda data: False  # create_timing_cache returns None
    with pytest.raises(ModelError, match=r"could not create a timing cache") as e:
        build_plan(model)
    assert "\n" not in str(e.value)
    assert not model.with_suffix(".plan").exists()


def test_timing_cache_file_tensorrt_refuses_is_started_again(
        fake: fake_gpu.FakeGpu, model: Path) -> None:
    timing = model.parent / "timing.cache"
    timing.write_bytes(b"written by another TensorRT")
    fake.trt.timing_cache = lambda data: not data  # None for the file's bytes only
    assert build_plan(model).is_file()
    assert timing.read_bytes() == b"timing"  # the new cache, serialised after the build


# ----------------------------------------------------------------- 2. the calibration cache


def feeds(n: int = 16) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"image": rng.normal(size=(1, 1, 8, 8)).astype(np.float32)} for _ in range(n)]


def int8(model: Path, cache: Path, calib: list[dict[str, np.ndarray]] | None) -> Path:
    return build_plan(model, int8=True, calib=calib, max_batch=2, calib_cache=cache)


def test_failed_calibration_writes_no_cache(fake: fake_gpu.FakeGpu, model: Path,
                                            tmp_path: Path) -> None:
    cache = tmp_path / "model.calib"
    fake.gpu.fail["memcpy_htod_async"] = 2  # the second batch's upload fails
    with pytest.raises(CudaError, match="illegal memory access"):
        int8(model, cache, feeds())
    assert fake.trt.batches == 1  # TensorRT calibrated on one batch and offered its cache
    assert not cache.exists()
    assert not list(tmp_path.glob(".model.calib.*"))  # no temporary file left either


def test_failed_build_after_calibration_writes_no_cache(fake: fake_gpu.FakeGpu, model: Path,
                                                        tmp_path: Path) -> None:
    cache = tmp_path / "model.calib"
    fake.trt.build_fails = True
    with pytest.raises(ModelError, match="TensorRT built no engine"):
        int8(model, cache, feeds())
    assert fake.trt.batches > 0 and not cache.exists()


def test_calibration_cache_written_on_success_then_reused(fake: fake_gpu.FakeGpu, model: Path,
                                                          tmp_path: Path) -> None:
    cache = tmp_path / "model.calib"
    int8(model, cache, feeds())
    assert fake.trt.batches == 8  # 16 samples in batches of 2
    assert cache.read_bytes() == fake_gpu.calibration_table(["image", "probs"])
    fake.trt.batches = 0
    int8(model, cache, None)  # no data: the cache serves
    assert fake.trt.batches == 0 and fake.trt.cache_read == cache.read_bytes()


GOOD = fake_gpu.calibration_table(["image", "probs"])


@pytest.mark.parametrize("bad", [
    b"",  # empty
    GOOD[:-6],  # cut inside the last scale
    GOOD.split(b"\n")[0] + b"\n",  # the header alone
    GOOD.replace(b"image:", b"pixels:"),  # another model's: no scale for the input
    b"\x00\x13 not a calibration table",
], ids=["empty", "cut-short", "header-only", "another-model", "not-a-table"])
def test_partial_or_foreign_calibration_cache_is_not_reused(
        fake: fake_gpu.FakeGpu, model: Path, tmp_path: Path, bad: bytes) -> None:
    cache = tmp_path / "model.calib"
    cache.write_bytes(bad)
    with pytest.raises(ModelError, match=r"model\.calib: not a usable calibration cache .*"
                       r"--calib DATA"):
        int8(model, cache, None)
    assert fake.trt.cache_read is None and cache.read_bytes() == bad
    int8(model, cache, feeds())  # with data: calibrates again and replaces it
    assert fake.trt.cache_read is None and fake.trt.batches == 8
    assert cache.read_bytes() == GOOD


# ----------------------------------------------------------------- 3. the CUDA context


def test_context_close_leaves_no_context_pushed(fake: fake_gpu.FakeGpu) -> None:
    gpu = fake.gpu
    ctx = CudaContext(0)
    with ctx:
        assert gpu.driver_stack == [gpu.handle]
    assert gpu.driver_stack == [] and gpu.retained == 1
    ctx.close()
    assert gpu.driver_stack == [] and gpu.retained == 0
    assert not gpu.popped_reset  # popped while still retained, then released
    ctx.close()  # idempotent: nothing pushed, popped or released twice
    assert gpu.driver_stack == [] and gpu.retained == 0
    with pytest.raises(CudaError, match="after close"), ctx:
        pass


def test_context_closed_inside_its_with_block(fake: fake_gpu.FakeGpu) -> None:
    ctx = CudaContext(0)
    with ctx, ctx:  # re-entrant: one push
        ctx.close()
        assert fake.gpu.driver_stack == [] and fake.gpu.retained == 0
    assert fake.gpu.driver_stack == []


def test_closing_one_context_keeps_another_ones_push(fake: fake_gpu.FakeGpu) -> None:
    gpu = fake.gpu
    a, b = CudaContext(0), CudaContext(0)  # the same primary context, retained twice
    with a:
        b.close()
        assert gpu.driver_stack == [gpu.handle] and gpu.retained == 1
    assert gpu.driver_stack == []
    a.close()
    assert gpu.driver_stack == [] and gpu.retained == 0


def test_build_leaves_no_context_pushed(fake: fake_gpu.FakeGpu, model: Path) -> None:
    build_plan(model)
    assert fake.gpu.driver_stack == [] and fake.gpu.retained == 0


# ----------------------------------------------------------------- 4. the GPU preprocessor

FRAME = (384, 768, 3)


def preprocessor(context: CudaContext | None = None) -> GpuPreprocessor:
    cfg = load_config(None)
    spec = PreprocessSpec(cfg.layout, cfg.preprocess, cfg.preprocess.size, 3)
    return GpuPreprocessor(spec, FRAME, context=context)


def test_preprocessor_close_releases_stream_event_and_module(fake: fake_gpu.FakeGpu) -> None:
    gpu = fake.gpu
    pre = preprocessor()
    made = [gpu.live(gpu.streams), gpu.live(gpu.events), gpu.live(gpu.modules)]
    assert [len(m) for m in made] == [1, 1, 1]
    del made
    pre.close()
    assert not gpu.live(gpu.streams) and not gpu.live(gpu.events)
    assert not gpu.live(gpu.modules)  # its functions held it: they are gone too
    assert not gpu.memory and all(a.freed for a in gpu.host_allocs)
    assert gpu.driver_stack == [] and gpu.retained == 0
    calls = list(gpu.calls)
    pre.close()  # idempotent: no CUDA call at all
    assert gpu.calls == calls
    with pytest.raises(ModelError, match="after close"):
        pre.run(np.zeros(FRAME, np.uint8))


def test_preprocessor_on_a_shared_context_closes_once(fake: fake_gpu.FakeGpu) -> None:
    gpu, ctx = fake.gpu, CudaContext(0)
    pre = preprocessor(ctx)
    pre.close()
    calls = list(gpu.calls)
    pre.close()
    assert gpu.calls == calls and not gpu.live(gpu.streams)
    assert not ctx.closed and gpu.retained == 1  # the caller's context is the caller's
    ctx.close()
    assert gpu.driver_stack == [] and gpu.retained == 0


def test_preprocessor_close_after_a_failed_wait_still_frees(fake: fake_gpu.FakeGpu) -> None:
    gpu = fake.gpu
    pre = preprocessor()
    gpu.fail["cuStreamSynchronize"] = gpu.calls.count("cuStreamSynchronize") + 1
    with pytest.raises(CudaError, match="illegal memory access"):
        pre.close()  # the error is the caller's to see, and everything is released anyway
    assert not gpu.memory and not gpu.live(gpu.streams) and gpu.retained == 0
    assert gpu.driver_stack == []


def test_streams_are_non_blocking(fake: fake_gpu.FakeGpu) -> None:
    pre = preprocessor()
    with CudaContext(0) as ctx:
        buffers = DeviceBuffers([BufferSpec("x", (2, 3), np.dtype("f4"))], ctx)
        assert [s.flags for s in fake.gpu.live(fake.gpu.streams)] == [1, 1]
        buffers.close()
    pre.close()
    ctx.close()


def test_downloaded_views_are_the_callers_after_close(fake: fake_gpu.FakeGpu) -> None:
    pre = preprocessor()
    ptrs = pre.run(np.zeros(FRAME, np.uint8))
    size = int(np.prod(pre.out_shape))
    for i, ptr in enumerate(ptrs.values()):  # what the device holds (no kernel runs here)
        values = np.arange(i, i + size, dtype=np.float32)
        fake.gpu.find(ptr, values.nbytes)[:] = values.view(np.uint8)
    got = pre.download()
    pre.close()  # frees every device and pinned buffer (freed pinned memory is poisoned)
    for i, name in enumerate(ptrs):
        assert got[name].flags.owndata and got[name].shape == pre.out_shape
        np.testing.assert_array_equal(got[name].reshape(-1),
                                      np.arange(i, i + size, dtype=np.float32))


# ----------------------------------------------------------------- 5. which TensorRT


def test_gpu_extra_pins_the_tested_tensorrt() -> None:
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    gpu = [line for line in text.splitlines() if line.startswith("gpu = [")]
    assert len(gpu) == 1 and '"tensorrt>=10,<11"' in gpu[0]  # (no tomllib on Python 3.10)


@pytest.mark.parametrize("version, skips", [("10.9.0.34", False), ("10.0.1", False),
                                            ("11.0.0.8", True), ("9.3.0", True)])
def test_tensorrt_tests_run_on_tensorrt_10_only(monkeypatch: pytest.MonkeyPatch,
                                               version: str, skips: bool) -> None:
    from support.tensorrt_env import tensorrt_skip_reason

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    reason = tensorrt_skip_reason()
    assert (reason is not None) == skips
    if reason is not None:
        assert f"TensorRT {version} installed" in reason and "10.x" in reason


def test_tensorrt_tests_say_why_without_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    from support.tensorrt_env import TRT_REASON, tensorrt_skip_reason

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt: ImportError
    assert tensorrt_skip_reason() == TRT_REASON


def test_tensorrt_tests_skip_under_tensorrt_11(monkeypatch: pytest.MonkeyPatch) -> None:
    """The marker test_tensorrt.py's fp16/int8 tests carry, made with TensorRT 11
    installed: a skip, with the reason (they failed there, on the removed flags)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.0.0.8"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    spec = importlib.util.spec_from_file_location(
        "test_tensorrt_under_11", Path(__file__).with_name("test_tensorrt.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mark = module.needs_trt.mark
    assert mark.name == "skipif" and mark.args[0] is True
    assert "TensorRT 11.0.0.8 installed" in mark.kwargs["reason"]
