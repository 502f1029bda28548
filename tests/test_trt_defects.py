"""The TensorRT build and CUDA runtime paths where they meet TensorRT and pycuda: the
timing cache, the INT8 calibration cache, the CUDA context's push/pop balance, the GPU
preprocessor's release of what it made, and which TensorRT the TensorRT tests run on.

Everything runs without TensorRT or a GPU: ``support.fake_gpu`` stands in for the
``tensorrt`` and ``pycuda.driver`` modules (see its doc for what it models and from
where); the code under test is hepascope's own, unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import fake_gpu
from support.models import make_classifier

from hepascope.core.errors import ModelError
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
