"""The torch engine fed on the device (``DeviceFed``): the live path's CUDA preprocessing
writes its static input tensors, then ``infer_device`` runs its CUDA graph on them.

On this CPU machine: a torch engine on the CPU is not fed on the device, and the live
path says why (auto) or refuses (on). On a GPU with pycuda (the ``gpu`` tests): the
classifier takes the GPU path, and its probabilities are the host path's, frame by frame
and across a change of frame size (the kernels are bit-exact with OpenCV:
test_gpu_preprocess.py), with no copy of the input from the host."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_gpu_live_preprocess import LOG, config, frame
from test_torch_engine import one_torch_thread, small_export  # noqa: F401

from hepascope.core.errors import ModelError
from hepascope.engines.torch import TorchEngine
from hepascope.stream.classifier import FrameClassifier
from hepascope.stream.model_loader import open_model

MODEL = "resnet18"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_export(MODEL, tmp_path_factory) / "model.onnx"


def test_a_torch_engine_on_the_cpu_is_fed_from_the_host_and_says_why(
        export: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOG):
        clf = open_model(export, config("auto"), backend="torch", verdicts=False)
    try:
        assert isinstance(clf, FrameClassifier) and clf.preprocess_device == "cpu"
        said = [r.getMessage() for r in caplog.records if "preprocess auto" in r.getMessage()]
        assert said == ["preprocess auto -> cpu: model.onnx: the torch engine runs on the "
                        "cpu: no device inputs"]
        probs, _ = clf.predict(frame())
        assert probs.shape == (3,) and abs(probs.sum() - 1) < 1e-6
    finally:
        clf.close()
    with pytest.raises(ModelError, match="^" + re.escape(
            "pipeline.gpu_preprocess is on, but model.onnx: the torch engine runs on the cpu")):
        open_model(export, config("on"), backend="torch", verdicts=False)


def test_device_inputs_of_a_cpu_engine_is_one_model_error(export: Path) -> None:
    engine = TorchEngine(export, device="cpu")
    try:
        with pytest.raises(ModelError, match="runs on the cpu"):
            engine.device_inputs(1)
    finally:
        engine.close()
    with pytest.raises(ModelError, match="closed"):
        engine.device_inputs(1)
    with pytest.raises(ModelError, match="closed"):
        engine.infer_device()


def _no_gpu() -> str | None:
    """None when torch sees a CUDA device and pycuda can use it, else why not."""
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    from hepascope.engines.cuda import CudaContext

    try:
        CudaContext(0).close()
    except ModelError as e:
        return str(e)
    return None


@pytest.mark.gpu
def test_the_gpu_path_gives_the_host_paths_probabilities(export: Path) -> None:
    if _no_gpu() is not None:
        pytest.skip(f"no CUDA device for pycuda and torch: {_no_gpu()}")
    gpu = open_model(export, config("on"), backend="torch", verdicts=False)
    host = open_model(export, config("off"), backend="torch", verdicts=False)
    try:
        assert isinstance(gpu, FrameClassifier) and gpu.preprocess_device == "cuda"
        assert isinstance(gpu.engine, TorchEngine) and gpu.engine.device == "cuda"
        shapes = [(384, 768, 3)] * 3 + [(480, 960, 3), (384, 768, 3)]
        for seed, shape in enumerate(shapes):
            f = frame(seed, shape)
            p_gpu, stages = gpu.predict(f)
            p_host, _ = host.predict(f)
            np.testing.assert_allclose(p_gpu, p_host, atol=1e-3)
            assert set(stages) == {"preprocess", "infer"}
        replays = gpu.engine.replays
        gpu.predict(frame(9))
        assert gpu.engine.replays == replays + 1  # the captured graph, not eager
    finally:
        gpu.close()
        host.close()
